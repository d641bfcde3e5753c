"""The train job: stream a store into one registered model; leave a self-describing run folder.

    <out>/model.keras   the best checkpoint (by validation accuracy); carries no word vectors
    <out>/model.json    the model card: model, hyperparameters, the store's vectors fingerprint,
                        tokenizer, max_len, dim, dtype, label names, metrics, timings
    <out>/history.csv   per-epoch loss/accuracy for train and validation
    <out>/curves.png    those curves plotted
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

from embcache.cache.dataset import pipeline_errors, streamed_dataset
from embcache.cache.errors import EmbcacheError, ModelError, StrPath, path_arg, renamed, writing
from embcache.cache.locks import exclusive, reading
from embcache.cache.precision import precision_line
from embcache.cache.tfenv import quiet_tensorflow
from embcache.jobs.config import TrainConfig
from embcache.jobs.fit import (
    TrainSummary,
    compile_model,
    finish_run,
    fit_callbacks,
    make_model,
)
from embcache.jobs.grid import expand_runs
from embcache.jobs.group import GroupTrainer, Member
from embcache.jobs.multiworker import STRATEGIES
from embcache.jobs.runs import (
    CARD_FILE,
    MODEL_FILE,
)
from embcache.jobs.train_data import adapt_lexical, group_streams, open_for_training
from embcache.models.registry import takes_token_ids, takes_vectors

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class GroupResult:
    """What ``train_group`` did: a summary per finished run, and each failed run's reason.
    ``to_frame()``: one row per run (failed runs with their ``error``)."""

    runs: list[TrainSummary]
    failed: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [r.line() for r in self.runs]

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = [r.row() for r in self.runs]
        rows += [{"run": name, "error": why} for name, why in self.failed.items()]
        return pd.DataFrame(rows)


@overload
def train(store: StrPath, model: list[str | Callable] | tuple[str | Callable, ...],
          out: StrPath | None = None, *, grid: dict | None = None,
          config: TrainConfig | dict | None = None, hparams: dict | None = None,
          progress: bool = False, overwrite: bool = False) -> GroupResult: ...


@overload
def train(store: StrPath, model: Callable, out: StrPath | None = None, *, grid: None = None,
          config: TrainConfig | dict | None = None, hparams: dict | None = None,
          progress: bool = False, overwrite: bool = False) -> TrainSummary: ...


@overload
def train(store: StrPath, model: str | Callable, out: StrPath | None = None, *,
          grid: dict | None = None, config: TrainConfig | dict | None = None,
          hparams: dict | None = None, progress: bool = False,
          overwrite: bool = False) -> TrainSummary | GroupResult: ...


@renamed(store_url="store", out_dir="out")
def train(store: StrPath, model: str | Callable | Sequence[str | Callable],
          out: StrPath | None = None, *, grid: dict | None = None,
          config: TrainConfig | dict | None = None, hparams: dict | None = None,
          progress: bool = False, overwrite: bool = False) -> TrainSummary | GroupResult:
    """Train ``model`` on the store's train split, early-stopping on its val split.

    ``model``: a built-in or registered name, an installed plugin's name (entry-point group
    ``embcache.models``), an import string ``package.module:function``, or a builder function
    itself (recorded as its import string). The card records where it came from, so ``score``
    can import it again. ``out`` defaults to ``runs/<model name>``.

    Several models (a list, or names joined by commas as on the command line) or a ``grid``
    (``{"filters": [64, 128]}``) train as one group from one stream (:func:`train_group`):
    ``out`` is then the parent folder of their runs (default ``runs``) and the result a
    :class:`GroupResult`, even for a list of one; one model (a name or a function) gives its
    :class:`TrainSummary`.

    ``config``: a :class:`TrainConfig` or a dict of its fields (default: the defaults).

    The run is built in ``.<name>.partial`` beside ``out`` and moved into place when it is
    complete, so a failed or killed run leaves any previous run folder as it was; a lock
    refuses a second ``train`` into the same folder meanwhile.

    Raises:
        EmbcacheError: ``out`` holds a trained model and ``overwrite`` is false, another
            process is writing it, or training failed (e.g. the loss became NaN).
        StoreError: incomplete, unlabelled or unknown-layout store, or an empty split.
        ModelError: unknown model or hyperparameter.
    """
    models = model_list(model)
    result = train_group(path_arg(store, "store"), models,
                         None if out is None else path_arg(out, "out"), grid=grid,
                         config=TrainConfig.of(config), hparams=hparams, progress=progress, overwrite=overwrite)
    # The type follows what was asked, never how many models it turned out to be.
    return result if grid or not _one_spec(model) else result.runs[0]


def _one_spec(model) -> bool:
    """One model asked for: a builder function, or a name without commas (a list, even of one,
    asks for a group)."""
    return callable(model) or (isinstance(model, str) and "," not in model)


def model_list(model) -> list:
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
            out += model_list(m) if isinstance(m, str) else [m]
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

    A model that fails (a NaN or infinite loss, or it cannot run on the store's batches) stops
    alone, listed in ``failed``, its run folder as it was; a lone model's failure raises.

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
            from embcache.jobs.train_workers import train_multiworker

            return GroupResult([train_multiworker(store_url, plans[0].source, finals[0], config,
                                                  plans[0].hparams, progress)])
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


def build_member(m: Member, store, config: TrainConfig) -> None:
    """Build and compile a member's model for the store, with the callbacks every run has
    (:func:`fit_callbacks`) and its History.

    Raises:
        ModelError: the model cannot be built (its builder, or unknown hyperparameters).
    """
    import keras

    m.model, m.precision = make_model(m.source, store, m.hparams, config)
    compile_model(m.model, m.learning_rate)
    m.timer, m.history = [], keras.callbacks.History()  # timer: the shared epochs' seconds
    m.callbacks = fit_callbacks(m.stage, config) + [m.history]


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
    live = [m.model for m in members if m.model is not None and not m.error]
    if any(takes_token_ids(model) for model in live):
        # Refuses a store without ids, in one line. A group of lexical models alone reads no
        # vectors: its batches (and a held split) are the ids' 4 bytes a token.
        store = store.reading_ids(vectors=any(takes_vectors(model) for model in live))
        adapt_lexical(store, plans["train"], live, progress)
    train_ds, val_ds, steps = group_streams(store, plans, config, progress)
    if progress and not lone:
        print(f"Training {len(members)} models from one stream of {store_url}: "
              f"{', '.join(m.name for m in members)}", file=sys.stderr)
    if progress:
        print(precision_line([(m.name, m.precision) for m in members if m.precision]),
              file=sys.stderr)
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
        result.runs.append(save_member(store_url, store, plans, m, config, group, t0))
    return result


def save_member(store_url, store, plans, m: Member, config: TrainConfig, group: dict | None,
                t0: float, extra: dict | None = None) -> TrainSummary:
    """Save a finished member's best model, then finish its run (:func:`finish_run`)."""
    m.model.save(m.stage / MODEL_FILE)
    return finish_run(store_url, store, plans, m, config, t0, group=group, extra=extra)
