"""The Python API and models from outside embcache: the README's examples run as written (paths
swapped for tiny data), import-string models train and score through the CLI, plugins and
``register`` resolve, and a Scorer loads its models once and agrees with ``score``."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import embcache
from embcache import models
from embcache.jobs.cli import main
from tests.helpers import small_store

ROOT = Path(__file__).resolve().parents[1]
EMBCACHE = str(Path(sys.executable).with_name("embcache"))


def readme_example(name: str) -> str:
    """The fenced code block after ``<!-- example: NAME -->`` in README.md or a page of docs/."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += re.findall(rf"<!-- example: {name} -->\n```\w*\n(.*?)```", page.read_text(), re.S)
    assert len(found) == 1, f"README.md and docs/ hold {len(found)} examples named {name!r}"
    return found[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    root = tmp_path_factory.mktemp("api")
    return small_store(root, vectors_file[0], docs_per_label=20, val_frac=0.25, test_frac=0.25)


def split_size(store) -> int:
    return embcache.open_store(str(store)).meta.totals.split_counts["test"]


def one_error_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.slow
def test_readme_custom_model_trains_and_scores_by_import_string(tmp_path, store):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "my_models.py").write_text(readme_example("my_models"))
    (proj / "models").mkdir()  # the user's own models/ package must not get in the way
    (proj / "models" / "__init__.py").write_text("raise ImportError('user models package')\n")
    r = subprocess.run([EMBCACHE, "train", "--store", str(store), "--model", "my_models:build_net",
                        "--param", "hidden=16", "--epochs", "2", "-q", "--out", "runs/my_net"],
                       cwd=proj, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("Trained my_models:build_net for 2 epochs")
    import json

    card = json.loads((proj / "runs/my_net/model.json").read_text())
    assert card["model"] == "my_models:build_net"
    assert card["hyperparameters"] == {"hidden": 16, "dropout": 0.2}
    assert card["model_source"] == {"kind": "import", "ref": "my_models:build_net",
                                    "module": "my_models", "distribution": None, "version": None}
    out = proj / "p.csv"
    r = subprocess.run([EMBCACHE, "score", "-q", "--models", "runs/my_net", "--input", str(store),
                        "--split", "test", "--out", str(out)], cwd=proj, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"doc_id", "true_label", "my_net_label", "my_net_prob",
                                     "tokens", "known_tokens"}
    assert {row["my_net_label"] for row in rows} <= {"a", "b", "c"}
    # Scored from a folder where the module is not importable: one line naming the module.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([EMBCACHE, "score", "-q", "--models", str(proj / "runs/my_net"), "--input",
                        str(store), "--out", str(elsewhere / "p.csv")], cwd=elsewhere,
                       capture_output=True, text=True)
    assert r.returncode == 1
    line = one_error_line(r.stdout + r.stderr)
    assert "Cannot import module 'my_models'" in line and "PYTHONPATH" in line
    assert not (elsewhere / "p.csv").exists()


def test_bad_model_specs_are_one_line(tmp_path, store):
    cases = [
        ("no_such_module:build", "Error: Cannot import module 'no_such_module' for model "
                                 "'no_such_module:build': No module named 'no_such_module'"),
        ("json:no_such_fn", "Error: Module 'json' has no attribute 'no_such_fn'"),
        ("json:__doc__", "Error: json:__doc__ is not a function (a model builder)"),
        ("nope", "Error: Unknown model 'nope'. Known models: bilstm, cnn, fasttext"),
    ]
    for spec, message in cases:
        r = CliRunner().invoke(main, ["train", "--store", str(store), "--model", spec, "-q",
                                      "--out", str(tmp_path / "r")])
        assert r.exit_code == 1, r.output
        assert one_error_line(r.output).startswith(message), r.output
    assert not (tmp_path / "r").exists()


