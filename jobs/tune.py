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
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embcache.cache.dataset import pipeline_errors
from embcache.cache.errors import EmbcacheError, ModelError, install_hint, writing
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
from embcache.models.registry import takes_token_ids

# The one home of tune's choices and defaults (the CLI reads them): the first choice is the default.
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
TRIALS, PARALLEL, OUT = 32, 8, "runs/tune"
KINDS = ("int", "float", "cat")
# TrainConfig fields a trial cannot change: the group's members share one stream of batches.
SHARED = ("batch_size", "epochs", "patience", "seed", "shuffle_docs", "steps_per_execution",
          "length_buckets", "memory_mb", "strategy")
HEARTBEAT_S = 60  # RDB storages: a RUNNING trial without a heartbeat for GRACE_S is failed
GRACE_S = 180


# -- the search space ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One dimension of the space: ``int``/``float`` between ``low`` and ``high`` (both included;
    ``log``: sampled on a log scale), or ``cat``: one of ``choices``."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial, name: str):
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)
        # Optuna stores only None/bool/int/float/str choices: others (lists) travel as JSON text.
        picked = trial.suggest_categorical(name, [_choice_key(c) for c in self.choices])
        return next(c for c in self.choices if _choice_key(c) == picked)

    def grid_values(self) -> list:
        if self.kind == "cat":
            return [_choice_key(c) for c in self.choices]
        if self.kind == "int" and self.high - self.low <= 1000:
            return list(range(int(self.low), int(self.high) + 1))
        raise EmbcacheError("Invalid value for `sampler`: grid needs a finite space; give each "
                            "float (and each int over 1,000 values) as choices, e.g. "
                            "'dropout=cat:0.0,0.25,0.5'")


def _choice_key(c):
    return c if c is None or isinstance(c, (bool, int, float, str)) else json.dumps(c)


@dataclass
class Space:
    """``common``: parameters for every model that takes them (and ``learning_rate`` for all);
    ``per_model``: each model's own (trial parameter ``<model>.<name>``)."""

    common: dict[str, Param] = field(default_factory=dict)
    per_model: dict[str, dict[str, Param]] = field(default_factory=dict)

    def describe(self) -> dict:
        def one(p: Param):
            return ({"choices": list(p.choices)} if p.kind == "cat" else
                    {"type": p.kind, "low": p.low, "high": p.high, "log": p.log})

        return {"common": {k: one(p) for k, p in self.common.items()},
                "models": {m: {k: one(p) for k, p in ps.items()}
                           for m, ps in self.per_model.items()}}


def parse_param(name: str, text: Any, where: str) -> Param:
    """``int:32:256:log``, ``float:0:0.5``, ``cat:a,b,c`` (JSON values where they parse), a list
    (choices) or a mapping ``{type, low, high, log}`` / ``{choices: [...]}``."""

    def bad(why: str) -> EmbcacheError:
        return EmbcacheError(f"Invalid value for {where}: {name}={text!r}: {why}. Expected "
                             "int:LOW:HIGH[:log], float:LOW:HIGH[:log] or cat:A,B,...")

    if isinstance(text, list):
        text = {"choices": text}
    if isinstance(text, dict):
        if "choices" in text:
            kind, parts = "cat", text["choices"]
        else:
            kind = text.get("type")
            parts = [text.get("low"), text.get("high")] + (["log"] if text.get("log") else [])
    elif isinstance(text, str):
        kind, _, rest = text.partition(":")
        parts = _choices(rest) if kind == "cat" else rest.split(":")
    else:
        raise bad("not a range or a list of choices")
    if kind not in KINDS:
        raise bad(f"unknown type {kind!r}")
    if kind == "cat":
        if not isinstance(parts, list) or not parts or parts == [""]:
            raise bad("no choices")
        if len({json.dumps(_choice_key(p)) for p in parts}) != len(parts):
            raise bad("a choice is given twice")
        return Param("cat", choices=tuple(parts))
    log = len(parts) == 3 and parts[2] in ("log", True)
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise bad("give LOW and HIGH, then optionally log")
    try:
        num = int if kind == "int" else float
        low, high = (num(str(v)) for v in parts[:2])
    except (TypeError, ValueError):
        raise bad(f"LOW and HIGH must be {'integers' if kind == 'int' else 'numbers'}") from None
    if not low < high:
        raise bad(f"LOW ({low}) must be below HIGH ({high})")
    if log and low <= 0:
        raise bad(f"a log range must start above 0 (LOW is {low})")
    return Param(kind, low, high, log)


