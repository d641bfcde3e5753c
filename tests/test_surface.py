"""The Python surface a notebook expects, end to end with public names only, and bad calls that
each get one line naming the Python argument."""

from __future__ import annotations

import csv
import random
import warnings
from pathlib import Path

import numpy as np
import pytest

import embcache
from tests.helpers import WORDS


def build_mean(*, dim, num_classes, padding="pre", hidden=8):
    import keras

    x = embcache.models.inputs(dim)
    h = keras.layers.Dense(hidden, activation="relu")(
        keras.layers.GlobalAveragePooling1D()(x["embedded"]))
    return keras.Model(x, keras.layers.Dense(num_classes, activation="softmax")(h))


@pytest.fixture(scope="module")
def csv_store(tmp_path_factory, vectors_file):
    """A CSV without header (label, title, body), embedded with integer column indices."""
    root = tmp_path_factory.mktemp("surface")
    rng = random.Random(0)
    path = root / "news.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        for i in range(240):
            label = i % 3
            words = [WORDS[(label * 5 + rng.randint(0, 4)) % len(WORDS)] for _ in range(12)]
            w.writerow([f"c{label}", " ".join(words[:4]), " ".join(words[4:])])
    spec = embcache.CorpusSpec(str(path), text_columns=[1, 2], label_column=0, header=False)
    store = root / "s.zarr"
    embcache.embed_corpus(spec, str(vectors_file[0]), str(store), progress=False, workers=1)
    return store


@pytest.mark.slow
def test_the_notebook_script(csv_store, tmp_path, vectors_file):
    import keras

    store = str(csv_store)
    runs = tmp_path / "runs"
    result = embcache.train(store, ["fasttext", "cnn", build_mean], str(runs),
                            config={"epochs": 1}, progress=False)
    assert isinstance(result, embcache.GroupResult)
    assert len(result.runs) == 3 and not result.failed
    assert {r.model for r in result.runs} >= {"fasttext", "cnn"}
    table = result.to_frame()
    assert list(table["run"]) == [Path(r.out).name for r in result.runs]
    assert table["val_accuracy"].between(0, 1).all()
    # the result's type follows what was asked: a list, even of one, is a group
    one = embcache.train(store, ["fasttext"], str(tmp_path / "one"), config={"epochs": 2},
                         progress=False)
    assert isinstance(one, embcache.GroupResult) and len(one.runs) == 1
    history = one.runs[0].history
    assert len(history) == one.runs[0].epochs and "val_accuracy" in history.columns
    # your own model, fitted on dataset(), predicted in store order with ids
    keras.utils.set_random_seed(0)
    model = build_mean(dim=embcache.open_store(store).dim, num_classes=3)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    filters = list(warnings.filters)
    ds = embcache.dataset(store, "train")
    assert warnings.filters == filters  # making a dataset sets no process-wide filter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The dataset shuffles itself: shuffle=False, as the docs say, and Keras has no
        # "`shuffle=True` ... will be ignored" to say.
        model.fit(ds, epochs=3, verbose=0, shuffle=False)
    assert not [str(w.message) for w in caught if "shuffle" in str(w.message)]
    frame = embcache.predict(model, store, "test")
    s = embcache.open_store(store)
    assert len(frame) == s.meta.totals.split_counts["test"]
    assert list(frame.columns[:3]) == ["doc_id", "true_label", "predicted_label"]
    accuracy = float((frame["true_label"] == frame["predicted_label"]).mean())
    _, evaluated = model.evaluate(embcache.dataset(store, "test"), verbose=0)
    assert accuracy == pytest.approx(evaluated, abs=1e-6)
    # store order: the ids are the test split's, in the order the store holds them
    ids = [str(x) for x, sp in zip(s.read("doc_ids"), s.read("split")) if sp == 2]
    assert [str(x) for x in frame["doc_id"]] == ids
    # saved as a run, scored with the three others in one Scorer, true labels included
    mine = embcache.save_run(model, store, runs / "mine")
    scorer = embcache.Scorer([runs / "fasttext", runs / "cnn", runs / "build_mean", mine],
                             vectors=str(vectors_file[0]))
    scored = scorer.classify(store, split="test")
    assert list(scored["doc_id"]) == list(frame["doc_id"])
    assert list(scored["true_label"]) == list(frame["true_label"])
    assert list(scored["mine_label"]) == list(frame["predicted_label"])
    np.testing.assert_allclose(scored["mine_prob"], frame["probability"], atol=1e-5)
    # a Series keeps its index as the doc ids
    import pandas as pd

    texts = pd.Series(["cat sat on mat", "dog ran far"], index=[10, 20])
    assert list(scorer.classify(texts)["doc_id"]) == [10, 20]


