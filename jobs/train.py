"""The train job: stream a store into one registered model; leave a self-describing run folder.

    <out>/model.keras   the best checkpoint (by validation accuracy); carries no word vectors
    <out>/model.json    the model card: model, hyperparameters, the store's vectors fingerprint,
                        tokenizer, max_len, dim, dtype, label names, metrics, timings
    <out>/history.csv   per-epoch loss/accuracy for train and validation
    <out>/curves.png    those curves plotted
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from embcache.cache.dataset import Batching, memory_dataset, pipeline_errors, streamed_dataset
from embcache.cache.errors import EmbcacheError, ModelError, StoreError, writing
from embcache.cache.store import open_store
from embcache.cache.stream import SHUFFLE_DOCS, plan_split
from embcache.cache.tfenv import quiet_tensorflow
from embcache.jobs.group import GroupTrainer, Member
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
    # Memory for the train and val splits decoded once and served from RAM in every epoch
    # (InMemorySplit); a split that does not fit streams from the store instead. 0: always stream.
    memory_mb: int = 1024
    strategy: str = "default"  # or "multi-worker": tf.distribute.MultiWorkerMirroredStrategy

    def __post_init__(self) -> None:
        """Each value checked where it is given: one line naming the argument."""
        positive = ("epochs", "batch_size", "patience", "shuffle_docs", "steps_per_execution")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EmbcacheError(f"Invalid value for `{name}`. Expected a positive integer. "
                                    f"Received: {name}={value!r}")
        for name in ("seed", "memory_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise EmbcacheError(f"Invalid value for `{name}`. Expected an integer >= 0. "
                                    f"Received: {name}={value!r}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise EmbcacheError(f"Invalid value for `learning_rate`. Expected a positive number. "
                                f"Received: learning_rate={lr!r}")

    def batching(self, train: bool = False) -> Batching:
        """A pass's batching under these settings: the train split's (shuffled, seeded) or an
        evaluation pass's (store order)."""
        if train:
            return Batching(batch_size=self.batch_size, buckets=self.length_buckets, shuffle=True,
                            seed=self.seed, shuffle_docs=self.shuffle_docs)
        return Batching(batch_size=self.batch_size, buckets=self.length_buckets)

    @classmethod
    def of(cls, config: TrainConfig | dict | None) -> TrainConfig:
        """A :class:`TrainConfig` from itself, a dict of its fields or ``None`` (the defaults).

        Raises:
            EmbcacheError: an unknown field, or anything else than those three.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            known = [f.name for f in fields(cls)]
            unknown = sorted(set(config) - set(known))
            if unknown:
                raise EmbcacheError(f"Invalid value for `config`: unknown field {unknown[0]!r}; "
                                    f"TrainConfig has {', '.join(known)}")
            return cls(**config)
        raise EmbcacheError(f"Invalid value for `config`. Expected a TrainConfig or a dict of its "
                            f"fields. Received: config={config!r}")


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


def parse_grid(pairs: tuple[str, ...] | list[str]) -> dict[str, list]:
    """``["dropout=[0.2,0.5]", "widths=[[3,4],[3,4,5]]"]`` -> ``{"dropout": [0.2, 0.5], ...}``.

    Each value is a JSON list of the values to try, so a grid stays unambiguous next to
    hyperparameters whose own values are lists (``widths=[[3,4],[3,4,5]]`` tries two widths
    lists). ``learning_rate`` may be a grid key too (each run gets its own optimizer).
    """
    out: dict[str, list] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            values = json.loads(value) if sep and key else None
        except json.JSONDecodeError:
            values = None
        if not isinstance(values, list) or not values:
            raise EmbcacheError(f"Invalid value for `--grid`. Expected key=[value,value,...] (a "
                                f"JSON list of the values to try). Received: {pair!r}")
        if key in out:
            raise EmbcacheError(f"Invalid value for `--grid`: {key!r} is given twice")
        out[key] = values
    return out


def _name_part(value) -> str:
    """A grid value as a folder-name part: no commas (``make score MODELS`` and ``score --models``
    split on them), no slashes."""
    text = json.dumps(value, separators=("_", "=")) if isinstance(value, (list, dict)) else (
        str(value) if not isinstance(value, str) else value)
    text = text.replace("[", "").replace("]", "").replace("{", "").replace("}", "").replace('"', "")
    return "".join(c if c.isalnum() or c in "._=-+" else "_" for c in text)


@dataclass(frozen=True)
class RunPlan:
    """One run of a group: its folder name, model, the hyperparameters given and learning rate."""

    name: str
    source: Any
    hparams: dict
    learning_rate: float


def expand_runs(models: list, *, grid: dict | None = None, hparams: dict | None = None,
                learning_rate: float = TrainConfig.learning_rate) -> list[RunPlan]:
    """Every model x every point of ``grid`` (in the order given), named ``model`` or
    ``model-key=value-...``; ``hparams`` apply to every run.

    Raises:
        ModelError: an unknown model, or a hyperparameter (given or in the grid) that a model
            does not take.
        EmbcacheError: two runs with the same name.
    """
    from embcache import models as registry

    sources = [m if isinstance(m, registry.ModelSource) else registry.resolve(m) for m in models]
    grid = dict(grid or {})
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())] or [{}]
    runs = []
    for source in sources:
        for point in points:
            given = {**(hparams or {}), **{k: v for k, v in point.items() if k != "learning_rate"}}
            source.check_hparams(given)
            suffix = "".join(f"-{k}={_name_part(v)}" for k, v in point.items())
            runs.append(RunPlan(f"{source.name}{suffix}", source, given,
                                float(point.get("learning_rate", learning_rate))))
    names = [r.name for r in runs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise EmbcacheError(f"Two runs of the group would both be named {dup!r}; name each model "
                            "once")
    return runs


@dataclass
class GroupResult:
    """What ``train_group`` did: a summary per finished run, and each failed run's reason."""

    runs: list[TrainSummary]
    failed: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [r.line() for r in self.runs]