def _choices(text: str) -> list:
    """``a,b`` -> ["a", "b"]; ``0.1,0.5`` -> [0.1, 0.5]; ``[3,4],[3,4,5]`` -> [[3, 4], [3, 4, 5]]
    (the whole read as a JSON list first, so lists keep their commas)."""
    try:
        whole = json.loads(f"[{text}]")
    except json.JSONDecodeError:
        return [_json_or_text(v) for v in text.split(",")]
    return whole if isinstance(whole, list) else [whole]


def _json_or_text(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def parse_space(pairs: list[str] | tuple[str, ...] | dict | None) -> Space:
    """``["filters=int:32:256:log", "dropout=float:0:0.5"]`` (or a dict name -> spec) -> a
    :class:`Space` of common parameters."""
    space = Space()
    items = pairs.items() if isinstance(pairs, dict) else [
        (p.partition("=")[0], p.partition("=")[2] if "=" in p else None) for p in pairs or ()]
    for name, spec in items:
        if not name or spec is None:
            raise EmbcacheError(f"Invalid value for `--space`. Expected NAME=TYPE:..., e.g. "
                                f"'dropout=float:0.0:0.5'. Received: {name!r}")
        if name in space.common:
            raise EmbcacheError(f"Invalid value for `--space`: {name!r} is given twice")
        space.common[name] = parse_param(name, spec, "`--space`")
    return space


def load_space_file(path: str | Path) -> Space:
    """A YAML (or JSON) file: parameters for every model at the top, each model's own under
    ``models:``::

        learning_rate: float:1e-4:1e-2:log
        dropout: [0.0, 0.25, 0.5]          # a list: categorical choices
        models:
          kim_cnn:
            filters: int:32:256:log
            widths: [[3, 4, 5], [2, 3, 4]]
          fasttext:
            hidden: {type: int, low: 0, high: 256}
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise EmbcacheError(f"Invalid value for `--space-file`: cannot read {path}: "
                            f"{e.strerror}") from None
    try:
        import yaml

        data = yaml.safe_load(text)
    except ImportError:
        data = _json_or_text(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise EmbcacheError(f"Space file {path}{line}: not valid YAML "
                            f"({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise EmbcacheError(f"Space file {path}: expected a mapping of parameter names (and "
                            "`models:`)")
    models = data.pop("models", None) or {}
    if not isinstance(models, dict):
        raise EmbcacheError(f"Space file {path}: `models:` must map model names to parameters")
    space = Space({k: parse_param(k, v, f"space file {path}") for k, v in data.items()})
    for model, params in models.items():
        if not isinstance(params, dict):
            raise EmbcacheError(f"Space file {path}: `models: {model}:` must map parameter "
                                "names to ranges")
        space.per_model[str(model)] = {k: parse_param(k, v, f"space file {path} (model {model})")
                                       for k, v in params.items()}
    return space


def check_space(space: Space, sources: list) -> None:
    """Every parameter is taken by some model (``learning_rate``: by all); each model's own
    parameters by that model.

    Raises:
        ModelError: an unknown parameter, in one line naming what the models take.
    """
    if not space.common and not space.per_model:
        raise EmbcacheError("Invalid value for `space`: it is empty; give --space NAME=RANGE or "
                            "--space-file")
    names = {s.name: s for s in sources}
    takes = {s.name: set(s.hyperparameters()) | {"learning_rate"} for s in sources}
    for name in [*space.common, *(k for ps in space.per_model.values() for k in ps)]:
        if name in SHARED:
            raise EmbcacheError(f"Invalid value for `space`: {name!r} is shared by every trial "
                                f"of a group (one stream); set it with --{name.replace('_', '-')}")
    for name in space.common:
        if not any(name in t for t in takes.values()):
            offer = "; ".join(f"{m} takes {', '.join(sorted(t))}" for m, t in takes.items())
            raise ModelError(f"Unknown parameter {name!r} in the space: no model takes it "
                             f"({offer})")
    for model, params in space.per_model.items():
        if model not in names:
            raise ModelError(f"Space names model {model!r}, which is not among the models tuned "
                             f"({', '.join(names)}); add it to --model")
        for name in params:
            if name not in takes[model]:
                raise ModelError(f"Unknown parameter {name!r} for model {model!r} in the space; "
                                 f"it takes {', '.join(sorted(takes[model]))}")


def suggest(trial, space: Space, sources: list) -> tuple[Any, dict, float | None]:
    """The trial's model, hyperparameters and learning rate (``None``: the config's)."""
    source = sources[0]
    if len(sources) > 1:
        picked = trial.suggest_categorical("model", [s.name for s in sources])
        source = next(s for s in sources if s.name == picked)
    takes = set(source.hyperparameters())
    hparams, lr = {}, None
    for name, p in space.common.items():
        if name == "learning_rate":
            lr = float(p.suggest(trial, name))
        elif name in takes:
            hparams[name] = p.suggest(trial, name)
    for name, p in space.per_model.get(source.name, {}).items():
        value = p.suggest(trial, f"{source.name}.{name}")
        if name == "learning_rate":
            lr = float(value)
        else:
            hparams[name] = value
    return source, hparams, lr


# -- the study ----------------------------------------------------------------------------------
def _storage(url: str):
    """Optuna storage for ``url``: ``journal:PATH`` (or a path ending ``.log``/``.journal``) is
    Optuna's journal file; anything else an SQLAlchemy URL (``sqlite:///runs/tune.db``)."""
    import optuna

    journal = url[len("journal:"):] if url.startswith("journal:") else (
        url if url.endswith((".log", ".journal")) and "://" not in url else None)
    try:
        if journal is not None:
            from optuna.storages.journal import JournalFileBackend

            Path(journal).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(journal))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and the drivers' own errors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EmbcacheError(f"Invalid value for `study`: cannot open the study storage "
                            f"{_redact(url)}: {first}") from None


