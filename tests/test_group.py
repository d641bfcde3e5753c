"""Group training: many models from one stream, grids, failure isolation, `embcache runs`, the
in-memory split cache and the merged batch tails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embcache.cache.dataset import Batching
from embcache.cache.errors import EmbcacheError, ModelError
from embcache.cache.held import InMemorySplit, memory_bytes
from embcache.cache.held_dataset import memory_dataset
from embcache.cache.store import open_store
from embcache.cache.stream import Bucketer, plan_split
from embcache.jobs.config import TrainConfig
from embcache.jobs.grid import expand_runs, parse_grid
from embcache.jobs.train import train, train_group
from tests.helpers import small_store, stream

EMBCACHE = str(Path(sys.executable).with_name("embcache"))
CFG = TrainConfig(epochs=2, batch_size=8, patience=5, seed=3)


@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    return small_store(tmp_path_factory.mktemp("group"), vectors_file[0], docs_per_label=40,
                       val_frac=0.2, test_frac=0.2)


def _weights(run: Path):
    import keras

    from embcache.jobs.runs import load_run

    return [np.asarray(w) for w in load_run(run).model.get_weights()] if keras else None


def _card(run: Path) -> dict:
    return json.loads((run / "model.json").read_text())


@pytest.mark.slow
def test_group_member_equals_the_model_trained_alone(store, tmp_path):
    params = {"kim_cnn": {"filters": 4, "widths": [2, 3]}, "fasttext": {"hidden": 8}}
    group = train_group(str(store), ["kim_cnn", "fasttext"], str(tmp_path / "g"), config=CFG,
                        progress=False)
    assert [r.out for r in group.runs] == [str(tmp_path / "g" / "kim_cnn"),
                                          str(tmp_path / "g" / "fasttext")]
    assert not group.failed
    for name in ("kim_cnn", "fasttext"):
        alone = train(str(store), name, str(tmp_path / f"alone-{name}"), config=CFG,
                      progress=False)
        a, g = _weights(Path(alone.out)), _weights(tmp_path / "g" / name)
        assert len(a) == len(g) and len(a) > 0
        for x, y in zip(a, g):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        ca, cg = _card(Path(alone.out)), _card(tmp_path / "g" / name)
        assert cg["group"] == {"runs": ["kim_cnn", "fasttext"], "shared_stream": True}
        assert "group" not in ca
        for key in ("hyperparameters", "store", "model_source"):
            assert ca[key] == cg[key]
        assert ca["metrics"]["val_accuracy"] == pytest.approx(cg["metrics"]["val_accuracy"],
                                                              abs=1e-6)
        assert ca["training"]["best_epoch"] == cg["training"]["best_epoch"]
    del params


def test_grid_expands_to_every_combination(store):
    grid = parse_grid(["hidden=[0,8]", "dropout=[0.0,0.5]", "learning_rate=[0.001,0.01]"])
    runs = expand_runs(["fasttext"], grid=grid)
    assert len(runs) == 8
    assert runs[0].name == "fasttext-hidden=0-dropout=0.0-learning_rate=0.001"
    assert {r.learning_rate for r in runs} == {0.001, 0.01}
    assert all("learning_rate" not in r.hparams for r in runs)
    lists = expand_runs(["kim_cnn"], grid=parse_grid(["widths=[[3,4],[3,4,5]]"]))
    assert [r.hparams["widths"] for r in lists] == [[3, 4], [3, 4, 5]]
    assert [r.name for r in lists] == ["kim_cnn-widths=3_4", "kim_cnn-widths=3_4_5"]
    assert len(expand_runs(["fasttext", "kim_cnn"], grid=parse_grid(["dropout=[0.1,0.2]"]))) == 4


@pytest.mark.parametrize("bad", ["hidden=8", "hidden=[]", "hidden", "=[1]", "hidden=[1"])
def test_grid_values_must_be_a_json_list(bad):
    with pytest.raises(EmbcacheError, match="Invalid value for `grid`"):
        parse_grid([bad])


def test_grid_key_unknown_to_a_model_is_refused():
    with pytest.raises(ModelError, match="has no hyperparameter 'hidden'"):
        expand_runs(["fasttext", "kim_cnn"], grid=parse_grid(["hidden=[4,8]"]))
    with pytest.raises(EmbcacheError, match="both be named 'fasttext'"):
        expand_runs(["fasttext", "fasttext"])


NAN_MODEL = '''
import keras
from embcache.models import inputs

def build_nan(*, dim, num_classes, max_len=0, padding="pre"):
    ins = inputs(dim)
    x = keras.layers.GlobalAveragePooling1D()(ins["embedded"])
    x = keras.layers.Dense(num_classes)(x)
    x = keras.layers.Rescaling(float("nan"))(x)  # every loss is NaN from the first step
    return keras.Model(ins, keras.layers.Softmax()(x))
'''


@pytest.mark.slow
def test_one_failing_model_stops_alone(store, tmp_path):
    (tmp_path / "nan_models.py").write_text(NAN_MODEL)
    out = tmp_path / "runs"
    r = subprocess.run([EMBCACHE, "train", "--store", str(store), "--model",
                        "fasttext,nan_models:build_nan", "--epochs", "2", "--batch-size", "8",
                        "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1
    assert "Error: build_nan failed: loss became nan in epoch 1" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith("Trained fasttext for 2 epochs")
    assert (out / "fasttext" / "model.json").is_file() and (out / "fasttext" / "model.keras").is_file()
    assert not (out / "build_nan").exists()
    assert not list(out.glob(".*.partial"))  # no half-built run left
    # The surviving run is whole: score reads and verifies it.
    from embcache.jobs.runs import read_card

    read_card(out / "fasttext")


@pytest.mark.slow
def test_lone_model_failure_raises_and_leaves_no_folder(store, tmp_path, monkeypatch):
    (tmp_path / "nan_models2.py").write_text(NAN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EmbcacheError, match="Training nan_models2:build_nan failed: loss became nan"):
        train(str(store), "nan_models2:build_nan", str(tmp_path / "r"), config=CFG, progress=False)
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.partial"))


FIXED_LENGTH_MODEL = '''
import keras
from embcache.models import inputs

def build_fixed(*, dim, num_classes, max_len=0, padding="pre"):
    ins = inputs(dim)
    # Builds for (None, None, dim), but runs only on batches padded to max_len: length buckets
    # give shorter ones, so the first batch fails.
    x = keras.layers.Reshape((max_len * dim,))(ins["embedded"])
    return keras.Model(ins, keras.layers.Dense(num_classes, activation="softmax")(x))
'''


@pytest.mark.slow
def test_a_model_that_cannot_run_on_the_batches_stops_alone(store, tmp_path, monkeypatch):
    """The README's promise: named in one line, no run folder, the others published whole."""
    from tests.helpers import cli

    (tmp_path / "fixed_models.py").write_text(FIXED_LENGTH_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "runs"
    code, text = cli("train", "--store", store, "--model", "fasttext,fixed_models:build_fixed",
                     "--epochs", "1", "--batch-size", "8", "--out", out, "-q")
    assert code == 1
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "Error: build_fixed failed: cannot run on a batch of the store: "), text
    assert "Traceback" not in text
    assert (out / "fasttext" / "model.json").is_file() and not (out / "build_fixed").exists()
    assert not list(out.glob(".*.partial"))