def _run(store: str, tmp) -> str:
    embcache.train(store, "fasttext", str(tmp / "ft"), config={"epochs": 1}, progress=False)
    return str(tmp / "ft")


@pytest.mark.slow
@pytest.mark.parametrize("call, message", [
    (lambda s, t: embcache.train(s, "fasttext", str(t / "r"), config={"epochs": 0}),
     r"Invalid value for `epochs`. Expected a positive integer. Received: epochs=0"),
    (lambda s, t: embcache.train(s, "fasttext", str(t / "r"), config={"epoch": 1}),
     r"Invalid value for `config`: unknown field 'epoch'"),
    (lambda s, t: embcache.train(s, 42, str(t / "r")), r"Invalid value for `model`"),
    (lambda s, t: embcache.Scorer([]), r"Invalid value for `runs`"),
    (lambda s, t: embcache.Scorer([_run(s, t)]).classify("one text"),
     r"Invalid value for `data`: 'one text' is not a file, folder or store; to classify one "
     r"text, pass a list"),
    (lambda s, t: embcache.CorpusSpec("x.csv", text_columns=[-1]),
     r"Invalid value for `text_columns`: a column index is 0 or more"),
    (lambda s, t: embcache.save_run(object(), s, str(t / "r"), module=3),
     r"Invalid value for `module`"),
])
def test_bad_python_calls_are_one_line_naming_the_argument(csv_store, tmp_path, call, message):
    with pytest.raises(embcache.EmbcacheError, match=message) as info:
        call(str(csv_store), tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_python_is_quiet_by_default(csv_store, tmp_path):
    """Importing prints nothing even with warnings as errors; a train with default arguments
    prints nothing at all, TensorFlow's start-up logs included."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-W", "error", "-c", "import embcache, embcache.models"],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    script = tmp_path / "quiet.py"
    script.write_text("import embcache\nif __name__ == '__main__':\n"
                      f"    embcache.train({str(csv_store)!r}, 'fasttext', {str(tmp_path / 'r')!r},"
                      " config={'epochs': 1})\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r.stderr[-2000:]
    assert (tmp_path / "r" / "model.json").exists()


@pytest.mark.slow
def test_a_script_without_the_main_guard_is_told_what_to_add(tmp_path, vectors_file):
    """dataset() streams a split of 2,048 documents or more from a spawned process."""
    import subprocess
    import sys

    corpus = tmp_path / "big.csv"
    corpus.write_text("".join(f"c{i % 2},{WORDS[i % len(WORDS)]} {WORDS[(i * 3) % len(WORDS)]}\n"
                              for i in range(3000)))
    store = tmp_path / "big.zarr"
    embcache.embed_corpus(embcache.CorpusSpec(str(corpus), text_columns=[1], label_column=0,
                                              header=False), str(vectors_file[0]), str(store),
                          workers=1)
    script = tmp_path / "noguard.py"
    script.write_text("import embcache\n"
                      f"for batch in embcache.dataset({str(store)!r}, 'train'):\n"
                      "    pass\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert 'put the script\'s work under `if __name__ == "__main__":`' in r.stderr
    assert "bootstrapping phase" not in r.stderr  # the children left silently


@pytest.mark.slow
def test_corpus_options_with_a_store_input_are_refused(csv_store, tmp_path):
    from tests.helpers import cli, one_error_line

    run = _run(str(csv_store), tmp_path)
    code, out = cli("score", "--models", run, "--input", csv_store, "--out", tmp_path / "p.csv",
                    "--label-column", "0", "-q")
    assert code == 1 and one_error_line(out) == (
        f"Error: {csv_store} is a store; corpus options apply to raw input only (given: "
        "--label-column): leave them out")
    with pytest.raises(embcache.EmbcacheError, match=r"\(given: `label_column=`\)"):
        embcache.score([run], str(csv_store), str(tmp_path / "p.csv"),
                       corpus=embcache.CorpusSpec(str(csv_store), label_column="0"))
    assert not (tmp_path / "p.csv").exists()