def _redact(url: str) -> str:
    """A storage URL without its password (it goes into cards and messages)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        auth, _, host = rest.rpartition("@")
        return f"{scheme}://{auth.partition(':')[0]}:***@{host}"
    return url


def store_fingerprint(store) -> str:
    """sha256 of the store's metadata (vectors, tokenizer, corpus, splits): what a study is for."""
    return hashlib.sha256(json.dumps(store.meta.to_attrs(), sort_keys=True,
                                     default=str).encode()).hexdigest()


def _sampler(name: str, seed: int, parallel: int, space: Space, sources: list):
    import optuna

    if name == "tpe":
        # constant_liar: trials asked while others run (a group) are steered away from them,
        # Optuna's advice for parallel studies.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel > 1)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid: dict[str, list] = {}
    if len(sources) > 1:
        grid["model"] = [s.name for s in sources]
    for k, p in space.common.items():
        grid[k] = p.grid_values()
    for m, ps in space.per_model.items():
        for k, p in ps.items():
            grid[f"{m}.{k}"] = p.grid_values()
    return optuna.samplers.GridSampler(grid, seed=seed)


def _pruner(name: str, epochs: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def open_study(storage_url: str, name: str, store, *, sampler, pruner):
    """Create or load the study; refuse one made for another store (one line)."""
    import optuna

    storage = _storage(storage_url)
    # Optuna warns that heartbeats are meant for Study.optimize; tune records them itself.
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    pruner=pruner, direction="maximize", load_if_exists=True)
    except Exception as e:  # noqa: BLE001 - storage errors (locked, unreachable) in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EmbcacheError(f"Cannot open study {name!r} in {_redact(storage_url)}: "
                            f"{first}") from None
    fp, attrs = store_fingerprint(store), study.user_attrs
    made_for = attrs.get("embcache_store")
    if made_for is None:
        study.set_user_attr("embcache_store", {"fingerprint": fp, "url": str(store.url)})
    elif made_for.get("fingerprint") != fp:
        raise EmbcacheError(f"Study {name!r} in {_redact(storage_url)} was made for another store "
                            f"({made_for.get('url')}); {store.url} differs (its vectors, corpus or "
                            "splits): use another `study_name`, or tune on that store")
    return study


