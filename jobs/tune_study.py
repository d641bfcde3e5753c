"""tune's Optuna study: its storage (SQLite, any SQLAlchemy URL or a journal file), sampler and
pruner, the store it was made for, and the trials a killed process left RUNNING (failed at once
for a process of this machine that is gone; through Optuna's heartbeat for one elsewhere)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from embcache.cache.errors import EmbcacheError
from embcache.jobs.tune_space import Space

if TYPE_CHECKING:
    import optuna

HEARTBEAT_S = 60  # RDB storages: a RUNNING trial without a heartbeat for GRACE_S is failed
GRACE_S = 180


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
                            f"{redact(url)}: {first}") from None


def redact(url: str) -> str:
    """A storage URL without its password (it goes into cards and messages): SQLAlchemy's own
    rendering for its URLs; a journal path or anything it cannot parse as it is."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: it holds no password to hide
        return url


def store_fingerprint(store) -> str:
    """sha256 of the store's metadata (vectors, tokenizer, corpus, splits): what a study is for."""
    return hashlib.sha256(json.dumps(store.meta.to_attrs(), sort_keys=True,
                                     default=str).encode()).hexdigest()


def make_sampler(name: str, seed: int, parallel: int, space: Space, sources: list):
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


def make_pruner(name: str, epochs: int):
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
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    pruner=pruner, direction="maximize", load_if_exists=True)
    except Exception as e:  # noqa: BLE001 - storage errors (locked, unreachable) in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EmbcacheError(f"Cannot open study {name!r} in {redact(storage_url)}: "
                            f"{first}") from None
    fp, attrs = store_fingerprint(store), study.user_attrs
    made_for = attrs.get("embcache_store")
    if made_for is None:
        study.set_user_attr("embcache_store", {"fingerprint": fp, "url": str(store.url)})
    elif made_for.get("fingerprint") != fp:
        raise EmbcacheError(f"Study {name!r} in {redact(storage_url)} was made for another store "
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
            # skip_if_finished: another process may have failed it meanwhile
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    optuna.storages.fail_stale_trials(study)
    return failed


def clear_stale(study, out: Path, progress: bool) -> None:
    """Trials a stopped tune left running are marked failed, and their half-built folders go."""
    failed = fail_stale(study)
    for number in failed:
        shutil.rmtree(out / f".trial-{number:04d}.partial", ignore_errors=True)
    if progress and failed:
        print(f"Marked trials {', '.join(map(str, failed))} failed: left running by a tune "
              "that was stopped", file=sys.stderr)


FITTED = "embcache_fitted"  # a trial's user attribute: what decides a model fitted by counting


def fitted_twin(study, trial, member):
    """An earlier completed trial of the same model fitted by counting (no trainable weights:
    ``nb``), or ``None``. Such a model depends on its hyperparameters alone, not on the trial's
    learning rate or seed, so a sampler that proposes it again (its ``learning_rate`` differs,
    say) would fit the same model again: the twin's value and run folder are the trial's
    instead. The trial records what decides the model, for later twins."""
    from optuna.trial import TrialState

    key = json.dumps({"model": member.source.ref, "hparams": member.hparams}, sort_keys=True,
                     default=str)
    trial.set_user_attr(FITTED, key)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(FITTED) == key and "run" in t.user_attrs:
            trial.set_user_attr("run", t.user_attrs["run"])
            trial.set_user_attr("twin_of", t.number)
            return t
    return None


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


# Optuna internals tune relies on (everything else is Optuna's public API): the heartbeat
# (recorded for trials tune runs itself, outside Study.optimize) needs the study's storage and a
# trial's storage id. tests/test_tune.py fails on an Optuna that moves them.
OPTUNA_PRIVATE = ("optuna.storages._heartbeat.BaseHeartbeat",
                  "optuna.storages._heartbeat.is_heartbeat_enabled", "Study._storage",
                  "Trial._trial_id")


def missing_private_optuna() -> list[str]:
    """The names of :data:`OPTUNA_PRIVATE` this Optuna lacks (checked on an in-memory study)."""
    import importlib

    import optuna

    missing = []
    for name in OPTUNA_PRIVATE[:2]:
        module, _, attr = name.rpartition(".")
        try:
            if not hasattr(importlib.import_module(module), attr):
                missing.append(name)
        except ImportError:
            missing.append(name)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
    try:
        study = optuna.create_study()
        trial = study.ask()
        for name, obj in (("Study._storage", study), ("Trial._trial_id", trial)):
            if not hasattr(obj, name.partition(".")[2]):
                missing.append(name)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return missing


class Heartbeat:
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


def counted_trials(study) -> int:
    """Trials that count towards ``trials``: finished (complete or pruned) and running."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


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


def best_run(study: optuna.Study) -> Path:
    """The run folder of the study's best completed trial (recorded in the trial's
    ``user_attrs["run"]`` by :func:`embcache.tune`), to score or load with
    :func:`embcache.load_run`.

    Raises:
        EmbcacheError: no trial has completed, or the best one was not run by embcache tune.
    """
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise EmbcacheError(f"Study {study.study_name} has no completed trial yet; run "
                            "embcache tune on it first")
    best = study.best_trial
    if "run" not in best.user_attrs:
        raise EmbcacheError(f"Trial {best.number} of study {study.study_name} records no run "
                            "folder (it was not run by this version of embcache tune); its "
                            "run is trial-NNNN under the tune's out folder")
    return Path(best.user_attrs["run"])


def plot_study(study, path: Path) -> None:
    """Optuna's own plots (``optuna.visualization.matplotlib``): the optimisation history in
    ``path`` and, where Optuna can compute them, the parameter importances (PED-ANOVA: NumPy
    only, where fANOVA needs scikit-learn) beside it, in ``<name>-importances.png``."""
    # Optuna draws with pyplot; the backend stays the caller's (each figure is closed here).
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = plots.plot_optimization_history(study, target_name="validation accuracy")
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        try:  # over the parameters every completed trial has
            ax = plots.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                              target_name="validation accuracy")
        except Exception:  # noqa: BLE001 - too few trials, or a conditional space: no picture
            return
        ax.figure.savefig(path.with_name(f"{path.stem}-importances.png"), dpi=100,
                          bbox_inches="tight")
        plt.close(ax.figure)
