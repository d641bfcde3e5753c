"""A notebook's session, as one script in a fresh process: embed a CSV with integer ids, tables,
built-in models and one of the user's own, evaluation passes joined by id, predictions joined to
the source DataFrame, per-label probabilities and known tokens, tune, verify, runs, a damaged
chunk met inside ``fit`` -- with nothing at all on stderr, and the process-wide state (matplotlib
backend, warning filters, Optuna's verbosity, PYTHONWARNINGS) as it was before."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import WORDS

SCRIPT = r'''
import os, shutil, sys, warnings

import embcache

embcache.quiet_tensorflow()  # before importing Keras yourself: no start-up logs
import keras
import matplotlib
import numpy as np
import optuna
import pandas as pd


def build_mean(*, dim, num_classes, padding="pre"):
    ins = embcache.models.inputs(dim)
    x = keras.layers.GlobalAveragePooling1D()(ins["embedded"])
    return keras.Model(ins, keras.layers.Dense(num_classes, activation="softmax")(x))


def state():
    # Warning filters of Python's own categories: what a library call could add (a dependency
    # imported on first use adds its own, e.g. botocore's InsecurePlatformWarning, through
    # TensorBoard's summaries: that is the dependency's import, not a call of embcache's).
    filters = [f for f in warnings.filters if f[2].__module__ == "builtins"]
    return (matplotlib.get_backend(), filters, optuna.logging.get_verbosity(),
            os.environ.get("PYTHONWARNINGS"))


if __name__ == "__main__":
    root, vectors = sys.argv[1], sys.argv[2]
    source = pd.read_csv(f"{root}/corpus.csv")
    spec = embcache.CorpusSpec(f"{root}/corpus.csv", text_columns=["text"], label_column="label",
                               id_column="id")
    embcache.embed_corpus(spec, vectors, f"{root}/s.zarr", settings={"max_len": 40},
                          split={"val_frac": 0.2, "test_frac": 0.2}, chunk_docs=16)
    store = embcache.open_store(f"{root}/s.zarr")
    docs = store.documents()
    assert docs["doc_id"].dtype.kind == "i", docs.dtypes  # the corpus's ints, not strings
    assert len(docs.merge(source, left_on="doc_id", right_on="id")) == len(source)

    before = state()
    group = embcache.train(store.url, ["fasttext", "kim_cnn"], f"{root}/runs",
                           config={"epochs": 2, "batch_size": 8})
    assert len(group.to_frame()) == 2 and len(group.runs[0].history) == 2

    mine = build_mean(dim=store.dim, num_classes=len(store.label_names))
    mine.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    mine.fit(embcache.dataset(store, "train", batch_size=8), epochs=1, verbose=0, shuffle=False)
    ids, guesses, truth = [], [], []  # an evaluation pass of your own, joined by id
    for x, y in embcache.dataset(store, "test", batch_size=8, with_ids=True):
        ids += x.pop("doc_id").numpy().tolist()
        guesses += mine.predict_on_batch(x).argmax(axis=1).tolist()
        truth += y.numpy().tolist()
    test_docs = docs[docs["split"] == "test"]
    assert sorted(ids) == sorted(test_docs["doc_id"]), (ids, test_docs)
    by_id = source.set_index("id")
    assert [store.label_names[t] for t in truth] == [by_id.loc[i, "label"] for i in ids]

    predicted = embcache.predict(f"{root}/runs/fasttext", store, "test")  # a run folder
    joined = predicted.merge(source, left_on="doc_id", right_on="id")
    assert len(joined) == len(test_docs) and (joined["true_label"] == joined["label"]).all()

    scorer = embcache.Scorer([f"{root}/runs/fasttext", f"{root}/runs/kim_cnn"], vectors=vectors)
    texts = pd.Series(["the cat sat on the mat", "xqzv blorf"], index=[7, 9])
    out = scorer.classify(texts, probabilities=True)
    assert out["doc_id"].tolist() == [7, 9]
    for model in ("fasttext", "kim_cnn", "ensemble"):
        p = out[[f"{model}_p_{label}" for label in store.label_names]].to_numpy()
        assert np.allclose(p.sum(axis=1), 1.0, atol=1e-4)
    assert out["tokens"].tolist() == [6, 2] and out["known_tokens"].tolist() == [6, 0]
    rows = scorer.classify(store, split="test")
    assert (rows.merge(source, left_on="doc_id", right_on="id")["label"]
            == rows["true_label"]).all()

    assert embcache.verify(store.url).ok
    study = embcache.tune(store.url, "fasttext", ["hidden=cat:0,8"], trials=2, parallel=2,
                          out=f"{root}/tune", config={"epochs": 1, "batch_size": 8})
    assert embcache.best_run(study).is_dir()
    assert len(embcache.runs(f"{root}/runs")) == 2
    embcache.score([f"{root}/runs/fasttext"], store.url, f"{root}/p.csv", split="test")
    assert state() == before, (before, state())

    shutil.copytree(f"{root}/s.zarr", f"{root}/damaged.zarr")
    chunk = f"{root}/damaged.zarr/tokens/c/1/0"
    with open(chunk, "r+b") as f:
        f.write(b"\xff" * 64)
    try:
        with embcache.pipeline_errors():
            mine.fit(embcache.dataset(f"{root}/damaged.zarr", "train", batch_size=8), epochs=2,
                     verbose=0, shuffle=False)
    except embcache.ChunkError as e:
        assert "tokens/c/1/0" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("the damaged chunk was not reported")
    print("notebook ok")
'''


@pytest.mark.slow
def test_a_notebook_session_is_quiet_joins_by_integer_id_and_reads_probabilities(tmp_path):
    import random

    from tests.helpers import write_vectors

    vectors = tmp_path / "v.txt"
    write_vectors(vectors)
    rng = random.Random(0)
    labels = {"pets": WORDS[:10], "sky": WORDS[10:]}
    lines = ["id,label,text"]
    for i in range(96):
        label = ("pets", "sky")[i % 2]
        words = [rng.choice(labels[label]) for _ in range(rng.randint(4, 30))]
        lines.append(f"{1000 + 7 * i},{label},{' '.join(words)}")
    (tmp_path / "corpus.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "nb.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MPLBACKEND")}
    r = subprocess.run([sys.executable, str(tmp_path / "nb.py"), str(tmp_path), str(vectors)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0 and "notebook ok" in r.stdout, r.stderr[-4000:]
    assert r.stderr == ""