def fail_stale(study) -> list[int]:
    """Trials left RUNNING by a tune that was killed: those of a gone process on this machine at
    once, others when their heartbeat is older than the grace period (RDB storages)."""
    import optuna
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("embcache_owner") or {}
        if owner.get("host") == host and owner.get("pid") and not _alive(owner["pid"]):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                failed.append(t.number)
    optuna.storages.fail_stale_trials(study)
    return failed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
    """Records a heartbeat for every running trial of this process (RDB storages; the journal
    storage has none), so other processes can tell a live trial from a killed one."""

    def __init__(self, study):
        from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

        self.storage, self.ids = study._storage, set()
        self.on = isinstance(self.storage, BaseHeartbeat) and is_heartbeat_enabled(self.storage)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tune-heartbeat")
        if self.on:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S / 2):
            for trial_id in list(self.ids):
                with contextlib.suppress(Exception):
                    self.storage.record_heartbeat(trial_id)

    def add(self, trial_id: int) -> None:
        self.ids.add(trial_id)
        if self.on:
            self.storage.record_heartbeat(trial_id)

    def close(self) -> None:
        self._stop.set()


def _counted(study) -> int:
    """Trials that count towards ``trials``: finished (complete or pruned) and running."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


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


def tune(store_url: str, model: Any, space: Space | list[str] | dict | str | Path, *,
         trials: int = TRIALS, parallel: int = PARALLEL, study: str | None = None,
         study_name: str | None = None, out: str | Path = OUT, sampler: str = SAMPLERS[0],
         pruner: str = PRUNERS[0], timeout: float | None = None,
         config: TrainConfig | dict | None = None, progress: bool = False,
         callbacks: list | None = None, refill: str = "epoch"):
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
    config = TrainConfig.of(config)
    _check_args(sampler=sampler, pruner=pruner, refill=refill, trials=trials, parallel=parallel,
                timeout=timeout)
    space, sources = _space_and_models(space, model)
    out = Path(out)
    study_name = study_name or out.resolve().name
    storage_url = study or f"sqlite:///{out / 'study.db'}"
    _import_optuna()
    with reading(store_url), writing(f"run folders in {out}"):
        store, plans = open_for_training(store_url)
        the_study = open_study(storage_url, study_name,
                               store, sampler=_sampler(sampler, config.seed, parallel, space,
                                                       sources),
                               pruner=_pruner(pruner, config.epochs))
        _clear_stale(the_study, out, progress)
        out.mkdir(parents=True, exist_ok=True)
        (out / "space.json").write_text(json.dumps(space.describe(), indent=2))
        _Study(the_study, storage_url, store_url, store, plans, sources, space, config, out,
               trials=trials, parallel=parallel, timeout=timeout, progress=progress,
               callbacks=callbacks or [], refill=refill).run()
    draw(out / "tune.png", plot_study, the_study, out / "tune.png")
    return the_study


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise EmbcacheError(f"embcache tune needs Optuna: {install_hint('tune')}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # constant_liar, heartbeats and fail_stale_trials are marked experimental; tune pins Optuna 4.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _clear_stale(the_study, out: Path, progress: bool) -> None:
    """Trials a stopped tune left running are marked failed, and their half-built folders go."""
    failed = fail_stale(the_study)
    for number in failed:
        shutil.rmtree(out / f".trial-{number:04d}.partial", ignore_errors=True)
    if progress and failed:
        print(f"Marked trials {', '.join(map(str, failed))} failed: left running by a tune "
              "that was stopped", file=sys.stderr)


class _Study:
    """One process's part of a study: ask, train in groups, report, prune, tell."""

    def __init__(self, study, storage_url, store_url, store, plans, sources, space, config, out,
                 *, trials, parallel, timeout, progress, callbacks, refill):
        self.study, self.storage_url, self.store_url = study, storage_url, store_url
        self.store, self.plans, self.sources, self.space = store, plans, sources, space
        self.config, self.out, self.trials, self.parallel = config, out, trials, parallel
        self.deadline = time.monotonic() + timeout if timeout else None
        self.progress, self.callbacks, self.refill = progress, callbacks, refill
        self.running: dict[int, TrialRun] = {}  # id(member) -> its trial
        self.t0 = time.perf_counter()

    def _room(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return _counted(self.study) < self.trials

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
                if takes_token_ids(m.model):
                    if not self.store.with_ids:
                        raise ModelError(f"{source.ref} reads token_ids; store {self.store.url} "
                                         "has none (rebuild it with its embed-corpus command "
                                         "and --overwrite)")
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
        # tfidf among the models or `wide` in the space; their counts are made once.
        wide = "wide" in self.space.common or any("wide" in p for p in self.space.per_model.values())
        lexical = wide or any(src.name == "tfidf" for src in self.sources)
        if lexical and self.store.meta.has_token_ids:
            self.store = self.store.reading_ids()
        self.lexical_counts: dict = {}
        config, store, plans = self.config, self.store, self.plans
        train_ds, val_ds, steps = group_streams(store, plans, config, self.progress)
        trainer = GroupTrainer([], steps_per_execution=config.steps_per_execution,
                               progress=self.progress, open_group=True)
        self.heartbeat = _Heartbeat(self.study)
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
                                   "storage": _redact(self.storage_url),
                                   "trial": run.trial.number, "params": run.params}})
        value = m.metrics.get("val_accuracy", float("nan"))
        self._end(run.trial, m, "complete", f"val accuracy {value:.4f} -> {summary.out}",
                  value=value)

    def _end(self, trial, m: Member, state: str, note: str, value: float | None = None) -> None:
        """Tell the study how the trial ended; free its model; keep a pruned trial's history."""

        from optuna.trial import TrialState

        if state == "complete":
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=TrialState.PRUNED if state == "pruned" else
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
        if self.callbacks:
            frozen = self.study._storage.get_trial(trial._trial_id)
            for cb in self.callbacks:
                cb(self.study, frozen)