def test_one_name_per_concept_old_names_warn_and_paths_may_be_path_objects(store, tmp_path):
    """``store``, ``out``, ``vectors``, ``runs``, ``data`` everywhere: the old keyword names
    still work for one release, with a DeprecationWarning; both at once is one line; a
    ``pathlib.Path`` is as good as a string; Python errors name Python arguments, not flags."""
    import pathlib
    import warnings

    with pytest.warns(DeprecationWarning, match=r"verify\(url=\.\.\.\) is deprecated.*store="):
        old = embcache.verify(url=str(store))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names and a Path: no warning at all
        assert embcache.verify(pathlib.Path(store)).ok and old.ok
    with pytest.raises(embcache.EmbcacheError, match="Give `store=` only: `store_url=` is its old"):
        embcache.train(store=str(store), store_url=str(store), model="fasttext")
    with pytest.warns(DeprecationWarning, match="out_dir"), \
            pytest.raises(embcache.StoreError, match="nope"):
        embcache.train(store_url=str(tmp_path / "nope"), model="fasttext", out_dir=str(tmp_path))
    with pytest.raises(embcache.EmbcacheError, match=r"^Invalid value for `store`. Expected a path"):
        embcache.train(123, "fasttext")
    with pytest.raises(embcache.EmbcacheError) as e:
        embcache.tune(store, "fasttext", [], trials=1)
    assert "`space`" in str(e.value) and "--" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_models_import_in_any_order_with_keras():
    """``from embcache.models import inputs`` before any ``import keras`` (the layers module then
    imports Keras itself, and embcache's hook on that import must not load the half-loaded
    module's importers), a built-in model's module first, or Keras first: each works, and the
    built-in layers and optimizer are registered with Keras either way."""
    orders = ["import embcache\nfrom embcache.models import inputs, LengthMask\nimport keras",
              "import embcache.models.cnn\nimport keras",
              "import keras\nimport embcache\nfrom embcache.models import inputs"]
    for order in orders:
        code = (order + "\nfrom embcache.models.optimizers import Adam\n"
                "names = [keras.saving.get_registered_name(c) for c in (Adam, LengthMask)]\n"
                if "LengthMask" in order else
                order + "\nfrom embcache.models.layers import LengthMask\n"
                "from embcache.models.optimizers import Adam\n"
                "names = [keras.saving.get_registered_name(c) for c in (Adam, LengthMask)]\n")
        code += "assert keras.saving.get_registered_object('embcache>MinLength') is not None\n"
        code += "print(names)"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0, (order, r.stderr[-2000:])
        assert "embcache>Adam" in r.stdout and "embcache>LengthMask" in r.stdout, r.stdout


def test_public_calls_declare_concrete_return_types():
    """What a notebook's completion and mypy see: no public call returns an unknown type."""
    import inspect

    calls = {"train": embcache.train, "dataset": embcache.dataset, "predict": embcache.predict,
             "Scorer.classify": embcache.Scorer.classify, "tune": embcache.tune,
             "verify": embcache.verify, "load_run": embcache.load_run, "runs": embcache.runs,
             "open_store": embcache.open_store, "score": embcache.score,
             "embed_corpus": embcache.embed_corpus, "save_run": embcache.save_run,
             "best_run": embcache.best_run, "Store.documents": embcache.Store.documents}
    returns = {name: str(inspect.signature(fn).return_annotation) for name, fn in calls.items()}
    assert not [n for n, r in returns.items() if r in ("<class 'inspect._empty'>", "Any")], returns
    assert returns["dataset"] == "tf.data.Dataset" and returns["predict"] == "pd.DataFrame"
    assert returns["Scorer.classify"] == "pd.DataFrame" and returns["tune"] == "optuna.Study"


def build_tiny(*, dim, num_classes, padding="pre", hidden=8):
    import keras

    ins = models.inputs(dim)
    mask = models.LengthMask(padding)(ins["lengths"], ins["embedded"])
    x = keras.layers.Dense(hidden, activation="relu")(models.MaskedMean()(ins["embedded"], mask))
    return keras.Model(ins, keras.layers.Dense(num_classes, activation="softmax")(x))


