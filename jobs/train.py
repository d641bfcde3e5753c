"""The train job: stream a store into one registered model; leave a self-describing run folder.

    <out>/model.keras   the best checkpoint (by validation accuracy); carries no word vectors
    <out>/model.json    the model card: model, hyperparameters, the store's vectors fingerprint,
                        tokenizer, max_len, dim, dtype, label names, metrics, timings
    <out>/history.csv   per-epoch loss/accuracy for train and validation
    <out>/curves.png    those curves plotted
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from embcache.cache.dataset import make_dataset
from embcache.cache.errors import EmbcacheError, StoreError, writing
from embcache.cache.store import open_store
from embcache.cache.stream import SHUFFLE_DOCS, plan_split
from embcache.jobs.locks import exclusive, reading
from embcache.jobs.multiworker import STRATEGIES, MultiWorker
from embcache.jobs.runs import CARD_FILE, MODEL_FILE, store_card_fields, write_card


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    seed: int = 0
    shuffle_docs: int = SHUFFLE_DOCS
    # Training steps per compiled call: Keras's per-step Python work (about 1 ms) otherwise caps
    # light models (measured: fasttext 8-12k samples/s at 1, 15-20k at 16; BENCHMARKS.md).
    steps_per_execution: int = 16
    length_buckets: bool = True  # False: every batch padded to max_len (for comparison)
    strategy: str = "default"  # or "multi-worker": tf.distribute.MultiWorkerMirroredStrategy


@dataclass
class TrainSummary:
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


def parse_hparams(pairs: tuple[str, ...] | list[str]) -> dict:
    """``["filters=64", "widths=[3,4]"]`` -> ``{"filters": 64, "widths": [3, 4]}`` (JSON values)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EmbcacheError(f"Invalid value for `--param`. Expected key=value. Received: {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


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


def train(store_url: str, model: str | Callable, out_dir: str | None = None, *,
          config: TrainConfig = TrainConfig(), hparams: dict | None = None, progress: bool = True,
          overwrite: bool = False) -> TrainSummary:
    """Train ``model`` on the store's train split, early-stopping on its val split.

    ``model``: a built-in or registered name, an installed plugin's name (entry-point group
    ``embcache.models``), an import string ``package.module:function``, or a builder function
    itself (recorded as its import string). The card records where it came from, so ``score``
    can import it again. ``out_dir`` defaults to ``runs/<model name>``.

    The run is built in ``.<name>.partial`` beside ``out_dir`` and moved into place when it is
    complete, so a failed or killed run leaves any previous run folder as it was; a lock
    refuses a second ``train`` into the same folder meanwhile.

    Raises:
        EmbcacheError: ``out_dir`` holds a trained model and ``overwrite`` is false, or another
            process is writing it.
        StoreError: incomplete, unlabelled or unknown-layout store, or an empty split.
        ModelError: unknown model or hyperparameter.
    """
    from embcache import models

    source = model if isinstance(model, models.ModelSource) else models.resolve(model)
    final = Path(out_dir if out_dir is not None else f"runs/{source.name}")
    if not overwrite and ((final / CARD_FILE).exists() or (final / MODEL_FILE).exists()):
        raise EmbcacheError(f"Run folder {final} already holds a trained model; pass --overwrite "
                            "to replace it, or choose another --out")
    # The store is read for the whole run: an embed-corpus --overwrite of it is refused meanwhile.
    with reading(store_url):
        if config.strategy != "default":  # every worker runs this; worker 0 writes the folder
            return _train(store_url, source, final, config, hparams, progress)
        return _train_and_publish(store_url, source, final, config, hparams, progress)


def _train_and_publish(store_url: str, source, final: Path, config: TrainConfig,
                       hparams: dict | None, progress: bool) -> TrainSummary:
    with exclusive(final, f"Run folder {final}"), writing(f"run folder {final}"):
        stage = final.parent / f".{final.name}.partial"
        shutil.rmtree(stage, ignore_errors=True)  # left by a killed run
        summary = _train(store_url, source, stage, config, hparams, progress)
        _publish(stage, final)
    summary.out = str(final)
    return summary


def _publish(stage: Path, final: Path) -> None:
    """Put a finished run in place of ``final`` (renames: the old one goes only after)."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _train(store_url: str, source, out: Path, config: TrainConfig, hparams: dict | None,
           progress: bool) -> TrainSummary:
    model_name = source.ref
    t0 = time.perf_counter()
    if config.strategy not in STRATEGIES:
        raise EmbcacheError(f"Invalid value for `strategy`. Expected one of {STRATEGIES}. "
                            f"Received: strategy={config.strategy!r}")
    # A multi-worker strategy must exist before any other TensorFlow op (it reads TF_CONFIG).
    cluster = MultiWorker.start() if config.strategy == "multi-worker" else None
    store = open_store(store_url, require_complete=True, require_labels=True)
    if len(store.label_names) < 2:
        raise StoreError(f"Store {store_url} has a single class ({store.label_names[0]!r}): a "
                         "classifier needs at least two; embed a corpus with two or more labels")
    hp = {**source.hyperparameters(), **(hparams or {})}
    plans = {s: plan_split(store, s) for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if plans[s].num_docs == 0:
            raise StoreError(f"Store {store_url} has no {s} documents; rebuild it with "
                             "--val-frac/--test-frac above 0")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmbcacheError(f"Cannot create run folder {out}: {e.strerror}") from None

    import keras

    keras.utils.set_random_seed(config.seed)
    scope = cluster.strategy.scope() if cluster else contextlib.nullcontext()
    with scope:
        model = source.make(max_len=store.max_len, dim=store.dim,
                            num_classes=len(store.label_names), padding=store.padding, **hp)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      # Multi-worker keeps one step per call: its workarounds (below) assume it.
                      steps_per_execution=1 if cluster else config.steps_per_execution)
    fit_steps: dict = {}
    read_log: set[int] = set()
    if cluster is None:
        train_ds = make_dataset(store, split="train", batch_size=config.batch_size, shuffle=True,
                                seed=config.seed, shuffle_docs=config.shuffle_docs,
                                plan=plans["train"], buckets=config.length_buckets)
        val_ds = make_dataset(store, split="val", batch_size=config.batch_size, plan=plans["val"],
                              buckets=config.length_buckets)
    else:
        train_ds, val_ds, fit_steps, plans["train"] = cluster.datasets(store, config, read_log)
        cluster.build(model, train_ds)
    timer = EpochTimer.make()
    # Every worker saves (saving may need collective ops); only the chief saves into the run folder.
    work_dir = out if cluster is None or cluster.is_chief else out / f".worker-{cluster.index}"
    work_dir.mkdir(parents=True, exist_ok=True)
    model_path = work_dir / MODEL_FILE
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(model_path, monitor="val_accuracy", mode="max",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(work_dir / "history.csv"),
        timer,
    ]
    # Keras writes its progress bar to stdout; stdout is for results, so send it to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                            callbacks=callbacks, verbose=1 if progress else 0,
                            shuffle=False, **fit_steps)  # the dataset shuffles itself
        metrics = {}
        for split in ("val", "test") if cluster is None else ():
            if plans[split].num_docs:
                ds = make_dataset(store, split=split, batch_size=config.batch_size,
                                  plan=plans[split], buckets=config.length_buckets)
                loss, acc = model.evaluate(ds, verbose=0)
                metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = float(loss), float(acc)
    val_acc = history.history["val_accuracy"]
    best_epoch = int(max(range(len(val_acc)), key=val_acc.__getitem__)) + 1
    # The checkpoint holds the best epoch's weights; EarlyStopping restored the same in memory.
    model.save(model_path)
    if cluster is not None:
        cluster.record(out, read_log)
        if not cluster.is_chief:
            shutil.rmtree(work_dir, ignore_errors=True)
            return TrainSummary(
                out=str(out), model=model_name, epochs=len(val_acc), best_epoch=best_epoch,
                metrics={"val_accuracy": max(val_acc)},
                worker_note=f"Worker {cluster.index} of {cluster.count} trained {model_name} on its "
                            f"{len(cluster.shard_chunks)} train chunks for {len(val_acc)} epochs; "
                            f"worker 0 wrote the run folder {out}")
        metrics = {"val_accuracy": max(history.history["val_accuracy"])}
    per_epoch = (fit_steps["steps_per_epoch"] * config.batch_size * cluster.count if cluster
                 else plans["train"].num_docs)
    samples_per_s = sorted(per_epoch / s for s in timer.seconds)[len(timer.seconds) // 2]
    seconds = time.perf_counter() - t0
    card = {
        **store_card_fields(store),
        "model": model_name,
        "model_source": source.record(),
        "hyperparameters": hp,
        "training": {**asdict(config), "epochs_run": len(val_acc), "best_epoch": best_epoch,
                     "seconds": round(seconds, 2), "samples_per_s": round(samples_per_s, 1),
                     "train_docs": plans["train"].num_docs, "val_docs": plans["val"].num_docs},
        "metrics": metrics,
        "model_bytes": model_path.stat().st_size,
    }
    write_card(out, card)
    plot_curves(history.history, out / "curves.png",
                title=f"{model_name} on {Path(str(store_url)).name}")
    return TrainSummary(out=str(out), model=model_name, epochs=len(val_acc), best_epoch=best_epoch,
                        metrics=metrics, samples_per_s=samples_per_s,
                        model_bytes=card["model_bytes"], seconds=seconds)


def plot_curves(history: dict, path: Path, title: str) -> None:
    """Loss and accuracy for train and validation, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[key], "o-", label="train")
        ax.plot(epochs, history[f"val_{key}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow without its C++ and absl start-up logs ("failed call to cuInit",
    oneDNN and CUDA-driver notices on a CPU machine) unless ``verbose``.

    TensorFlow writes them to file descriptor 2 while it loads and first lists its devices, some
    before ``TF_CPP_MIN_LOG_LEVEL`` is read; so both happen here with that descriptor pointed at
    /dev/null, and later errors still reach the terminal.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
