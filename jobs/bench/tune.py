"""``make bench-tune``: one Optuna study, three ways, in one run (see :mod:`embcache.jobs.tune`).

The same study each way: ``--trials`` trials (default 32) of TPE (seeded) with the median
pruner, over a ``kim_cnn`` + ``fasttext`` space (the model, ``filters`` for kim_cnn,
``dropout``, ``learning_rate``), ``--epochs`` epochs at most per trial, early stopping as
``train`` does it, on one store (20 Newsgroups, GloVe 50d):

- **(a) tune-8**: ``embcache tune --parallel 8``: trials train in groups of 8 from one stream;
- **(b) optuna-keras**: the way Optuna documents it, as a user of today's API writes it: one
  process, ``study.optimize`` with an objective that builds the model and fits it on
  ``embcache.dataset(store, "train")`` / ``"val"`` (made in the objective, as Optuna's Keras
  example loads its data there) with optuna-integration's ``KerasPruningCallback``;
- **(c) tune-1**: ``embcache tune --parallel 1``;
- **(d) tune-8-refill-group** (``--ways a,b,c,d``): (a) with freed places refilled only when the
  whole group has finished (``refill="group"``), against (a)'s refill at the next epoch.

``--precision`` runs every way at one precision, so the ratios stay fair: ``float32`` (the
default), or ``bfloat16``: the ``tune`` ways with ``precision="bfloat16"``, way (b) as a Keras
user does it, ``keras.mixed_precision.set_global_policy("mixed_bfloat16")`` before its study.

Each way runs in a fresh process (``run_measured``: wall time, peak RSS of its process tree); the
process records its own RSS after trials 8, 16, 24 and 32. Printed: a table of wall time, trials
completed and pruned, best validation accuracy, peak RSS and the ratios against (b).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WAYS = {"a": "tune-8", "b": "optuna-keras", "c": "tune-1", "d": "tune-8-refill-group"}
SPACE = ["filters=int:32:256:log", "dropout=float:0.0:0.5", "learning_rate=float:1e-4:1e-2:log"]
MODELS = ["kim_cnn", "fasttext"]
MARKS = (8, 16, 24, 32)


def say(message: str) -> None:
    click.echo(f"[bench-tune {time.strftime('%H:%M:%S')}] {message}", err=True)


class _Recorder:
    """An Optuna-style callback: RSS after trials 8, 16, 24, 32 and a line per trial."""

    def __init__(self, way: str):
        import psutil

        self.way, self.ps, self.n, self.rss = way, psutil.Process(), 0, {}

    def __call__(self, study, trial) -> None:
        self.n += 1
        if self.n in MARKS or self.n % 8 == 0:
            procs = [self.ps, *self.ps.children(recursive=True)]
            self.rss[self.n] = round(sum(p.memory_info().rss for p in procs) / 1e6)
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        say(f"  {self.way}: trial {trial.number} {trial.state.name.lower()} {value} "
            f"({self.n} ended)")


def _way_b(store_url: str, trials: int, epochs: int, patience: int, seed: int, batch: int,
           rec: _Recorder, out: Path, precision: str):
    """Optuna's documented Keras way with today's public API."""
    import keras
    import optuna
    from optuna_integration import KerasPruningCallback

    import embcache
    from embcache.models import registry

    if precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    store = embcache.open_store(store_url)
    n_classes = len(store.label_names)

    def objective(trial):
        keras.backend.clear_session()
        name = trial.suggest_categorical("model", MODELS)
        hp = {}
        if name == "kim_cnn":
            hp["filters"] = trial.suggest_int("filters", 32, 256, log=True)
        hp["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        keras.utils.set_random_seed(seed + trial.number)
        model = registry.build(name, max_len=store.max_len, dim=store.dim,
                               num_classes=n_classes, padding=store.padding, **hp)
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        train_ds = embcache.dataset(store, "train", batch_size=batch, seed=seed)
        val_ds = embcache.dataset(store, "val", batch_size=batch)
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0,
                            callbacks=[
                                keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                              patience=patience,
                                                              restore_best_weights=True),
                                KerasPruningCallback(trial, "val_accuracy")])
        return max(history.history["val_accuracy"])

    study = optuna.create_study(
        study_name="b", storage=f"sqlite:///{out / 'study.db'}", direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    study.optimize(objective, n_trials=trials, callbacks=[rec])
    return study


def child(way: str, store_url: str, trials: int, epochs: int, patience: int, seed: int,
          batch: int, out: Path, precision: str) -> None:
    import optuna

    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    rec = _Recorder(WAYS[way])
    t0 = time.perf_counter()
    if way == "b":
        study = _way_b(store_url, trials, epochs, patience, seed, batch, rec, out, precision)
    else:
        from embcache.jobs.tune import tune

        study = tune(store_url, MODELS, SPACE, trials=trials, parallel=1 if way == "c" else 8,
                     refill="group" if way == "d" else "epoch", out=out, sampler="tpe",
                     pruner="median",
                     config={"epochs": epochs, "patience": patience, "seed": seed,
                             "batch_size": batch, "precision": precision},
                     callbacks=[rec])
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    print(json.dumps({"seconds": time.perf_counter() - t0, "completed": states.count("COMPLETE"),
                      "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                      "best": best.value, "best_params": best.params, "rss": rec.rss,
                      # epochs trained over all trials: the work each way did for its study
                      "trial_epochs": sum(len(t.intermediate_values) for t in study.trials)}))


@click.command()
@click.option("--store", "store_url", required=True)
@click.option("--trials", default=32, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--patience", default=3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", "batch", default=32, show_default=True)
@click.option("--ways", default="a,b,c", show_default=True, help="Which of a, b, c, d, in order.")
@click.option("--out", default="bench-out/tune", show_default=True)
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32",
              show_default=True, help="Every way at this precision.")
@click.option("--way", default=None, hidden=True)  # a child process: run one way
def main(store_url, trials, epochs, patience, seed, batch, ways, out, precision, way):
    out = Path(out)
    if way:
        child(way, store_url, trials, epochs, patience, seed, batch, out / WAYS[way], precision)
        return
    import shutil

    from jobs.bench.common import run_measured, table

    results = {}
    for w in ways.split(","):
        shutil.rmtree(out / WAYS[w], ignore_errors=True)
        say(f"({w}) {WAYS[w]}: {trials} trials, at most {epochs} epochs each, {precision} ...")
        wall, peak, stdout = run_measured(
            [sys.executable, "-m", "jobs.bench.tune", "--store", store_url, "--trials",
             str(trials), "--epochs", str(epochs), "--patience", str(patience), "--seed",
             str(seed), "--batch-size", str(batch), "--out", str(out), "--precision",
             precision, "--way", w],
            echo_stderr=True)
        r = json.loads(stdout.strip().splitlines()[-1])
        r.update(wall=wall, peak=peak)
        results[w] = r
        say(f"({w}) {WAYS[w]}: {wall:.0f} s, {r['completed']} completed, {r['pruned']} pruned, "
            f"best {r['best']:.4f}, {r['trial_epochs']} trial-epochs, peak RSS {peak:,.0f} MB, "
            f"RSS {r['rss']}")
    base = results.get("b")
    rows = []
    for w, r in results.items():
        rss = " / ".join(f"{r['rss'].get(str(k), r['rss'].get(k, '-'))}" for k in MARKS)
        rows.append([f"({w}) {WAYS[w]}", f"{r['wall']:.0f}", r["completed"], r["pruned"],
                     f"{r['best']:.4f}", r["trial_epochs"],
                     f"{r['wall'] / r['trial_epochs']:.1f}" if r["trial_epochs"] else "-",
                     f"{r['peak']:,.0f}", rss,
                     f"**{base['wall'] / r['wall']:.2f}x**" if base else "-",
                     f"{r['best'] - base['best']:+.4f}" if base else "-"])
    click.echo(table(["way", "wall s", "completed", "pruned", "best val acc", "trial-epochs",
                      "s per trial-epoch", "peak RSS MB",
                      "RSS MB after trials 8/16/24/32", "speed vs (b)", "best vs (b)"], rows))
    (out / f"results-{ways.replace(',', '')}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
