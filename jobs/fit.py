"""What both training paths share (the group trainer of :mod:`embcache.jobs.train` and
multi-worker training, :mod:`embcache.jobs.train_workers`): the model built and compiled, the
callbacks every run folder gets, and a trained run finished into its card, folder and curves."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from embcache.cache.precision import resolve_precision
from embcache.jobs.config import TrainConfig
from embcache.jobs.group import Member
from embcache.jobs.runs import MODEL_FILE, draw, plot_curves, publish_run, run_card, write_card

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class TrainSummary:
    """One trained run: its folder, model, epochs, metrics, speed and size. ``to_frame()`` is
    the same as one table row; ``history`` the per-epoch losses and accuracies (the run's
    ``history.csv``).

    Attributes:
        out: the run folder (``model.keras``, ``card.json``, ``history.csv``, curves).
        model: the model's name (a built-in, registered or import-string model).
        epochs: epochs trained (early stopping may end before ``TrainConfig.epochs``).
        best_epoch: the epoch whose weights were kept (best validation accuracy).
        metrics: ``val_accuracy``, ``val_loss``, ``test_accuracy``, ``test_macro_f1`` ...
        samples_per_s: training throughput over the epochs, in documents per second.
        model_bytes: the size of ``model.keras`` (it holds no word vectors).
        seconds: wall time of the whole run.
        worker_note: set on the non-chief workers of a multi-worker run (they save nothing).
    """

    out: str
    model: str
    epochs: int
    best_epoch: int
    metrics: dict = field(default_factory=dict)
    samples_per_s: float = 0.0
    model_bytes: int = 0
    seconds: float = 0.0
    worker_note: str = ""  # set on non-chief workers of a multi-worker run

    def line(self) -> str:
        if self.worker_note:
            return self.worker_note
        m = self.metrics
        test = f", test accuracy {m['test_accuracy']:.3f}" if "test_accuracy" in m else ""
        return (f"Trained {self.model} for {self.epochs} epochs (best {self.best_epoch}): val "
                f"accuracy {m['val_accuracy']:.3f}{test}, {self.samples_per_s:,.0f} samples/s, "
                f"model {self.model_bytes / 1e6:.2f} MB (no word vectors) -> {self.out} "
                f"({self.seconds:.0f} s)")

    def row(self) -> dict:
        """The run as one flat record (the columns of :meth:`to_frame`)."""
        return {"run": Path(self.out).name, "model": self.model, "out": self.out,
                "epochs": self.epochs, "best_epoch": self.best_epoch, **self.metrics,
                "samples_per_s": self.samples_per_s, "model_bytes": self.model_bytes,
                "seconds": self.seconds}

    def to_frame(self) -> pd.DataFrame:
        """A one-row ``pandas.DataFrame`` of :meth:`row`."""
        import pandas as pd

        return pd.DataFrame([self.row()])

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, as a
        ``pandas.DataFrame`` (one row per epoch run, the best one restored at the end)."""
        import pandas as pd

        return pd.read_csv(Path(self.out) / "history.csv")


class EpochTimer:
    """Per-epoch wall times as a Keras callback; ``make()`` builds it lazily, so importing this
    module does not import Keras (also used by ``jobs.bench.train``)."""

    @staticmethod
    def make():
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._t)

        return Timer()


def make_model(source, store, hparams: dict, config: TrainConfig):
    """The model built for the store in the precision ``config`` asks for: ``(model,
    precision)``. Both training paths build through here (multi-worker: in its strategy's
    scope)."""
    from embcache.models.precision import build

    return build(lambda: source.make(max_len=store.max_len, dim=store.dim,
                                     num_classes=len(store.label_names), padding=store.padding,
                                     **hparams),
                 resolve_precision(config.precision), config.precision)


def compile_model(model, learning_rate: float) -> None:
    """Adam (:mod:`embcache.models.optimizers`: lazy row-sparse updates), sparse categorical
    cross-entropy, accuracy; one step per call (the group trainer runs its own loop, and the
    multi-worker workarounds of :mod:`embcache.jobs.multiworker` assume it)."""
    from embcache.models.optimizers import Adam

    model.compile(optimizer=Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def fit_callbacks(work_dir: Path, config: TrainConfig) -> list:
    """What every run folder gets: early stopping on validation accuracy (best weights
    restored), ``history.csv`` and TensorBoard logs."""
    import keras

    return [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience,
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(work_dir / "history.csv"),
        keras.callbacks.TensorBoard(work_dir / "logs", write_graph=False, profile_batch=0),
    ]


def finish_run(store_url, store, plans, m: Member, config: TrainConfig, t0: float, *,
               group: dict | None = None, extra: dict | None = None,
               samples_per_epoch: int | None = None) -> TrainSummary:
    """A trained run's card (with ``extra`` fields: a tune trial's study), its folder published
    (``m.stage`` to ``m.final``, unless built in place) and its curves: both training paths end
    here. ``samples_per_epoch``: the train documents an epoch reads (default: the split's)."""
    model_path = m.stage / MODEL_FILE
    val_acc = m.history.history["val_accuracy"]
    best_epoch = int(max(range(len(val_acc)), key=val_acc.__getitem__)) + 1
    per_epoch = samples_per_epoch or plans["train"].num_docs
    samples_per_s = sorted(per_epoch / s for s in m.timer)[len(m.timer) // 2]
    seconds = time.perf_counter() - t0
    card = run_card(store, m, config, plans, epochs_run=len(val_acc), best_epoch=best_epoch,
                    seconds=seconds, samples_per_s=samples_per_s, model_path=model_path)
    if group:
        card["group"] = group
    card.update(extra or {})
    write_card(m.stage, card)
    if m.stage != m.final:
        publish_run(m.stage, m.final)  # first: the run is whole without its picture
    draw(m.final / "curves.png", plot_curves, m.history.history, m.final / "curves.png",
         title=f"{m.name} on {Path(str(store_url)).name}")
    shown = m.source.ref if m.name == m.source.name else m.name  # grid runs: by their point
    return TrainSummary(out=str(m.final), model=shown, epochs=len(val_acc),
                        best_epoch=best_epoch, metrics=m.metrics, samples_per_s=samples_per_s,
                        model_bytes=card["model_bytes"], seconds=seconds)