@pytest.mark.slow
def test_plugins_register_and_functions_resolve(tmp_path, monkeypatch, store):
    # An installed distribution declaring an entry point (a dist-info folder on the path).
    site = tmp_path / "site"
    (site / "tiny_plugin-1.2.3.dist-info").mkdir(parents=True)
    (site / "tiny_plugin-1.2.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 1.2.3\n")
    (site / "tiny_plugin-1.2.3.dist-info" / "entry_points.txt").write_text(
        "[embcache.models]\ntiny = tiny_plugin.nets:build\n")
    (site / "tiny_plugin-1.2.3.dist-info" / "top_level.txt").write_text("tiny_plugin\n")
    (site / "tiny_plugin").mkdir()
    (site / "tiny_plugin" / "__init__.py").write_text("")
    (site / "tiny_plugin" / "nets.py").write_text(
        "import keras\n\nimport embcache.models as m\n\n\n"
        "def build(*, dim, num_classes, width=4):\n"
        "    ins = m.inputs(dim)\n"
        "    x = m.MaskedMean()(ins['embedded'], m.LengthMask()(ins['lengths'], ins['embedded']))\n"
        "    x = keras.layers.Dense(width)(x)\n"
        "    return keras.Model(ins, keras.layers.Dense(num_classes, activation='softmax')(x))\n")
    monkeypatch.syspath_prepend(str(site))
    assert "tiny" in models.names()
    source = models.resolve("tiny")
    assert source.kind == "entry_point" and source.hyperparameters() == {"width": 4}
    assert source.record() == {"kind": "entry_point", "ref": "tiny", "module": "tiny_plugin.nets",
                               "distribution": "tiny-plugin", "version": "1.2.3"}
    model = source.make(max_len=160, dim=8, num_classes=3, width=5)
    assert model.output_shape == (None, 3)
    with pytest.raises(embcache.ModelError, match="Model 'tiny' has no hyperparameter 'hidden'; "
                                                  "it takes: width=4"):
        source.make(max_len=160, dim=8, num_classes=3, hidden=5)
    # register(): a name known in this process; a function given directly: its import string.
    models.register("tiny_registered")(build_tiny)
    assert models.resolve("tiny_registered").record()["kind"] == "registered"
    direct = models.resolve(build_tiny)
    assert (direct.ref, direct.kind) == (f"{build_tiny.__module__}:build_tiny", "import")
    summary = embcache.train(str(store), build_tiny, str(tmp_path / "runs" / "direct"),
                             config=embcache.TrainConfig(epochs=1), progress=False)
    assert summary.model == direct.ref
    scorer = embcache.Scorer([tmp_path / "runs" / "direct"])
    assert len(scorer.classify(str(store), split="test")) == split_size(store)


def test_model_that_is_not_embedding_free_is_refused(store, tmp_path):
    def wrong(*, dim, num_classes):
        import keras

        x = keras.Input((None,), name="ids")
        return keras.Model(x, keras.layers.Dense(num_classes)(keras.layers.Embedding(10, dim)(x)))

    with pytest.raises(embcache.ModelError, match="has no input named 'embedded'"):
        embcache.train(str(store), wrong, str(tmp_path / "r"), progress=False)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = embcache.TrainConfig(epochs=1)
    for name in ("fasttext", "kim_cnn"):
        embcache.train(str(store), name, str(runs / name), config=cfg, progress=False)
    return runs


