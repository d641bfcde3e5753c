"""Multi-worker training (``--strategy multi-worker``, ``tf.distribute``): one model through
``model.fit``, its train split sharded by chunks over the workers (:mod:`embcache.jobs.multiworker`
holds the strategy and its workarounds). Every worker runs :func:`train_multiworker`; worker 0
writes the run folder. The model is built, compiled and given its callbacks, and the run is
finished, by the same functions as the main path (:mod:`embcache.jobs.fit`), so its card and
folder are the same.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

from embcache.cache.dataset import pipeline_errors, streamed_dataset
from embcache.cache.errors import EmbcacheError, ModelError
from embcache.jobs.config import TrainConfig
from embcache.jobs.fit import (
    EpochTimer,
    TrainSummary,
    compile_model,
    finish_run,
    fit_callbacks,
    make_model,
)
from embcache.jobs.group import GroupTrainer, Member
from embcache.jobs.multiworker import MultiWorker
from embcache.jobs.runs import MODEL_FILE
from embcache.jobs.train_data import open_for_training
from embcache.models.registry import takes_token_ids


def train_multiworker(store_url: str, source, final: Path, config: TrainConfig,
                      hparams: dict | None, progress: bool) -> TrainSummary:
    """Train ``source`` on this worker's shard; worker 0 writes the run folder (``final``,
    built in place) and returns its summary, the others a one-line note."""
    t0 = time.perf_counter()
    # A multi-worker strategy must exist before any other TensorFlow op (it reads TF_CONFIG).
    cluster = MultiWorker.start()
    store, plans = open_for_training(store_url)
    hp = {**source.hyperparameters(), **(hparams or {})}
    try:
        final.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmbcacheError(f"Cannot create run folder {final}: {e.strerror}") from None
    # Every worker saves (saving may need collective ops); only the chief saves into the run folder.
    work_dir = final if cluster.is_chief else final / f".worker-{cluster.index}"
    work_dir.mkdir(parents=True, exist_ok=True)
    m = Member(name=source.name, source=source, hparams=hp, given=dict(hparams or {}),
               learning_rate=config.learning_rate, final=final, stage=work_dir)
    m.model, m.precision = _replicated_model(cluster, source, store, hp, config)
    read_log: set[int] = set()
    train_ds, val_ds, fit_steps, plans["train"] = cluster.datasets(store, config, read_log)
    cluster.build(m.model, train_ds)
    timer = EpochTimer.make()
    # Keras's progress bar: stdout is for results
    with contextlib.redirect_stdout(sys.stderr), pipeline_errors():
        m.history = m.model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                                callbacks=fit_callbacks(work_dir, config) + [timer],
                                verbose=1 if progress else 0,
                                shuffle=False, **fit_steps)  # the dataset shuffles itself
    m.timer = timer.seconds
    m.model.save(work_dir / MODEL_FILE)  # EarlyStopping restored the best epoch's weights
    cluster.record(final, read_log)
    if not cluster.is_chief:
        shutil.rmtree(work_dir, ignore_errors=True)
        val_acc = m.history.history["val_accuracy"]
        return TrainSummary(
            out=str(final), model=source.ref, epochs=len(val_acc),
            best_epoch=int(max(range(len(val_acc)), key=val_acc.__getitem__)) + 1,
            metrics={"val_accuracy": max(val_acc)},
            worker_note=f"Worker {cluster.index} of {cluster.count} trained {source.ref} on its "
                        f"{len(cluster.shard_chunks)} train chunks for {len(val_acc)} epochs; "
                        f"worker 0 wrote the run folder {final}")
    m.metrics = _final_metrics(store, plans, config, m)
    per_epoch = fit_steps["steps_per_epoch"] * config.batch_size * cluster.count
    return finish_run(store_url, store, plans, m, config, t0, samples_per_epoch=per_epoch)


def _replicated_model(cluster: MultiWorker, source, store, hp: dict, config: TrainConfig):
    """The model built and compiled in the strategy's scope (its variables mirrored), and the
    precision it trains in."""
    import keras

    keras.utils.set_random_seed(config.seed)
    with cluster.strategy.scope():
        model, precision = make_model(source, store, hp, config)
        if takes_token_ids(model):
            raise ModelError(f"Model {source.ref!r} reads token_ids (the lexical channel), which "
                             "multi-worker training does not feed; train it with the default "
                             "strategy")
        compile_model(model, config.learning_rate)
    return model, precision


def _final_metrics(store, plans: dict, config: TrainConfig, m: Member) -> dict:
    """The chief's val/test accuracy, loss and macro-F1 of the restored best model: the same
    figures, by the same code (``GroupTrainer.evaluate``), as a single-process card's."""
    m.done = True
    evaluator = GroupTrainer([m], steps_per_execution=1, progress=False)
    for split in ("val", "test"):
        steps = plans[split].num_batches(config.batch_size, config.length_buckets)
        ds = streamed_dataset(store, split, batching=config.batching(), plan=plans[split])
        evaluator.evaluate(ds, steps, split, len(store.label_names))
    return m.metrics
