"""The tune job: an Optuna study whose trials train together, as groups, from one stream.

Up to ``parallel`` trials are asked from the study and trained as one group
(:class:`embcache.jobs.group.GroupTrainer`): each batch is read, decoded and bucketed once for all
of them. After every epoch each member reports its validation accuracy to its own trial; a member
the pruner stops leaves the group at once (its history stays, no model file) and the others train
on, unchanged. Freed places are refilled between epochs with new trials, each from its own epoch
0, so the group stays full while the study has trials left. A finished trial is a normal run
folder (``<out>/trial-0007``) whose card also records the study, the trial number and its
parameters: ``score`` and ``embcache runs`` work on it unchanged.

Optuna is the engine: its samplers, pruners and storages (a SQLite file by default, any
SQLAlchemy URL, or Optuna's journal file). Several processes, on one machine or several, may work
on one study; ``trials`` is the study's total, shared between them. A process killed mid-study
leaves its trials RUNNING: the next ``tune`` on the study marks them failed (at once for a process
of this machine that is gone; through Optuna's heartbeat for one elsewhere, RDB storages) and the
study goes on.

The study records the store it was made for (``embcache_store``: the fingerprint of the store's
metadata) and refuses another.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embcache.cache.dataset import pipeline_errors
from embcache.cache.errors import (
    EmbcacheError,
    ModelError,
    StrPath,
    install_hint,
    path_arg,
    renamed,
    writing,
)
from embcache.cache.hooks import pause_point
from embcache.cache.locks import reading
from embcache.cache.tfenv import quiet_tensorflow
from embcache.jobs.config import TrainConfig
from embcache.jobs.group import GroupTrainer, Member
from embcache.jobs.runs import draw
from embcache.jobs.train import (
    adapt_lexical,
    build_member,
    group_streams,
    model_list,
    open_for_training,
    save_member,
)
from embcache.jobs.train_data import reads_ids
from embcache.jobs.tune_space import (
    Param,
    Space,
    check_space,
    load_space_file,
    parse_param,
    parse_space,
    suggest,
)
from embcache.jobs.tune_study import (
    Heartbeat,
    best_line,
    clear_stale,
    counted_trials,
    fitted_twin,
    make_pruner,
    make_sampler,
    open_study,
    plot_study,
    redact,
)
from embcache.models.registry import takes_token_ids

if TYPE_CHECKING:
    import optuna

# The one home of tune's choices and defaults (the CLI reads them): the first choice is the default.
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
TRIALS, PARALLEL, OUT = 32, 8, "runs/tune"
__all__ = ["PARALLEL", "PRUNERS", "SAMPLERS", "TRIALS", "OUT", "Param", "Space", "best_line",
           "check_space", "load_space_file", "parse_param", "parse_space", "plot_study", "tune"]


# -- the job ------------------------------------------------------------------------------------
@dataclass
class TrialRun:
    trial: Any
    member: Member
    params: dict


def _check_args(*, sampler, pruner, refill, trials, parallel, timeout) -> None:
    """tune's own arguments, each in one line naming it."""
    for name, value, choices in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS),
                                 ("refill", refill, ("epoch", "group"))):
        if value not in choices:
            raise EmbcacheError(f"Invalid value for `{name}`. Expected one of {choices}. "
                                f"Received: {name}={value!r}")
    for name, value in (("trials", trials), ("parallel", parallel)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EmbcacheError(f"Invalid value for `{name}`. Expected a positive integer. "
                                f"Received: {name}={value!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise EmbcacheError(f"Invalid value for `timeout`. Expected seconds above 0. "
                            f"Received: timeout={timeout!r}")


def _space_and_models(space, model) -> tuple[Space, list]:
    """The space (parsed or read from its file) and the models, checked against each other."""
    if isinstance(space, (str, Path)):
        space = load_space_file(space)
    elif not isinstance(space, Space):
        space = parse_space(space)
    from embcache import models as registry

    sources = [m if isinstance(m, registry.ModelSource) else registry.resolve(m)
               for m in model_list(model)]
    if len({s.name for s in sources}) != len(sources):
        raise EmbcacheError("Invalid value for `model`: a model is named twice")
    check_space(space, sources)
    return space, sources


@renamed(store_url="store")
def tune(store: StrPath, model: Any, space: Space | list[str] | dict | StrPath, *,  # noqa: PLR0913 - options
         trials: int = TRIALS, parallel: int = PARALLEL, study: str | None = None,
         study_name: str | None = None, out: StrPath = OUT, sampler: str = SAMPLERS[0],
         pruner: str = PRUNERS[0], timeout: float | None = None,
         config: TrainConfig | dict | None = None, progress: bool = False,
         callbacks: list | None = None, refill: str = "epoch") -> optuna.Study:
    """Search hyperparameters with an Optuna study; trials train in groups from one stream.

    ``model``: as for :func:`embcache.train` (a name, ``"a,b"``, a builder or a list); with
    several, the model is itself a parameter of the search. ``space``: a :class:`Space`, a list
    of ``NAME=TYPE:...`` strings (``"filters=int:32:256:log"``, ``"dropout=float:0:0.5"``,
    ``"widths=cat:[3,4],[3,4,5]"``), a dict of them, or the path of a YAML space file (see
    :func:`load_space_file`). ``learning_rate`` may be searched; the stream's settings
    (``batch_size``, ``epochs``...) come from ``config`` and are shared by every trial.

    ``trials``: the study's total of finished and running trials, shared with any other process
    on the same study. ``parallel``: trials trained together. ``study``: an Optuna storage
    (default ``sqlite:///<out>/study.db``; ``journal:PATH`` for a journal file);
    ``study_name``: default the name of ``out``. ``sampler``: tpe, random or grid (seeded with
    ``config.seed``); ``pruner``: median, hyperband or none. ``timeout``: seconds after which no
    new trial starts (running ones finish). ``callbacks``: Optuna-style ``fn(study, trial)``
    called after each trial ends here. ``refill``: ``"epoch"`` fills freed places at the next
    epoch, ``"group"`` only when the whole group has finished.

    Each finished trial is a run folder ``<out>/trial-NNNN``; a pruned one keeps its
    ``history.csv``. ``<out>/tune.png`` shows the study. Returns the ``optuna.Study``.

    Raises:
        EmbcacheError: a bad space, sampler, pruner or count; an unreachable storage; a study
            made for another store.
        StoreError: as for ``train``.
        ModelError: an unknown model, or a parameter no model takes.
    """
    quiet_tensorflow()
    store_url = path_arg(store, "store")
    config = TrainConfig.of(config)
    _check_args(sampler=sampler, pruner=pruner, refill=refill, trials=trials, parallel=parallel,
                timeout=timeout)
    space, sources = _space_and_models(space, model)
    out = Path(path_arg(out, "out"))
    study_name = study_name or out.resolve().name
    storage_url = study or f"sqlite:///{out / 'study.db'}"
    with _optuna_warnings(progress), reading(store_url), writing(f"run folders in {out}"):
        opened, plans = open_for_training(store_url)
        the_study = open_study(storage_url, study_name,
                               opened, sampler=make_sampler(sampler, config.seed, parallel, space,
                                                       sources),
                               pruner=make_pruner(pruner, config.epochs))
        clear_stale(the_study, out, progress)
        out.mkdir(parents=True, exist_ok=True)
        (out / "space.json").write_text(json.dumps(space.describe(), indent=2))
        _Study(the_study, storage_url, store_url, opened, plans, sources, space, config, out,
               trials=trials, parallel=parallel, timeout=timeout, progress=progress,
               callbacks=callbacks or [], refill=refill).run()
    draw(out / "tune.png", plot_study, the_study, out / "tune.png")
    return the_study


@contextlib.contextmanager
def _optuna_warnings(progress: bool):
    """Optuna imported (one line if it is missing), and, for this call only, the warnings of
    the features tune uses on purpose silenced: constant_liar, heartbeats and
    fail_stale_trials are marked experimental (tune pins Optuna 4), and Optuna warns that
    heartbeats are meant for ``Study.optimize`` (tune records them itself). Without
    ``progress``, Optuna's info lines ("A new study created", "Trial 3 finished") are held back
    for this call too; its log level is the caller's again when the call returns (the CLI sets
    it for the whole command)."""
    try:
        import optuna
    except ImportError:
        raise EmbcacheError(f"embcache tune needs Optuna: {install_hint('tune')}") from None
    verbosity = optuna.logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        if not progress:
            optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


@dataclass
class _Study:
    """One process's part of a study: ask, train in groups, report, prune, tell."""

    study: Any
    storage_url: str
    store_url: str
    store: Any
    plans: dict
    sources: list
    space: Space
    config: TrainConfig
    out: Path
    trials: int
    parallel: int
    timeout: float | None
    progress: bool
    callbacks: list
    refill: str
    running: dict[int, TrialRun] = field(default_factory=dict, init=False)  # id(member) -> trial

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout if self.timeout else None
        self.t0 = time.perf_counter()

    def _room(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return counted_trials(self.study) < self.trials

    def _ask(self, trainer: GroupTrainer, sample_batch) -> None:
        """Fill the group up to ``parallel`` with new trials, built, compiled and prepared."""
        import keras
        from optuna.trial import TrialState

        new = []
        while len(self.running) < self.parallel and self._room():  # new ones are in running
            trial = self.study.ask()
            before = [t for t in self.study.get_trials(deepcopy=False)
                      if t.number < trial.number and t.state != TrialState.FAIL]
            if len(before) >= self.trials:  # another process took the last places meanwhile
                trial.set_user_attr("embcache_surplus", True)
                self.study.tell(trial, state=TrialState.FAIL)
                break
            trial.set_user_attr("embcache_owner", {"host": socket.gethostname(),
                                                   "pid": os.getpid()})
            self.heartbeat.add(trial._trial_id)
            source, hparams, lr = suggest(trial, self.space, self.sources)
            name = f"trial-{trial.number:04d}"
            final = self.out / name
            m = Member(name=name, source=source, hparams={**source.hyperparameters(), **hparams},
                       given=hparams, learning_rate=lr if lr is not None else
                       self.config.learning_rate, final=final,
                       stage=self.out / f".{name}.partial")

            shutil.rmtree(m.stage, ignore_errors=True)
            m.stage.mkdir(parents=True)
            keras.utils.set_random_seed(self.config.seed + trial.number)
            try:
                build_member(m, self.store, self.config)
                twin = fitted_twin(self.study, trial, m) if not m.model.trainable_weights else None
                if twin is not None:  # fitted by counting (nb): neither lr nor seed changes it
                    shutil.rmtree(m.stage, ignore_errors=True)
                    self._end(trial, m, "complete", f"the same model as trial {twin.number}, "
                              "fitted by counting: its result, not fitted again", twin.value)
                    continue
                if takes_token_ids(m.model):
                    if not self.store.with_ids:
                        raise ModelError(f"{source.ref} reads token_ids; store {self.store.url} "
                                         "has none (rebuild it: its embed-corpus job again "
                                         "with `overwrite=True`)")
                    adapt_lexical(self.store, self.plans["train"], [m.model], False,
                                  self.lexical_counts)
            except ModelError as e:
                self._end(trial, m, "fail", str(e))
                continue
            self.running[id(m)] = TrialRun(trial, m, dict(trial.params))
            new.append(m)
            if self.progress:
                shown = " ".join(f"{k}={v}" for k, v in trial.params.items())
                print(f"Trial {trial.number}: {shown} ({m.precision.name})", file=sys.stderr)
        if new:
            trainer.add(new, sample_batch)
            for m in new:
                if m.error:
                    self._end(self.running[id(m)].trial, m, "fail", m.error)
                    trainer.members.remove(m)

    def run(self) -> None:
        # Ids are read (for every trial: one stream) only when a trial's model may take them:
        # `wide` in the space, or a model that reads them; their counts are made once.
        wide = "wide" in self.space.common or any("wide" in p for p in self.space.per_model.values())
        lexical = wide or any(reads_ids(src, self.store) for src in self.sources)
        if lexical and self.store.meta.has_token_ids:
            self.store = self.store.reading_ids()
        self.lexical_counts: dict = {}
        config, store, plans = self.config, self.store, self.plans
        train_ds, val_ds, steps = group_streams(store, plans, config, self.progress)
        trainer = GroupTrainer([], steps_per_execution=config.steps_per_execution,
                               progress=self.progress, open_group=True)
        self.heartbeat = Heartbeat(self.study)
        num_classes = len(store.label_names)
        try:
            with contextlib.redirect_stdout(sys.stderr), pipeline_errors():
                sample = next(iter(val_ds))
                while True:
                    if self.refill == "epoch" or not self.running:
                        self._ask(trainer, sample)
                    if not self.running:
                        break
                    ran = trainer.run_epoch(train_ds, val_ds, epochs=config.epochs,
                                            train_steps=steps["train"], val_steps=steps["val"])
                    finished = []
                    for m, logs in ran:
                        run = self.running[id(m)]
                        run.trial.report(logs.get("val_accuracy", float("nan")), m.epoch)
                        if m.done:
                            finished.append(m)
                        elif run.trial.should_prune():
                            trainer.drop(m)
                            self._end(run.trial, m, "pruned", f"after epoch {m.epoch}")
                    for m in [m for m in trainer.members if m.error and id(m) in self.running]:
                        self._end(self.running[id(m)].trial, m, "fail", m.error)
                        trainer.drop(m)
                    if finished:
                        trainer.evaluate(val_ds, steps["val"], "val", num_classes,
                                         members=finished)
                        for m in finished:
                            trainer.drop(m)
                            self._finish(m)
        finally:
            self.heartbeat.close()
            from optuna.trial import TrialState

            for run in list(self.running.values()):  # interrupted: failed, their stages gone
                shutil.rmtree(run.member.stage, ignore_errors=True)
                with contextlib.suppress(Exception):
                    self.study.tell(run.trial, state=TrialState.FAIL)

    def _finish(self, m: Member) -> None:
        run = self.running[id(m)]
        summary = save_member(self.store_url, self.store, self.plans, m, self.config, None,
                               self.t0, extra={"tune": {
                                   "study": self.study.study_name,
                                   "storage": redact(self.storage_url),
                                   "trial": run.trial.number, "params": run.params}})
        value = m.metrics.get("val_accuracy", float("nan"))
        run.trial.set_user_attr("run", str(Path(summary.out).resolve()))  # for best_run()
        self._end(run.trial, m, "complete", f"val accuracy {value:.4f} -> {summary.out}",
                  value=value)

    def _end(self, trial, m: Member, state: str, note: str, value: float | None = None) -> None:
        """Tell the study how the trial ended; free its model; keep a pruned trial's history."""

        from optuna.trial import TrialState

        if state == "complete":
            frozen = self.study.tell(trial, value)
        else:
            frozen = self.study.tell(trial, state=TrialState.PRUNED if state == "pruned" else
                                     TrialState.FAIL)
            if state == "pruned" and (m.stage / "history.csv").exists():
                keep = self.out / f"{m.name}.pruned"
                shutil.rmtree(keep, ignore_errors=True)
                keep.mkdir()
                shutil.move(str(m.stage / "history.csv"), keep / "history.csv")
                (keep / "trial.json").write_text(json.dumps(
                    {"trial": trial.number, "state": "pruned", "params": dict(trial.params),
                     "model": m.source.ref, "epochs": m.epoch}, indent=2))
            shutil.rmtree(m.stage, ignore_errors=True)
        self.running.pop(id(m), None)
        self.heartbeat.ids.discard(trial._trial_id)
        m.model = m.callbacks = None  # freed: RSS stays flat trial after trial
        if self.progress:
            print(f"Trial {trial.number} {state}{': ' + note if note else ''}", file=sys.stderr)
        pause_point("tune:trial-ended")
        for cb in self.callbacks:
            cb(self.study, frozen)