def train(store_url: str, model: str | Callable | Sequence[str | Callable],
          out_dir: str | None = None, *, grid: dict | None = None,
          config: TrainConfig | dict | None = None, hparams: dict | None = None,
          progress: bool = False, overwrite: bool = False) -> TrainSummary | GroupResult:
    """Train ``model`` on the store's train split, early-stopping on its val split.

    ``model``: a built-in or registered name, an installed plugin's name (entry-point group
    ``embcache.models``), an import string ``package.module:function``, or a builder function
    itself (recorded as its import string). The card records where it came from, so ``score``
    can import it again. ``out_dir`` defaults to ``runs/<model name>``.

    Several models (a list, or names joined by commas as on the command line) or a ``grid``
    (``{"filters": [64, 128]}``) train as one group from one stream (:func:`train_group`):
    ``out_dir`` is then the parent folder of their runs (default ``runs``) and the result a
    :class:`GroupResult`; one model alone gives its :class:`TrainSummary`.

    ``config``: a :class:`TrainConfig` or a dict of its fields (default: the defaults).

    The run is built in ``.<name>.partial`` beside ``out_dir`` and moved into place when it is
    complete, so a failed or killed run leaves any previous run folder as it was; a lock
    refuses a second ``train`` into the same folder meanwhile.

    Raises:
        EmbcacheError: ``out_dir`` holds a trained model and ``overwrite`` is false, another
            process is writing it, or training failed (e.g. the loss became NaN).
        StoreError: incomplete, unlabelled or unknown-layout store, or an empty split.
        ModelError: unknown model or hyperparameter.
    """
    models = _model_list(model)
    result = train_group(store_url, models, out_dir, grid=grid, config=TrainConfig.of(config),
                         hparams=hparams, progress=progress, overwrite=overwrite)
    return result.runs[0] if len(models) == 1 and not grid else result


def _model_list(model) -> list:
    """``"a,b"``, ``["a", fn]`` or ``fn`` -> a list of model specs (checked: one line)."""
    if isinstance(model, str):
        names = [m.strip() for m in model.split(",")]
        if not all(names):
            raise ModelError(f"Invalid value for `model`: {model!r} has an empty name")
        return names
    if callable(model):
        return [model]
    if isinstance(model, (list, tuple)) and model:
        out = []
        for m in model:
            if not (isinstance(m, str) or callable(m)):
                raise ModelError(f"Invalid value for `model`: {m!r} in the list is neither a "
                                 "model name, an import string nor a builder function")
            out += _model_list(m) if isinstance(m, str) else [m]
        return out
    raise ModelError(f"Invalid value for `model`. Expected a model name, an import string, a "
                     f"builder function or a list of them. Received: model={model!r}")