@pytest.mark.slow
def test_runs_lists_the_cards_and_tensorboard_logs_exist(store, tmp_path):
    out = tmp_path / "runs"
    r = subprocess.run([EMBCACHE, "train", "--store", str(store), "--model", "fasttext",
                        "--grid", "hidden=[4,16]", "--epochs", "2", "--batch-size", "8", "-q",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("fasttext-hidden=4", "fasttext-hidden=16"):
        events = list((out / name / "logs").rglob("events.out.tfevents.*"))
        assert events, f"no TensorBoard event file in {out / name}"
    r = subprocess.run([EMBCACHE, "runs", str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)["runs"]
    assert {x["run"] for x in listed} == {"fasttext-hidden=4", "fasttext-hidden=16"}
    vals = [x["val_accuracy"] for x in listed]
    assert vals == sorted(vals, reverse=True)
    for x in listed:
        card = _card(out / x["run"])
        assert x["val_accuracy"] == card["metrics"]["val_accuracy"]
        assert x["test_macro_f1"] == card["metrics"]["test_macro_f1"]
        assert x["parameter_count"] == card["parameter_count"] > 0
        assert x["parameters"] == f"hidden={card['hyperparameters']['hidden']}"
    assert (out / "runs.png").stat().st_size > 0
    text = subprocess.run([EMBCACHE, "runs", str(out), "--plot", "none"], capture_output=True,
                          text=True)
    assert text.returncode == 0 and "fasttext-hidden=16" in text.stdout and "val acc" in text.stdout


def test_runs_of_a_missing_folder_is_one_line(tmp_path):
    r = subprocess.run([EMBCACHE, "runs", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [f"Error: Runs folder not found: {tmp_path / 'nope'}; "
                                             "train runs into it first (--out)"]


@pytest.mark.parametrize("where", ["variable", "numpy"])
def test_cached_split_gives_the_streamed_batches(store, where):
    """Held in a variable's buffer (gathered in the graph) or in NumPy (gathered in Python):
    the streamed batches, bit for bit."""
    from embcache.cache.held_dataset import hold_split

    s = open_store(str(store))
    plan = plan_split(s, "train")
    rows = (hold_split if where == "variable" else InMemorySplit)(s, plan, "train")
    assert (rows.buffer is not None) == (where == "variable")
    assert rows.nbytes == (int(rows.lengths.sum()) + 1) * s.dim * 2 == memory_bytes(s, plan)
    for shuffle in (True, False):
        args = dict(split="train", batch_size=5, shuffle=shuffle, seed=4, shuffle_docs=12,
                    plan=plan)
        streamed = stream(s, **args)
        cached = memory_dataset(rows, Batching(batch_size=5, shuffle=shuffle, seed=4,
                                               shuffle_docs=12))
        for _ in range(2):  # two epochs: each reshuffled the same way
            a, b = list(streamed), list(cached)
            assert len(a) == len(b) == plan.num_batches(5, merge_tail=shuffle)
            for (fa, ya), (fb, yb) in zip(a, b):
                np.testing.assert_array_equal(fa["embedded"].numpy(), fb["embedded"].numpy())
                np.testing.assert_array_equal(fa["lengths"].numpy(), fb["lengths"].numpy())
                np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_merged_tail_leaves_one_short_batch():
    b = Bucketer(np.array([8, 16, 32]), batch_size=4, padding="pre", dim=1, dtype=np.float32)
    docs = [np.ones((n, 1), np.float32) for n in (3, 20, 9, 30, 5, 12)]
    lengths = np.array([len(d) for d in docs])
    out = list(b.add(np.array(docs, dtype=object), lengths, np.zeros(6, np.int32)))
    assert out == []  # no bucket reached 4 documents
    tail = list(b.flush(merge=True))
    assert [len(t[1]) for t in tail] == [4, 2]
    assert tail[0][1].tolist() == [3, 5, 9, 12] and tail[0][0].shape == (4, 16, 1)
    assert tail[1][1].tolist() == [20, 30] and tail[1][0].shape == (2, 32, 1)


@pytest.mark.slow
def test_memory_budget_zero_streams(store, tmp_path, capsys):
    cfg = TrainConfig(epochs=1, batch_size=8, memory_mb=0)
    train(str(store), "fasttext", str(tmp_path / "r0"), config=cfg, progress=True)
    assert "decoded into memory" not in capsys.readouterr().err
    train(str(store), "fasttext", str(tmp_path / "r1"), config=TrainConfig(epochs=1, batch_size=8),
          progress=True)
    assert "train split decoded into memory" in capsys.readouterr().err


@pytest.mark.slow
def test_training_again_and_again_leaves_no_graphs_behind(store, tmp_path):
    """TensorFlow keeps the gradient function of every traced train step's custom gradient (the
    optimizer's all-reduce) in a process-wide registry, and with it the traced graph; a tune
    study trains group after group in one process, so each group's graphs must go."""
    import gc

    from tensorflow.python.framework import ops
    from tensorflow.python.framework.func_graph import FuncGraph

    def alive() -> tuple[int, int]:
        gc.collect()
        return (sum(k.startswith("CustomGradient") for k in ops._gradient_registry._registry),
                sum(isinstance(o, FuncGraph) for o in gc.get_objects()))

    cfg = TrainConfig(epochs=1, batch_size=8)
    counts = []
    for i in range(3):
        train_group(str(store), ["fasttext", "kim_cnn"], str(tmp_path / f"g{i}"), config=cfg,
                    progress=False)
        counts.append(alive())
    assert counts[2][0] == counts[0][0]  # no custom gradient left registered
    assert counts[2][1] <= counts[0][1]  # nor any graph
