"""tune's Optuna study: its storage (SQLite, any SQLAlchemy URL or a journal file), sampler and
pruner, the store it was made for, and the trials a killed process left RUNNING (failed at once
for a process of this machine that is gone; through Optuna's heartbeat for one elsewhere)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import warnings
from pathlib import Path

from embcache.cache.errors import EmbcacheError
from embcache.jobs.tune_space import Space

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
    # Optuna warns that heartbeats are meant for Study.optimize; tune records them itself.
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
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