def train_group(store_url: str, models: list, out: str | None = None, *,
                grid: dict | None = None, config: TrainConfig | dict | None = None,
                hparams: dict | None = None, progress: bool = False,
                overwrite: bool = False) -> GroupResult:
    """Train every model in ``models`` x every point of ``grid`` from one stream of the store.

    Each batch is read, decoded, shuffled and bucketed once and given to every model still
    training (:mod:`embcache.jobs.group`); each keeps its own optimizer, early stopping, best
    weights and run folder. A lone model (one model, no grid) is trained by the same code, so a
    model trained in a group equals it trained alone with the same seed.

    ``out``: for a lone model its run folder (default ``runs/<name>``); for a group the parent
    folder of the runs (default ``runs``), each named ``model`` or ``model-key=value-...``.

    A model that fails (its loss turns NaN or infinite, or it cannot run on the store's batches)
    is stopped alone: it is listed in ``failed`` and its run folder is left as it was; the others'
    runs are published whole. A lone model's failure raises instead.

    Raises:
        EmbcacheError: a run folder holds a trained model and ``overwrite`` is false, or another
            process is writing it; a lone model failed; a multi-worker strategy for a group.
        StoreError: incomplete, unlabelled or unknown-layout store, or an empty split.
        ModelError: unknown model or hyperparameter.
    """
    quiet_tensorflow()  # before the models' modules import it (the CLI chose verbosity already)
    config = TrainConfig.of(config)
    if config.strategy not in STRATEGIES:
        raise EmbcacheError(f"Invalid value for `strategy`. Expected one of {STRATEGIES}. "
                            f"Received: strategy={config.strategy!r}")
    plans = expand_runs(list(models), grid=grid, hparams=hparams,
                        learning_rate=config.learning_rate)
    lone = len(plans) == 1 and not grid
    if lone:
        finals = [Path(out if out is not None else f"runs/{plans[0].name}")]
    else:
        finals = [Path(out if out is not None else "runs") / p.name for p in plans]
    if not overwrite:
        taken = [f for f in finals if (f / CARD_FILE).exists() or (f / MODEL_FILE).exists()]
        if taken:
            raise EmbcacheError(f"Run folder {taken[0]} already holds a trained model; pass "
                                "`overwrite=True` to replace it, or choose another `out=`")
    if config.strategy != "default" and not lone:
        raise EmbcacheError("Invalid value for `strategy`: multi-worker trains one model at a "
                            "time; train the models of a group one by one")
    # The store is read for the whole run: an embed-corpus --overwrite of it is refused meanwhile.
    with reading(store_url):
        if config.strategy != "default":  # every worker runs this; worker 0 writes the folder
            p = plans[0]
            return GroupResult([_train(store_url, p.source, finals[0], config, p.hparams,
                                       progress)])
        members = [Member(name=p.name, source=p.source,
                          hparams={**p.source.hyperparameters(), **p.hparams}, given=p.hparams,
                          learning_rate=p.learning_rate, final=f,
                          stage=f.parent / f".{f.name}.partial") for p, f in zip(plans, finals)]
        where = f"run folder {finals[0]}" if lone else f"run folders in {finals[0].parent}"
        with contextlib.ExitStack() as stack:
            for f in finals:
                stack.enter_context(exclusive(f, f"Run folder {f}"))
            stack.enter_context(writing(where))
            return _train_members(store_url, members, config, progress, lone)


