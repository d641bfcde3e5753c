"""embcache tune: the search space, trials trained in groups and pruned alone, the study in a
database shared by processes, resume after kill -9, a study's store, the best run scoring."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import embcache
from embcache.cache.errors import EmbcacheError, ModelError
from embcache.jobs.config import TrainConfig
from tests.helpers import cli, one_error_line, paused, small_store, stream, write_vectors

optuna = pytest.importorskip("optuna")

from embcache.jobs.tune import (  # noqa: E402 - after the skip above
    Param,
    check_space,
    load_space_file,
    parse_param,
    parse_space,
    tune,
)

EMBCACHE = str(Path(sys.executable).with_name("embcache"))
CFG = {"epochs": 2, "batch_size": 8, "patience": 5, "seed": 1}
SPACE = ["hidden=cat:0,8", "dropout=float:0.0:0.5", "learning_rate=float:1e-3:1e-2:log"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    return small_store(tmp_path_factory.mktemp("tune"), vectors_file[0], docs_per_label=30,
                       val_frac=0.2, test_frac=0.2)


def _states(db: Path, name: str) -> list[str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


# -- the space ----------------------------------------------------------------------------------
def test_space_strings_and_file(tmp_path):
    assert parse_param("f", "int:32:256:log", "x") == Param("int", 32, 256, True)
    assert parse_param("d", "float:0:0.5", "x") == Param("float", 0.0, 0.5, False)
    assert parse_param("w", "cat:[3,4],[3,4,5]", "x").choices == ([3, 4], [3, 4, 5])
    assert parse_param("a", "cat:relu,gelu", "x").choices == ("relu", "gelu")
    assert parse_param("h", [0, 64], "x").choices == (0, 64)
    space = parse_space(["filters=int:2:8", "dropout=float:0:0.5"])
    assert list(space.common) == ["filters", "dropout"]
    f = tmp_path / "space.yaml"
    f.write_text("learning_rate: float:1e-4:1e-2:log\nmodels:\n  kim_cnn:\n    filters: "
                 "{type: int, low: 2, high: 8}\n    widths: [[2], [2, 3]]\n  fasttext:\n"
                 "    hidden: cat:0,8\n")
    s = load_space_file(f)
    assert s.common["learning_rate"] == Param("float", 1e-4, 1e-2, True)
    assert s.per_model["kim_cnn"]["widths"].choices == ([2], [2, 3])
    from embcache.models import registry

    check_space(s, [registry.resolve("kim_cnn"), registry.resolve("fasttext")])


@pytest.mark.parametrize("spec, says", [
    ("int:8:2", "LOW (8) must be below HIGH (2)"),
    ("float:0:1:log", "a log range must start above 0"),
    ("int:a:9", "LOW and HIGH must be integers"),
    ("normal:0:1", "unknown type 'normal'"),
    ("cat:", "no choices"),
    ("float:0:1:lg", "give LOW and HIGH, then optionally log"),
])
def test_bad_ranges_are_one_line(spec, says):
    with pytest.raises(EmbcacheError, match=re.escape(f"p={spec!r}: {says}")):
        parse_param("p", spec, "`--space`")


def test_unknown_and_shared_parameters(tmp_path):
    from embcache.models import registry

    both = [registry.resolve("kim_cnn"), registry.resolve("fasttext")]
    with pytest.raises(ModelError, match="Unknown parameter 'filtrs' in the space: no model "
                                         "takes it .kim_cnn takes dropout, filters"):
        check_space(parse_space(["filtrs=int:2:8"]), both)
    f = tmp_path / "s.yaml"
    f.write_text("models:\n  fasttext:\n    filters: int:2:8\n")
    with pytest.raises(ModelError, match="Unknown parameter 'filters' for model 'fasttext'"):
        check_space(load_space_file(f), both)
    with pytest.raises(EmbcacheError, match="'batch_size' is shared by every trial"):
        check_space(parse_space(["batch_size=int:8:64"]), both)
    f.write_text("dropout: [0.1\n")
    with pytest.raises(EmbcacheError, match=r"Space file .*s.yaml line 2: not valid YAML"):
        load_space_file(f)


def test_cli_errors_are_one_line(store, tmp_path):
    out = str(tmp_path / "t")
    for args, says in [
        (["--space", "filtrs=int:2:8"], "Unknown parameter 'filtrs'"),
        (["--space", "dropout=float:0.5:0.1"], "LOW (0.5) must be below HIGH (0.1)"),
        (["--space", "dropout=float:0:0.5", "--study", "postgresql://u:secret@127.0.0.1:1/x"],
         "cannot open the study storage postgresql://u:***@127.0.0.1:1/x"),
        (["--space", "dropout=float:0:0.5", "--sampler", "grid"], "grid needs a finite space"),
    ]:
        code, output = cli("tune", "--store", store, "--model", "kim_cnn,fasttext", "--out", out,
                           *args)
        line = one_error_line(output)
        assert code == 1 and says in line, line
        assert "secret" not in output


# -- pruning inside a group ---------------------------------------------------------------------
def _members(store_obj, names: list[str], tmp_path: Path):
    import keras

    from embcache.jobs.group import Member
    from embcache.models import registry

    out = []
    for name in names:
        source = registry.resolve("fasttext")
        keras.utils.set_random_seed(7)
        m = Member(name=name, source=source, hparams={"hidden": 8}, learning_rate=3e-3,
                   final=tmp_path / name, stage=tmp_path / f".{name}")
        m.model = source.make(max_len=store_obj.max_len, dim=store_obj.dim,
                              num_classes=len(store_obj.label_names), hidden=8,
                              dropout=0.0 if name != "b" else 0.3)
        m.model.compile(optimizer=keras.optimizers.Adam(3e-3),
                        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        m.timer, m.callbacks = [], [keras.callbacks.History()]
        out.append(m)
    return out


@pytest.mark.slow
def test_a_pruned_member_leaves_the_others_bit_identical(store, tmp_path):
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split
    from embcache.jobs.group import GroupTrainer

    s = open_store(str(store))
    plans = {k: plan_split(s, k) for k in ("train", "val")}
    steps = {k: plans[k].num_batches(8, True, merge_tail=k == "train") for k in plans}

    def run(names: list[str], drop_after_first: str | None):
        train_ds = stream(s, "train", shuffle=True, seed=5, batch_size=8, plan=plans["train"])
        val_ds = stream(s, "val", batch_size=8, plan=plans["val"])
        members = _members(s, names, tmp_path)
        trainer = GroupTrainer(members, steps_per_execution=4, progress=False, open_group=True)
        trainer.prepare(next(iter(val_ds)))
        for epoch in range(3):
            ran = trainer.run_epoch(train_ds, val_ds, epochs=3, train_steps=steps["train"],
                                    val_steps=steps["val"])
            assert all(m.epoch == epoch + 1 for m, _ in ran)
            if epoch == 0 and drop_after_first:
                trainer.drop(next(m for m in members if m.name == drop_after_first))
        return {m.name: [np.asarray(w) for w in m.model.get_weights()] for m in members
                if m.name != drop_after_first}

    pruned = run(["a", "b", "c"], "b")
    alone = run(["a", "c"], None)
    for name in ("a", "c"):
        assert len(pruned[name]) == len(alone[name]) > 0
        for x, y in zip(pruned[name], alone[name]):
            np.testing.assert_array_equal(x, y)


# -- the study ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_tune_runs_trials_in_groups_and_the_best_run_scores(store, tmp_path):
    from embcache.jobs.compare import list_runs
    from embcache.jobs.score import score

    ended = []
    def optuna_filters():
        return [f for f in warnings.filters if f[2] is optuna.exceptions.ExperimentalWarning
                or "Heartbeat" in str(f[1] and f[1].pattern)]

    verbosity, filters = optuna.logging.get_verbosity(), optuna_filters()
    both = ["filters=int:2:6", "hidden=cat:0,8", "learning_rate=float:1e-3:1e-2:log",
            "widths=cat:[2],[2,3]"]
    study = tune(str(store), "kim_cnn,fasttext", both, trials=6, parallel=3, out=tmp_path / "t", config=CFG,
                 callbacks=[lambda st, t: ended.append(t.number)])
    assert isinstance(study, optuna.Study)
    # the library leaves Optuna's log level and the warning filters as they were
    assert optuna.logging.get_verbosity() == verbosity and optuna_filters() == filters
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 6 and sorted(ended) == list(range(6))
    first_end = min(t.datetime_complete for t in study.trials)
    assert sum(t.datetime_start < first_end for t in study.trials) == 3  # the group was full
    best = study.best_trial
    run = tmp_path / "t" / f"trial-{best.number:04d}"
    assert embcache.best_run(study) == run.resolve()  # recorded in the trial's user_attrs
    card = json.loads((run / "model.json").read_text())
    assert card["tune"]["trial"] == best.number and card["tune"]["params"] == best.params
    assert card["tune"]["study"] == "t" and card["metrics"]["val_accuracy"] == best.value
    assert card["model"] == best.params.get("model")
    listing = list_runs(tmp_path / "t")
    assert {r["run"] for r in listing.runs} == {f"trial-{t.number:04d}" for t in study.trials
                                               if t.state.name == "COMPLETE"}
    assert (tmp_path / "t" / "tune.png").stat().st_size > 0
    summary = score([str(run)], str(store), str(tmp_path / "scores.csv"), split="test")
    assert summary.docs > 0 and (tmp_path / "scores.csv").exists()
    # a third of the trials in one more call: the study goes on where it stood
    tune(str(store), "kim_cnn,fasttext", both, trials=8, parallel=3, out=tmp_path / "t",
         config=CFG)
    assert len([s for s in _states(tmp_path / "t" / "study.db", "t")
                if s in ("COMPLETE", "PRUNED")]) == 8


@pytest.mark.slow
def test_a_study_from_another_store_is_refused(store, tmp_path):
    write_vectors(tmp_path / "v2.txt", seed=9)
    other = small_store(tmp_path / "o", tmp_path / "v2.txt", docs_per_label=12, val_frac=0.25, test_frac=0.25)
    args = ["--model", "fasttext", "--space", "hidden=cat:0,8", "--trials", "1", "--epochs", "1",
            "--batch-size", "8", "--study", f"sqlite:///{tmp_path / 's.db'}", "--study-name",
            "x", "--out", str(tmp_path / "t"), "-q"]
    code, output = cli("tune", "--store", store, *args)
    assert code == 0, output
    code, output = cli("tune", "--store", other, *args)
    line = one_error_line(output)
    assert code == 1 and "Study 'x' in sqlite:///" in line and "was made for another store" in line


@pytest.mark.slow
def test_two_processes_share_one_study(store, tmp_path):
    """Two processes on one journal study complete N trials between them, none counted twice."""
    journal = tmp_path / "study.journal"
    cmd = [EMBCACHE, "tune", "--store", str(store), "--model", "fasttext", "--space", SPACE[0],
           "--space", SPACE[1], "--trials", "6", "--parallel", "2", "--epochs", "2",
           "--batch-size", "8", "--study", f"journal:{journal}", "--study-name", "shared",
           "--out", str(tmp_path / "t"), "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="shared",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    owners = {t.user_attrs["embcache_owner"]["pid"] for t in finished}
    assert owners == {p.pid for p in procs}  # both worked on it
    runs = sorted(p.name for p in (tmp_path / "t").glob("trial-*") if (p / "model.json").exists())
    assert runs == sorted(f"trial-{t.number:04d}" for t in finished
                          if t.state.name == "COMPLETE")


def _tune_paused_after_first_trial(store, tmp_path):
    """A 5-trial study, 2 at a time, stopped once trial 0 has been told: trials 0 and 1 train as
    one group and end in the same epoch, so trial 1 is then still running. Returns
    ``(cmd, db, proc, flag)``."""
    cmd = [EMBCACHE, "tune", "--store", str(store), "--model", "fasttext", "--space", SPACE[0],
           "--space", SPACE[1], "--trials", "5", "--parallel", "2", "--epochs", "2",
           "--batch-size", "8", "--pruner", "none", "--out", str(tmp_path / "t"), "-q"]
    proc, flag = paused(cmd, "tune:trial-ended:1", tmp_path)
    return cmd, tmp_path / "t" / "study.db", proc, flag


@pytest.mark.slow
def test_kill_9_and_rerun_resume_the_study(store, tmp_path):
    cmd, db, proc, flag = _tune_paused_after_first_trial(store, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    flag.unlink()
    before = _states(db, "t")
    assert before == ["COMPLETE", "RUNNING"]
    kept = {p.name for p in (tmp_path / "t").glob("trial-*")}
    r = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "left running by a tune that was stopped" in r.stderr
    after = _states(db, "t")
    assert after[0] == "COMPLETE" and after[1] == "FAIL"  # no finished trial lost
    assert after.count("COMPLETE") == 5 and "RUNNING" not in after
    assert after.count("FAIL") == before.count("RUNNING")
    assert kept <= {p.name for p in (tmp_path / "t").glob("trial-*")}
    assert not list((tmp_path / "t").glob(".*.partial"))


def test_train_config_fields_pass_through(store, tmp_path):
    with pytest.raises(EmbcacheError, match="Invalid value for `parallel`"):
        tune(str(store), "fasttext", SPACE, parallel=0, out=tmp_path / "t", config=CFG)
    with pytest.raises(EmbcacheError, match="Invalid value for `epochs`"):
        tune(str(store), "fasttext", SPACE, out=tmp_path / "t", config={**CFG, "epochs": 0})
    assert TrainConfig.of(CFG).epochs == 2


@pytest.mark.slow
def test_ctrl_c_marks_the_running_trials_failed(store, tmp_path):
    _cmd, db, proc, _flag = _tune_paused_after_first_trial(store, tmp_path)
    os.kill(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert one_error_line(err).startswith("Error: Interrupted: the study keeps every finished")
    states = _states(db, "t")
    assert "RUNNING" not in states and states.count("COMPLETE") == 1
    assert not list((tmp_path / "t").glob(".*.partial"))


def test_the_optuna_internals_tune_relies_on_are_there():
    """Fails loudly on an Optuna upgrade that moves what the heartbeat needs (the rest of tune
    is Optuna's public API)."""
    from embcache.jobs.tune_study import missing_private_optuna

    assert missing_private_optuna() == [], f"Optuna {optuna.__version__} moved them"


def test_a_storage_url_loses_its_password_and_nothing_else():
    from embcache.jobs.tune_study import redact

    assert redact("postgresql+psycopg2://ann:s3cr%40t@db:5432/study") == \
        "postgresql+psycopg2://ann:***@db:5432/study"
    assert redact("sqlite:///runs/tune/study.db") == "sqlite:///runs/tune/study.db"
    assert redact("runs/tune.journal") == "runs/tune.journal"


@pytest.mark.slow
def test_tune_reads_ids_for_any_model_that_takes_them(store, tmp_path):
    """The lexical models (not only ``tfidf``: ``nb``, your own) get ids in a tune study; ``nb``,
    fitted by counting, completes in its one epoch beside trials that train on."""
    study = tune(str(store), "nb,fasttext", ["dropout=float:0.0:0.5"], trials=4, parallel=4,
                 out=tmp_path / "t", config=CFG)
    states = {t.params.get("model"): t.state.name for t in study.trials}
    assert states.get("nb") == "COMPLETE" and all(s == "COMPLETE" for s in states.values()), states


@pytest.mark.slow
def test_a_model_fitted_by_counting_is_not_fitted_again_for_an_other_learning_rate(store, tmp_path):
    """``nb`` ignores the learning rate and the seed: a trial that proposes the same ``nb`` again
    takes the earlier trial's value and run folder instead of fitting it again; another
    ``alpha`` is another model, fitted."""
    study = tune(str(store), "nb", ["learning_rate=float:1e-4:1e-2:log", "alpha=cat:0.01,0.5"],
                 trials=5, parallel=1, sampler="random", out=tmp_path / "t", config=CFG)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert len({t.params["learning_rate"] for t in trials}) == 5
    first: dict = {}
    for t in trials:
        alpha = t.params["alpha"]
        if alpha in first:
            assert t.user_attrs["twin_of"] == first[alpha].number, t.user_attrs
            assert t.value == first[alpha].value and t.user_attrs["run"] == first[alpha].user_attrs["run"]
        else:
            assert "twin_of" not in t.user_attrs
            first[alpha] = t
    assert len(first) == 2, "the random sampler drew one alpha only: pick another seed"
    folders = sorted(p.name for p in (tmp_path / "t").glob("trial-*"))
    assert folders == sorted(f"trial-{t.number:04d}" for t in first.values())
    assert embcache.best_run(study).name in folders
