"""Training several models from one stream: each batch is read, decoded, shuffled and bucketed
once and given to every model of the group still training.

One compiled function runs ``steps_per_execution`` batches, each through every active model's
own ``train_step`` (its own optimizer, loss and metrics), so the models share the input pipeline
and Python's per-step overhead but nothing else. A model trained alone is a group of one through
the same code: with the same seed it gets the same batches in the same order, whatever else
trains beside it. Each model keeps its own callbacks (early stopping with the best weights
restored, CSV history, TensorBoard, timing); a model whose loss turns NaN or infinite, or that
fails to run on the first batch, is stopped alone and reported, the others go on.

Validation runs once per epoch over the shared validation batches, every active model's
``test_step`` per batch; the final val/test figures (accuracy, loss, macro-F1) come from one
prediction pass per split for all models.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embcache.cache.hooks import pause_point
from embcache.cache.tfenv import released_custom_gradients
from embcache.jobs.metrics import Confusion
from embcache.models.registry import model_features


@dataclass
class Member:
    """One model of a group: what to build, where its run goes, and how its training went."""

    name: str  # run folder name
    source: Any  # embcache.models.ModelSource
    hparams: dict  # full: the builder's defaults updated with the given values
    learning_rate: float
    final: Path  # the run folder once published
    stage: Path  # where it is built
    given: dict = field(default_factory=dict)  # the hyperparameters set by the user
    model: Any = None
    callbacks: Any = None
    timer: Any = None
    history: Any = None
    error: str = ""
    done: bool = False
    epoch: int = 0  # epochs trained so far (members of one group may differ: embcache tune)
    metrics: dict = field(default_factory=dict)
    precision: Any = None  # embcache.cache.precision.Precision it trains in, once built

    @property
    def active(self) -> bool:
        return not self.error and not self.done


def fed(model, batch):
    """``(features, labels)`` with only the features ``model`` takes (a group's batch carries
    ``token_ids`` when any member reads them)."""
    return (model_features(model, batch[0]), *batch[1:])


def _first(values: dict, key: str) -> float:
    v = values.get(key)
    return float(v) if v is not None else float("nan")


class GroupTrainer:
    """Drives the members' Keras models through shared epochs (see the module docstring)."""

    def __init__(self, members: list[Member], *, steps_per_execution: int, progress: bool,
                 open_group: bool = False):
        self.members = members
        self.open = open_group  # members come and go (embcache tune): name them in progress
        self.spe = max(1, int(steps_per_execution))
        self.progress = progress
        self._fns: dict[tuple, Any] = {}

    # -- set-up --------------------------------------------------------------------------------
    def prepare(self, sample_batch, members: list[Member] | None = None) -> None:
        """Build each model's optimizer and metric state by running it once, without training, on
        the first batch: a model that cannot run fails here, alone, before any training."""
        import keras

        for m in self.members if members is None else members:
            if m.error:
                continue
            try:
                m.model.test_step(fed(m.model, sample_batch))
                m.model.reset_metrics()
                m.model.optimizer.build(m.model.trainable_variables)
            except Exception as e:  # noqa: BLE001 - one model's failure is that model's alone
                self.fail(m, f"cannot run on a batch of the store: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}")
                continue
            m.model.stop_training = False
            m.callbacks = keras.callbacks.CallbackList(m.callbacks, model=m.model)
            m.callbacks.on_train_begin()

    def fail(self, m: Member, reason: str) -> None:
        m.error = reason
        if m.callbacks is not None and not isinstance(m.callbacks, list):
            try:
                m.callbacks.on_train_end()  # closes the CSV and TensorBoard files
            except Exception:  # noqa: BLE001, S110 - its run is discarded anyway
                pass
        if self.progress:
            print(f"{m.name}: {reason}; stopped this model, the others go on", file=sys.stderr)

    # -- compiled steps ------------------------------------------------------------------------
    def _loop_fn(self, active: list[Member], step: str):
        """One compiled function: ``steps`` batches from an iterator, each through every active
        model's ``step`` (``"train_step"`` or ``"test_step"``). Made once per active set (a
        model that stops changes the set; its step is not traced again)."""
        key = (step, tuple(id(m) for m in active))
        if key not in self._fns:
            import tensorflow as tf

            # A model without trainable weights (naive Bayes: fitted by counting) is only
            # evaluated in a training pass: its train metrics, no gradient, no Keras warning.
            steps_of = [(getattr(m.model, "test_step" if step == "train_step" and
                                 not m.model.trainable_weights else step), m.model)
                        for m in active]

            @tf.function(reduce_retracing=True)
            def run(iterator, steps):
                pause_point(f"train:tracing-{step}")  # Python here runs only while tracing

                def body(i):
                    batch = iterator.get_next()
                    for one_step, model in steps_of:
                        one_step(fed(model, batch))
                    return (i + 1,)

                tf.while_loop(lambda i: i < steps, body, (tf.constant(0),))

            # The previous active set's function is not needed again.
            self._fns = {k: f for k, f in self._fns.items() if k[0] != step}
            self._fns[key] = run
        return self._fns[key]

    # -- the epochs ----------------------------------------------------------------------------
    def fit(self, train_ds, val_ds, *, epochs: int, train_steps: int, val_steps: int) -> None:
        """Every member for up to ``epochs`` epochs (early stopping may end one sooner)."""
        while self.run_epoch(train_ds, val_ds, epochs=epochs, train_steps=train_steps,
                             val_steps=val_steps):
            pass

    def run_epoch(self, train_ds, val_ds, *, epochs: int, train_steps: int,
                  val_steps: int) -> list[tuple[Member, dict]]:
        """One pass over the training batches for every active member, then validation.

        Each member counts its own epochs (``Member.epoch``): members added later (``add``, as
        ``embcache tune`` refills a group) start at their epoch 0 while the others go on. A
        member that reaches ``epochs`` or whose early stopping fires is finished. Returns each
        member that ran with its epoch's logs (``[]``: none was active)."""
        import tensorflow as tf

        active = [m for m in self.members if m.active]
        if not active:
            return []
        for m in active:
            m.model.reset_metrics()
            m.callbacks.on_epoch_begin(m.epoch)
        bar = self._bar(active, epochs, train_steps)
        t0 = time.perf_counter()
        iterator, done = iter(train_ds), 0
        while done < train_steps and active:
            k = min(self.spe, train_steps - done)
            with released_custom_gradients():  # a first call traces: see there
                self._loop_fn(active, "train_step")(iterator, tf.constant(k))
            done += k
            for m in active:
                loss = _first(m.model.get_metrics_result(), "loss")
                if not math.isfinite(loss):
                    self.fail(m, f"loss became {loss} in epoch {m.epoch + 1} (by step {done})")
            active = [m for m in active if m.active]
            if bar is not None:
                bar.update(done, values=self._bar_values(active), finalize=done >= train_steps)
        del iterator
        seconds = time.perf_counter() - t0
        train_logs = {id(m): {k: float(v) for k, v in m.model.get_metrics_result().items()}
                      for m in active}
        for m in active:
            m.model.reset_metrics()
        if active and val_steps:
            self._loop_fn(active, "test_step")(iter(val_ds), tf.constant(val_steps))
        ran = []
        for m in active:
            val = {f"val_{k}": float(v) for k, v in m.model.get_metrics_result().items()}
            logs = {**train_logs[id(m)], **val}
            m.timer.append(seconds)
            m.callbacks.on_epoch_end(m.epoch, logs)
            m.epoch += 1
            ran.append((m, logs))
            self._say_epoch(m, logs)
            if m.model.stop_training:
                self.finish(m, f"stopped early after epoch {m.epoch}")
            elif m.epoch >= epochs:
                self.finish(m, "")
            elif not m.model.trainable_weights:  # fitted before training: one epoch says it all
                self.finish(m, f"fitted by counting, validated in epoch {m.epoch}")
        pause_point("train:epoch-end")
        return ran

    def _bar(self, active: list[Member], epochs: int, train_steps: int):
        """The epoch's heading and Keras progress bar (``None`` without progress)."""
        import keras

        if not self.progress:
            return None
        at = {m.epoch for m in active}
        head = (f"Epoch {active[0].epoch + 1}/{epochs}" if len(at) == 1 else
                "Epoch " + ", ".join(f"{m.epoch + 1}" for m in active) + f" of {epochs}")
        if len(self.members) > 1 or self.open:
            head += f" ({', '.join(m.name for m in active)})"
        print(head, file=sys.stderr)
        stateful = {"loss", "accuracy", *(f"{m.name} acc" for m in active)}
        return keras.utils.Progbar(train_steps, stateful_metrics=stateful, unit_name="step")

    def _say_epoch(self, m: Member, logs: dict) -> None:
        if not self.progress:
            return
        nan = float("nan")
        if len(self.members) > 1 or self.open:
            print(f"  {m.name}: loss {logs.get('loss', nan):.4f} accuracy "
                  f"{logs.get('accuracy', nan):.4f} val_loss {logs.get('val_loss', nan):.4f} "
                  f"val_accuracy {logs.get('val_accuracy', nan):.4f}", file=sys.stderr)
        else:
            print(f"  val_loss {logs.get('val_loss', nan):.4f} val_accuracy "
                  f"{logs.get('val_accuracy', nan):.4f}", file=sys.stderr)

    def add(self, members: list[Member], sample_batch) -> None:
        """Members that join between epochs (built and compiled): prepared on ``sample_batch``
        and trained from the next epoch on, each from its own epoch 0."""
        self.members.extend(members)
        self.prepare(sample_batch, members)

    def drop(self, m: Member) -> None:
        """Take a member out now (``embcache tune``'s pruner stopped it): its files are closed,
        its compiled steps and model are let go; the others train on unchanged."""
        if (not m.done and not m.error and m.callbacks is not None
                and not isinstance(m.callbacks, list)):  # finish() and fail() ended them already
            m.callbacks.on_train_end()
        m.done = True
        self.members.remove(m)
        self._fns = {k: f for k, f in self._fns.items() if id(m) not in k[1]}

    def _bar_values(self, active: list[Member]) -> list:
        if len(self.members) == 1 and active:
            r = active[0].model.get_metrics_result()
            return [(k, float(v)) for k, v in r.items()]
        return [(f"{m.name} acc", float(m.model.get_metrics_result().get("accuracy", 0.0)))
                for m in active]

    def finish(self, m: Member, note: str) -> None:
        """End a member's training: its callbacks restore the best epoch's weights."""
        m.done = True
        m.callbacks.on_train_end()
        if note and self.progress and len(self.members) > 1:
            print(f"  {m.name}: {note}", file=sys.stderr)

    # -- final figures -------------------------------------------------------------------------
    def evaluate(self, ds, steps: int, split: str, num_classes: int,
                 members: list[Member] | None = None) -> None:
        """Accuracy, loss and macro-F1 of every finished member (or of ``members``) on one pass
        over ``ds``."""
        import tensorflow as tf

        done = [m for m in (self.members if members is None else members)
                if m.done and not m.error]
        if not done or not steps:
            return
        models = [m.model for m in done]

        @tf.function(reduce_retracing=True)
        def predict(features):
            return [model(model_features(model, features), training=False) for model in models]

        confusions = [Confusion([str(i) for i in range(num_classes)]) for _ in done]
        losses = [0.0 for _ in done]
        n = 0
        for features, labels in ds.take(steps):
            y = labels.numpy()
            n += len(y)
            for i, p in enumerate(predict(features)):
                p = p.numpy()
                confusions[i].add(y, p.argmax(axis=1))
                picked = np.clip(p[np.arange(len(y)), y], 1e-7, 1.0)
                losses[i] += float(-np.log(picked).sum())
        for m, conf, loss in zip(done, confusions, losses):
            report = conf.report()
            m.metrics[f"{split}_loss"] = loss / max(n, 1)
            m.metrics[f"{split}_accuracy"] = report["accuracy"]
            m.metrics[f"{split}_macro_f1"] = report["macro_f1"]