# -- results ------------------------------------------------------------------------------------
def best_line(study) -> str:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    if not done:
        return f"Study {study.study_name}: no completed trial yet ({pruned} pruned)"
    best = study.best_trial
    shown = " ".join(f"{k}={v}" for k, v in best.params.items())
    return (f"Best trial {best.number}: val accuracy {best.value:.4f} ({shown}); {len(done)} "
            f"completed, {pruned} pruned in study {study.study_name}")


def plot_study(study, path: Path) -> None:
    """Optimisation history and, where Optuna can compute them, parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    order = sorted(range(len(xs)), key=xs.__getitem__)
    axes[0].plot([xs[i] for i in order], [ys[i] for i in order], "o", alpha=0.6,
                 label="completed trial")
    axes[0].step([xs[i] for i in order], [max(ys[j] for j in order[: k + 1])
                                          for k in range(len(order))], where="post",
                 label="best so far")
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if pruned:
        axes[0].plot([t.number for t in pruned],
                     [max(t.intermediate_values.values(), default=float("nan")) for t in pruned],
                     "x", color="grey", label="pruned (best epoch)")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel("validation accuracy")
    axes[0].set_title("Optimisation history")
    axes[0].grid(alpha=0.3)
    axes[0].legend()
    try:
        import optuna
        from optuna.importance import PedAnovaImportanceEvaluator

        # PED-ANOVA: NumPy only (fANOVA, Optuna's default, needs scikit-learn). Over the
        # parameters every completed trial has (a model's own parameters are left out when
        # several models are tuned).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator())
        names = list(imp)[::-1]
        axes[1].barh(names, [imp[n] for n in names])
        axes[1].set_title("Parameter importances (PED-ANOVA)")
        axes[1].set_xlabel("importance")
    except Exception as e:  # noqa: BLE001 - too few trials, or a conditional space
        axes[1].text(0.5, 0.5, f"importances not available:\n{str(e).splitlines()[0][:80]}",
                     ha="center", va="center", wrap=True)
        axes[1].set_axis_off()
    fig.suptitle(f"Study {study.study_name}: {len(done)} completed, {len(pruned)} pruned")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