def open_for_training(store_url: str) -> tuple:
    """The store, checked for training (complete, labelled, two classes or more, train and val
    documents), and its split plans: what both training paths start from.

    Raises:
        StoreError: any of those checks, in one line.
    """
    store = open_store(store_url, require_complete=True, require_labels=True)
    if len(store.label_names) < 2:
        raise StoreError(f"Store {store_url} has a single class ({store.label_names[0]!r}): a "
                         "classifier needs at least two; embed a corpus with two or more labels")
    plans = {s: plan_split(store, s) for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if plans[s].num_docs == 0:
            raise StoreError(f"Store {store_url} has no {s} documents; rebuild it with "
                             "`val_frac=`/`test_frac=` above 0")
    return store, plans


def _train_members(store_url: str, members: list[Member], config: TrainConfig, progress: bool,
                   lone: bool) -> GroupResult:
    t0 = time.perf_counter()
    store, plans = open_for_training(store_url)
    for m in members:
        shutil.rmtree(m.stage, ignore_errors=True)  # left by a killed run
        try:
            m.stage.mkdir(parents=True)
        except OSError as e:
            raise EmbcacheError(f"Cannot create run folder {m.stage}: {e.strerror}") from None
    try:
        result = _fit_members(store_url, store, plans, members, config, progress, lone, t0)
    except BaseException:
        for m in members:
            shutil.rmtree(m.stage, ignore_errors=True)
        raise
    return result


def _in_memory(store, plans: dict, config: TrainConfig, progress: bool) -> dict:
    """The train and val splits decoded into memory while they fit ``config.memory_mb``
    (train first: it is read every epoch); the rest streams from the store. Sizes come from
    the plans (no second scan of the split)."""
    from embcache.cache.stream import InMemorySplit, memory_bytes

    left, out = config.memory_mb << 20, {}
    for split in ("train", "val"):
        if 0 < memory_bytes(store, plans[split]) <= left:
            t = time.perf_counter()
            out[split] = InMemorySplit(store, plans[split], split)
            left -= out[split].nbytes
            if progress:
                print(f"{split} split decoded into memory: {out[split].nbytes / 1e6:,.1f} MB in "
                      f"{time.perf_counter() - t:.1f} s (--memory-mb {config.memory_mb})",
                      file=sys.stderr)
    return out


def build_member(m: Member, store, config: TrainConfig) -> None:
    """Build and compile a member's model for the store, with the callbacks every run has: early
    stopping (best weights restored), CSV history and TensorBoard logs in its stage folder.

    Raises:
        ModelError: the model cannot be built (its builder, or unknown hyperparameters).
    """
    import keras

    m.model = m.source.make(max_len=store.max_len, dim=store.dim,
                            num_classes=len(store.label_names), padding=store.padding,
                            **m.hparams)
    m.model.compile(optimizer=keras.optimizers.Adam(m.learning_rate),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.timer, m.history = [], keras.callbacks.History()  # timer: the shared epochs' seconds
    m.callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                      patience=config.patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(m.stage / "history.csv"),
        keras.callbacks.TensorBoard(m.stage / "logs", write_graph=False, profile_batch=0),
        m.history,
    ]


def group_streams(store, plans: dict, config: TrainConfig, progress: bool) -> tuple:
    """The train and val datasets a group shares (each split in memory while it fits
    ``config.memory_mb``), and the steps of a pass over each: ``(train_ds, val_ds, steps)``."""
    held = _in_memory(store, plans, config, progress)

    def pass_over(split: str):
        b = config.batching(train=split == "train")
        return (memory_dataset(held[split], b) if split in held
                else streamed_dataset(store, split, batching=b, plan=plans[split]))

    train_ds, val_ds = pass_over("train"), pass_over("val")
    steps = {s: plans[s].num_batches(config.batch_size, config.length_buckets,
                                     merge_tail=s == "train") for s in plans}
    return train_ds, val_ds, steps


def _fit_members(store_url, store, plans, members: list[Member], config: TrainConfig,
                 progress: bool, lone: bool, t0: float) -> GroupResult:
    import keras

    trainer = GroupTrainer(members, steps_per_execution=config.steps_per_execution,
                           progress=progress)
    num_classes = len(store.label_names)
    for m in members:
        keras.utils.set_random_seed(config.seed)  # each model starts as it would alone
        try:
            build_member(m, store, config)
        except ModelError as e:
            if lone:
                raise
            trainer.fail(m, str(e))
            continue
    train_ds, val_ds, steps = group_streams(store, plans, config, progress)
    if progress and not lone:
        print(f"Training {len(members)} models from one stream of {store_url}: "
              f"{', '.join(m.name for m in members)}", file=sys.stderr)
    # Keras writes its progress bar to stdout; stdout is for results, so send it to stderr.
    with contextlib.redirect_stdout(sys.stderr), pipeline_errors():
        trainer.prepare(next(iter(val_ds)))  # a val batch: the train stream's epochs stay as they are
        trainer.fit(train_ds, val_ds, epochs=config.epochs, train_steps=steps["train"],
                    val_steps=steps["val"])
        for split in ("val", "test"):
            ds = val_ds if split == "val" else streamed_dataset(
                store, "test", batching=config.batching(), plan=plans["test"])
            trainer.evaluate(ds, steps[split], split, num_classes)
    if lone and members[0].error:
        raise EmbcacheError(f"Training {members[0].source.ref} failed: {members[0].error}; the run "
                            f"folder {members[0].final} is as it was before")
    group = ({"runs": [m.name for m in members], "shared_stream": True} if len(members) > 1
             else None)
    result = GroupResult([])
    for m in members:
        if m.error:
            shutil.rmtree(m.stage, ignore_errors=True)
            result.failed[m.name] = m.error
            continue
        result.runs.append(_save_member(store_url, store, plans, m, config, group, t0))
    return result


def _save_member(store_url, store, plans, m: Member, config: TrainConfig, group: dict | None,
                 t0: float, extra: dict | None = None) -> TrainSummary:
    """Save a finished member's best model, card (with ``extra`` fields: a tune trial's study)
    and curves, and publish its run folder."""
    model_path = m.stage / MODEL_FILE
    m.model.save(model_path)
    val_acc = m.history.history["val_accuracy"]
    best_epoch = int(max(range(len(val_acc)), key=val_acc.__getitem__)) + 1
    samples_per_s = sorted(plans["train"].num_docs / s for s in m.timer)[len(m.timer) // 2]
    seconds = time.perf_counter() - t0
    card = run_card(store, m.source, m.hparams, m.given, config, m.learning_rate, plans,
                    epochs_run=len(val_acc), best_epoch=best_epoch, seconds=seconds,
                    samples_per_s=samples_per_s, metrics=m.metrics, model=m.model,
                    model_path=model_path)
    if group:
        card["group"] = group
    card.update(extra or {})
    write_card(m.stage, card)
    plot_curves(m.history.history, m.stage / "curves.png",
                title=f"{m.name} on {Path(str(store_url)).name}")
    _publish(m.stage, m.final)
    shown = m.source.ref if m.name == m.source.name else m.name  # grid runs: by their point
    return TrainSummary(out=str(m.final), model=shown, epochs=len(val_acc),
                        best_epoch=best_epoch, metrics=m.metrics, samples_per_s=samples_per_s,
                        model_bytes=card["model_bytes"], seconds=seconds)


def run_card(store, source, hparams: dict, given: dict, config: TrainConfig,
             learning_rate: float, plans: dict, *, epochs_run: int, best_epoch: int,
             seconds: float, samples_per_s: float, metrics: dict, model, model_path: Path) -> dict:
    """A trained run's card (before its checksums): the same fields whichever path trained it
    (a group, a lone model or several workers)."""
    return {
        **store_card_fields(store),
        "model": source.ref,
        "model_source": source.record(),
        "hyperparameters": hparams,
        "hyperparameters_given": given,
        "training": {**asdict(config), "learning_rate": learning_rate, "epochs_run": epochs_run,
                     "best_epoch": best_epoch, "seconds": round(seconds, 2),
                     "samples_per_s": round(samples_per_s, 1),
                     "train_docs": plans["train"].num_docs, "val_docs": plans["val"].num_docs},
        "metrics": metrics,
        "model_bytes": model_path.stat().st_size,
        "parameter_count": int(model.count_params()),
    }


def _publish(stage: Path, final: Path) -> None:
    """Put a finished run in place of ``final`` (renames: the old one goes only after)."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _train(store_url: str, source, final: Path, config: TrainConfig, hparams: dict | None,
           progress: bool) -> TrainSummary:
    """Multi-worker training (``tf.distribute``): one model through ``model.fit``; every worker
    runs this and worker 0 writes the run folder (``final``, built in place)."""
    out, model_name, t0 = final, source.ref, time.perf_counter()
    # A multi-worker strategy must exist before any other TensorFlow op (it reads TF_CONFIG).
    cluster = MultiWorker.start()
    store, plans = open_for_training(store_url)
    hp = {**source.hyperparameters(), **(hparams or {})}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmbcacheError(f"Cannot create run folder {out}: {e.strerror}") from None

    import keras

    keras.utils.set_random_seed(config.seed)
    with cluster.strategy.scope():
        model = source.make(max_len=store.max_len, dim=store.dim,
                            num_classes=len(store.label_names), padding=store.padding, **hp)
        # One step per call: the multi-worker workarounds (jobs.multiworker) assume it.
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      steps_per_execution=1)
    read_log: set[int] = set()
    train_ds, val_ds, fit_steps, plans["train"] = cluster.datasets(store, config, read_log)
    cluster.build(model, train_ds)
    timer = EpochTimer.make()
    # Every worker saves (saving may need collective ops); only the chief saves into the run folder.
    work_dir = out if cluster.is_chief else out / f".worker-{cluster.index}"
    work_dir.mkdir(parents=True, exist_ok=True)
    model_path = work_dir / MODEL_FILE
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience,
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(work_dir / "history.csv"),
        keras.callbacks.TensorBoard(work_dir / "logs", write_graph=False, profile_batch=0),
        timer,
    ]
    # Keras's progress bar: stdout is for results
    with contextlib.redirect_stdout(sys.stderr), pipeline_errors():
        history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                            callbacks=callbacks, verbose=1 if progress else 0,
                            shuffle=False, **fit_steps)  # the dataset shuffles itself
    val_acc = history.history["val_accuracy"]
    best_epoch = int(max(range(len(val_acc)), key=val_acc.__getitem__)) + 1
    model.save(model_path)  # EarlyStopping restored the best epoch's weights
    cluster.record(out, read_log)
    if not cluster.is_chief:
        shutil.rmtree(work_dir, ignore_errors=True)
        return TrainSummary(
            out=str(out), model=model_name, epochs=len(val_acc), best_epoch=best_epoch,
            metrics={"val_accuracy": max(val_acc)},
            worker_note=f"Worker {cluster.index} of {cluster.count} trained {model_name} on its "
                        f"{len(cluster.shard_chunks)} train chunks for {len(val_acc)} epochs; "
                        f"worker 0 wrote the run folder {out}")
    metrics = _final_metrics(store, plans, config, source, model)
    per_epoch = fit_steps["steps_per_epoch"] * config.batch_size * cluster.count
    samples_per_s = sorted(per_epoch / s for s in timer.seconds)[len(timer.seconds) // 2]
    seconds = time.perf_counter() - t0
    card = run_card(store, source, hp, dict(hparams or {}), config, config.learning_rate, plans,
                    epochs_run=len(val_acc), best_epoch=best_epoch, seconds=seconds,
                    samples_per_s=samples_per_s, metrics=metrics, model=model,
                    model_path=model_path)
    write_card(out, card)
    plot_curves(history.history, out / "curves.png",
                title=f"{model_name} on {Path(str(store_url)).name}")
    return TrainSummary(out=str(out), model=model_name, epochs=len(val_acc), best_epoch=best_epoch,
                        metrics=metrics, samples_per_s=samples_per_s,
                        model_bytes=card["model_bytes"], seconds=seconds)


def _final_metrics(store, plans: dict, config: TrainConfig, source, model) -> dict:
    """The chief's val/test accuracy, loss and macro-F1 of the restored best model: the same
    figures, by the same code (``GroupTrainer.evaluate``), as a single-process card's."""
    m = Member(name=source.name, source=source, hparams={}, learning_rate=config.learning_rate,
               final=Path("."), stage=Path("."), model=model, done=True)
    evaluator = GroupTrainer([m], steps_per_execution=1, progress=False)
    for split in ("val", "test"):
        steps = plans[split].num_batches(config.batch_size, config.length_buckets)
        ds = streamed_dataset(store, split, batching=config.batching(), plan=plans[split])
        evaluator.evaluate(ds, steps, split, len(store.label_names))
    return m.metrics


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