@pytest.mark.slow
def test_scorer_loads_once_and_agrees_with_score(trained, store, vectors_file, tmp_path,
                                                 monkeypatch):
    import embcache.jobs.score as score_mod

    loads = []
    real_load = score_mod.load_run
    monkeypatch.setattr(score_mod, "load_run", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    scorer = embcache.Scorer([trained / "fasttext", trained / "kim_cnn"],
                             vectors=str(vectors_file[0]))
    texts = ["the cat sat on the mat", "Dog ran far away home.", "zzz", "zzz qqq sky star " * 40]
    first = scorer.classify(texts)
    second = scorer.classify(texts, top_k=2)
    assert len(loads) == 2  # one load per model, for both calls
    assert list(first.columns) == ["doc_id", "fasttext_label", "fasttext_prob", "kim_cnn_label",
                                   "kim_cnn_prob", "ensemble_label", "ensemble_prob", "tokens",
                                   "known_tokens"]
    assert first["doc_id"].tolist() == [0, 1, 2, 3]
    assert second["fasttext_label"].tolist() == first["fasttext_label"].tolist()
    # The same texts through `embcache score` on a raw file (a store embedded on disk).
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(texts) + "\n")
    out = tmp_path / "p.csv"
    embcache.score([str(trained / "fasttext"), str(trained / "kim_cnn")], str(lines), str(out),
                   vectors=str(vectors_file[0]), progress=False)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for col in ("fasttext", "kim_cnn", "ensemble"):
        assert [r[f"{col}_label"] for r in rows] == first[f"{col}_label"].tolist()
        np.testing.assert_allclose([float(r[f"{col}_prob"]) for r in rows],
                                   first[f"{col}_prob"], atol=2e-6)
    assert len(loads) == 4  # score() loaded its own two
    # A store: the same rows as scoring it into a file.
    from_store = scorer.classify(str(store), split="test")
    out2 = tmp_path / "s.csv"
    scorer.write(embcache.open_store(str(store)), out2, split="test")
    with open(out2) as f:
        rows = list(csv.DictReader(f))
    assert [r["doc_id"] for r in rows] == from_store["doc_id"].tolist()
    assert [r["kim_cnn_label"] for r in rows] == from_store["kim_cnn_label"].tolist()
    assert len(loads) == 4
    empty = scorer.classify([""])  # no tokens: still a row (the models see zeros)
    assert len(empty) == 1 and empty["fasttext_label"][0] in ("a", "b", "c")
    with pytest.raises(embcache.EmbcacheError, match="the list holds a int"):
        scorer.classify(["fine", 3])


@pytest.mark.slow
def test_texts_files_and_stores_take_one_scoring_path(trained, vectors_file, tmp_path,
                                                      monkeypatch):
    """Texts (in memory), a raw file (through a store) and a store are all bucketed by
    `bucket_blocks` and scored by one loop; `Scorer.write` takes raw files as `score()` does,
    and `score()` calls no private Scorer method."""
    import ast
    import inspect

    import embcache.cache.stream as stream_mod
    import embcache.jobs.score as score_mod

    calls = []
    real = stream_mod.bucket_blocks
    monkeypatch.setattr(stream_mod, "bucket_blocks",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    scorer = embcache.Scorer([trained / "fasttext", trained / "kim_cnn"],
                             vectors=str(vectors_file[0]))
    texts = [f"word{i % 7} the cat " * (1 + i % 13) for i in range(40)]
    in_memory = scorer.classify(texts)
    assert len(calls) == 1
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(texts) + "\n")
    out = tmp_path / "w.csv"
    summary = scorer.write(str(lines), out)
    assert summary.docs == 40
    with open(out) as f:
        rows = list(csv.DictReader(f))
    for col in ("fasttext", "kim_cnn", "ensemble"):
        assert [r[f"{col}_label"] for r in rows] == in_memory[f"{col}_label"].tolist()
        np.testing.assert_allclose([float(r[f"{col}_prob"]) for r in rows],
                                   in_memory[f"{col}_prob"], atol=2e-6)
    tree = ast.parse(inspect.getsource(score_mod.score))
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and isinstance(n.value, ast.Name) and n.value.id == "scorer"
               and n.attr.startswith("_")]
    assert private == []


@pytest.mark.slow
def test_scorer_needs_vectors_for_text(trained):
    scorer = embcache.Scorer([trained / "fasttext"], load=False)
    with pytest.raises(embcache.EmbcacheError, match="Scoring text needs `vectors=`"):
        scorer.classify(["a text"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fit", "scorer", "own-model", "first-steps"])
def test_readme_python_examples_run(name, store, vectors_file, tmp_path):
    code = readme_example(name)
    code = code.replace('"news20.zarr"', repr(str(store)))
    code = code.replace('"data/glove.6B.50d.txt.gz"', repr(str(vectors_file[0])))
    (tmp_path / "example.py").write_text(code)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    if name == "own-model":
        assert "3 runs" in r.stdout and "mine_label" in r.stdout and "true_label" in r.stdout
    elif name == "first-steps":
        assert "fasttext-py_label" in r.stdout and "fasttext-py_prob" in r.stdout
    elif name == "fit":
        assert r.stdout.startswith("60 160 8 ['a', 'b']")
        assert "val_accuracy" in r.stderr + r.stdout
    else:
        assert "Trained fasttext for 2 epochs" in r.stdout
        assert "fasttext-py_label" in r.stdout and "fasttext-py_prob_2" in r.stdout
        assert (f"{split_size(store)} ['doc_id', 'true_label', 'fasttext-py_label', "
                "'fasttext-py_prob', 'tokens', 'known_tokens']") in r.stdout


def test_public_surface_is_small_and_lazy():
    r = subprocess.run([sys.executable, "-c", "import sys, embcache; "
                        "print(sorted(m for m in ('tensorflow', 'keras', 'zarr') if m in sys.modules))"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "[]"  # importing embcache loads nothing heavy
    assert set(embcache.__all__) == {"__version__", *embcache._EXPORTS}
    for name in embcache.__all__:
        assert getattr(embcache, name) is not None
        if name != "__version__":
            assert getattr(embcache, name).__doc__, name


@pytest.mark.slow
def test_every_labels_probability_per_model_and_ensemble(trained, store, tmp_path):
    """``classify(probabilities=True)`` and ``score --probabilities``: one column per label per
    model and for the ensemble, summing to 1 and agreeing with the top label and ``predict``."""
    import pandas as pd

    runs = [str(trained / "fasttext"), str(trained / "kim_cnn")]
    df = embcache.Scorer(runs).classify(str(store), split="test", probabilities=True)
    labels = embcache.open_store(str(store)).label_names
    for name in ("fasttext", "kim_cnn", "ensemble"):
        p = df[[f"{name}_p_{label}" for label in labels]].to_numpy()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)
        top = [labels.index(x) for x in df[f"{name}_label"]]
        assert (p[np.arange(len(p)), top] >= p.max(axis=1) - 1e-6).all()
    alone = embcache.predict(runs[1], str(store), "test", probabilities=True)
    np.testing.assert_allclose(df[[f"kim_cnn_p_{x}" for x in labels]].to_numpy(),
                               alone[[f"prob_{x}" for x in labels]].to_numpy(), atol=1e-5)
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(main, ["score", "--models", ",".join(runs), "--input", str(store),
                                  "--split", "test", "--out", str(out), "--probabilities", "-q"])
    assert r.exit_code == 0, r.output
    written = pd.read_csv(out)
    assert list(written.columns) == list(df.columns)
    np.testing.assert_allclose(written["ensemble_p_" + labels[0]], df["ensemble_p_" + labels[0]],
                               atol=1e-6)
    with pytest.raises(embcache.EmbcacheError, match="`probabilities`"):
        embcache.Scorer(runs).classify(["a"], probabilities="yes")


@pytest.mark.slow
def test_bad_python_arguments_are_one_line_before_any_work(trained, store, vectors_file, tmp_path):
    """The calls a notebook user got raw Python or TensorFlow errors from: each is now one
    ``EmbcacheError`` naming the argument, and nothing is written."""
    corpus = tmp_path / "c.csv"
    corpus.write_text("label,text\na,hello world\n")
    cases = [
        (lambda: embcache.embed_corpus(str(corpus), str(vectors_file[0]), str(tmp_path / "s1"),
                                       settings=embcache.EmbedSettings(max_len="80")),
         "`max_len`. Expected a positive integer. Received: max_len='80'"),
        (lambda: embcache.embed_corpus(str(corpus), str(vectors_file[0]), str(tmp_path / "s2"),
                                       settings={"max_len": 40, "colour": 1}),
         "unknown field 'colour'"),
        (lambda: embcache.dataset(str(store), "val", batch_size=0), "`batch_size`"),
        (lambda: embcache.dataset(str(store), "val", batch_size="32"), "batch_size='32'"),
        (lambda: embcache.train(str(store), "fasttext", str(tmp_path / "r"),
                                grid={"hidden": 16}), "'hidden' needs a non-empty list"),
        (lambda: embcache.Scorer([str(trained / "fasttext")]).classify(123), "data=123"),
        (lambda: embcache.EmbedSettings(max_len="80"), "Received: max_len='80'"),
        (lambda: embcache.embed_corpus({"path": str(corpus), "colour": 1}, str(vectors_file[0]),
                                       str(tmp_path / "s1")), "`corpus`: unknown field 'colour'"),
        (lambda: embcache.embed_corpus(str(corpus), str(vectors_file[0]), str(tmp_path / "s1"),
                                       split=0.2), "Expected a SplitSettings or a dict"),
        (lambda: embcache.embed_corpus(str(corpus), str(vectors_file[0]), str(tmp_path / "s1"),
                                       split={"val_frac": "0.2"}), "val_frac='0.2'"),
        (lambda: embcache.embed_corpus(str(corpus), str(vectors_file[0]), str(tmp_path / "s1"),
                                       workers="2"), "workers='2'"),
        (lambda: embcache.EmbedSettings(padding="middle"), "`padding`. Expected one of"),
        (lambda: embcache.predict(str(tmp_path / "no-run"), str(store)), "no-run"),
    ]
    for call, says in cases:
        with pytest.raises(embcache.EmbcacheError) as e:
            call()
        assert says in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s1").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_stores_documents_and_a_folders_runs_as_tables(trained, store):
    s = embcache.open_store(str(store))
    docs = s.documents()
    assert list(docs.columns) == ["doc_id", "label", "split", "length"] and len(docs) == s.num_docs
    test = s.documents("test")
    assert len(test) == s.split_counts["test"] and set(test["split"]) == {"test"}
    predicted = embcache.predict(str(trained / "kim_cnn"), s, "test")
    assert list(test["doc_id"]) == [str(x) for x in predicted["doc_id"]]
    assert list(test["label"]) == list(predicted["true_label"])
    assert (docs["length"] > 0).all()
    with pytest.raises(embcache.StoreError, match="`split`"):
        s.documents("dev")
    table = embcache.runs(trained)
    assert set(table["run"]) == {"fasttext", "kim_cnn"} and table["val_accuracy"].notna().all()
    assert table["val_accuracy"].is_monotonic_decreasing


@pytest.mark.slow
def test_library_calls_leave_process_wide_state_alone(store, tmp_path):
    """Training (which draws its curves) leaves the caller's matplotlib backend as it was (a
    notebook's stays its own); the producer's shared memory leaves ``PYTHONWARNINGS`` as it
    was."""
    code = ("import matplotlib, embcache\n"
            "if __name__ == '__main__':\n"
            f"    embcache.train({str(store)!r}, 'fasttext', {str(tmp_path / 'r')!r}, "
            "config={'epochs': 1}, progress=False)\n"
            "    print(matplotlib.get_backend())\n")
    script = tmp_path / "s.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env={**os.environ, "MPLBACKEND": "svg"})
    assert r.returncode == 0 and r.stdout.split() == ["svg"], r.stderr[-2000:]
    assert (tmp_path / "r" / "curves.png").stat().st_size > 0
    from embcache.cache.producer import Slots

    before = os.environ.get("PYTHONWARNINGS")
    slots = Slots(2, 1024, 4)
    try:
        assert os.environ.get("PYTHONWARNINGS") == before
    finally:
        slots.shm.close()
        slots.shm.unlink()


@pytest.mark.slow
def test_a_run_folder_loads_with_keras_after_import_embcache_and_predicts(trained, store):
    """``import embcache`` alone lets Keras load a run's model (its layers register when Keras
    is imported, whichever comes first); ``load_run`` and ``predict`` take the folder."""
    folder = trained / "kim_cnn"
    for order in ("import embcache, keras", "import keras, embcache"):
        r = subprocess.run([sys.executable, "-c", f"{order}; m = keras.saving.load_model("
                            f"{str(folder / 'model.keras')!r}); print(m.name)"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == "kim_cnn", r.stderr[-2000:]
    run = embcache.load_run(folder)
    assert isinstance(run, embcache.Run) and run.card["model"] == "kim_cnn"
    by_folder = embcache.predict(str(folder), str(store), "test")
    by_model = embcache.predict(run.model, str(store), "test")
    assert by_folder.equals(by_model) and len(by_folder) > 0
    with pytest.raises(embcache.ModelError, match="Run folder not found"):
        embcache.predict(str(trained / "nothing"), str(store), "test")


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path, vectors_file):
    """The installed path of the Quick start, command for command, on a tiny corpus in the
    README's own file names: it embeds, trains a group, scores it and lists the runs."""
    import gzip
    import shlex
    import tarfile

    from tests.helpers import make_folder_corpus

    make_folder_corpus(tmp_path / "src" / "news", docs_per_label=20, labels=("a", "b", "c"))
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "news20.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "news", arcname="20_newsgroup")
    with gzip.open(tmp_path / "data" / "glove.6B.50d.txt.gz", "wb") as f:
        f.write(vectors_file[0].read_bytes())
    commands = readme_example("quickstart").replace("\\\n", " ").splitlines()
    assert [c.split()[:2] for c in commands] == [["embcache", "embed-corpus"], ["embcache", "train"],
                                                 ["embcache", "score"], ["embcache", "runs"]]
    outputs = []
    for command in commands:
        r = subprocess.run([EMBCACHE, *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True,
                           text=True)
        assert r.returncode == 0, (command, r.stderr[-3000:])
        outputs.append(r.stdout)
    assert outputs[0].startswith("Embedded 60 documents")
    for model in ("kim_cnn", "tfidf"):
        assert (tmp_path / "runs" / model / "model.json").is_file()
        assert model in outputs[3]
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"kim_cnn_label", "tfidf_label", "ensemble_label"} <= set(rows[0])


def test_every_figure_of_the_readme_benchmark_summary_is_in_benchmarks_md():
    """The README's summary quotes BENCHMARKS.md: a figure changed or dropped there (a re-run,
    a section removed) fails here until the README says the same."""
    readme = (ROOT / "README.md").read_text()
    summary = readme.split("<!-- benchmark-summary -->")[1].split("<!-- /benchmark-summary -->")[0]
    report = (ROOT / "BENCHMARKS.md").read_text()
    figures = re.findall(r"(?<![\w.])\d[\d,]*\.\d+|(?<![\w.,])\d{1,3}(?:,\d{3})+(?![\d,])", summary)
    assert len(figures) > 30  # the summary's rows hold figures, not only words
    missing = [f for f in figures if not re.search(rf"(?<![\d.,]){re.escape(f)}(?![\d])", report)]
    assert missing == []
