import csv
import json
import tarfile

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embcache.cache.corpus import CorpusSpec
from embcache.cache.settings import EmbedSettings
from embcache.cache.store import open_store
from embcache.cache.stream import bucket_lengths, read_padded
from embcache.jobs.cli import main
from embcache.jobs.config import TrainConfig
from embcache.jobs.embed_corpus import embed_corpus
from embcache.jobs.runs import write_card
from embcache.jobs.train import train
from tests.helpers import make_folder_corpus, small_store


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vectors_file):
    root = tmp_path_factory.mktemp("score")
    store = small_store(root, vectors_file[0], docs_per_label=30, val_frac=0.3, test_frac=0.3)
    cfg = TrainConfig(epochs=1)
    for name in ("fasttext", "kim_cnn"):
        train(str(store), name, str(root / "runs" / name), config=cfg, progress=False)
    # Same vectors and settings, another label set: allowed, scored with its own labels.
    make_folder_corpus(root / "corpus2", docs_per_label=20, labels=("x", "y"))
    store2 = root / "s2.zarr"
    embed_corpus(CorpusSpec(str(root / "corpus2")), str(vectors_file[0]), str(store2), workers=1,
                 progress=False, settings=EmbedSettings(max_len=160))
    train(str(store2), "fasttext", str(root / "runs2" / "fasttext_xy"), config=cfg, progress=False)
    # Different max_len: refused.
    store3 = root / "s3.zarr"
    embed_corpus(CorpusSpec(str(root / "corpus")), str(vectors_file[0]), str(store3), workers=1,
                 progress=False, settings=EmbedSettings(max_len=40))
    train(str(store3), "fasttext", str(root / "runs3" / "short"), config=cfg, progress=False)
    return root, store


def run(*args):
    r = CliRunner().invoke(main, ["score", "-q", *map(str, args)])
    return r.exit_code, r.output


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_scores_a_store_split_with_metrics_and_ensemble(setup, tmp_path):
    root, store = setup
    out = tmp_path / "p.csv"
    code, text = run("--models", f"{root}/runs/fasttext,{root}/runs/kim_cnn", "--input", store,
                     "--split", "test", "--out", out, "--top-k", "2")
    assert code == 0, text
    rows = read_csv(out)
    assert list(rows[0]) == ["doc_id", "true_label", "fasttext_label", "fasttext_prob",
                             "fasttext_label_2",
                             "fasttext_prob_2", "kim_cnn_label", "kim_cnn_prob", "kim_cnn_label_2",
                             "kim_cnn_prob_2", "ensemble_label", "ensemble_prob",
                             "ensemble_label_2", "ensemble_prob_2", "tokens", "known_tokens"]
    for r in rows:
        assert r["fasttext_label"] in ("a", "b", "c")
        assert float(r["fasttext_prob"]) >= float(r["fasttext_prob_2"])
        ens = (float(r["fasttext_prob"]) if r["ensemble_label"] == r["fasttext_label"] else None)
        assert 0 < float(r["ensemble_prob"]) <= 1 and (ens is None or ens > 0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["models"]["fasttext"]["docs"] == len(rows)
    assert set(metrics["models"]["fasttext"]["per_class"]) == {"a", "b", "c"}
    assert "ensemble" in metrics and (tmp_path / "confusion_kim_cnn.png").exists()
    assert "macro-F1" in text and text.strip().splitlines()[-1].startswith(f"Scored {len(rows)} documents")


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [7, 64])
def test_probabilities_equal_the_models_own(setup, tmp_path, batch_size):
    """Scores equal the model's own predictions of each document padded to its length bucket,
    short batches included, and rows come in the input order (batches come by bucket)."""
    root, store = setup
    out = tmp_path / "p.csv"
    code, text = run("--models", f"{root}/runs/kim_cnn", "--input", store, "--out", out,
                     "--batch-size", batch_size)
    assert code == 0, text
    s = open_store(str(store))
    model = keras.saving.load_model(root / "runs" / "kim_cnn" / "model.keras")
    lengths = s.array("lengths")[:].astype("int32")
    buckets = bucket_lengths(s.max_len)
    want = np.concatenate([model.predict_on_batch({
        "embedded": read_padded(s, i, i + 1, int(buckets[np.searchsorted(buckets, n)])).astype("float32"),
        "lengths": lengths[i:i + 1]}) for i, n in enumerate(lengths)])
    assert len(set(np.searchsorted(buckets, lengths).tolist())) > 2
    rows = read_csv(out)
    assert len(rows) == s.num_docs and s.num_docs % 7 != 0
    got = np.array([float(r["kim_cnn_prob"]) for r in rows])
    assert np.allclose(got, want.max(axis=1), atol=1e-5)


def predictions(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: (float(v) if k.endswith("prob") else v) for k, v in r.items()} for r in read_csv(path)]


@pytest.mark.slow
@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_raw_folder_input_matches_scoring_the_store(setup, tmp_path, vectors_file, ext):
    root, store = setup
    models = f"{root}/runs/fasttext"
    from_store, raw = tmp_path / f"store{ext}", tmp_path / f"raw{ext}"
    assert run("--models", models, "--input", store, "--out", from_store)[0] == 0
    code, text = run("--models", models, "--input", root / "corpus", "--vectors", vectors_file[0],
                     "--out", raw, "--keep-store", tmp_path / "kept.zarr")
    assert code == 0, text
    a = {r["doc_id"]: r for r in predictions(from_store)}
    b = {r["doc_id"]: r for r in predictions(raw)}
    assert a.keys() == b.keys() and len(a) == 90
    for k in a:
        assert a[k]["fasttext_label"] == b[k]["fasttext_label"]
        assert abs(a[k]["fasttext_prob"] - b[k]["fasttext_prob"]) < 1e-5
    assert (tmp_path / "kept.zarr" / "zarr.json").exists()


@pytest.mark.slow
def test_every_raw_input_format(setup, tmp_path, vectors_file):
    root, _ = setup
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root / "corpus", arcname="corpus")
    (tmp_path / "d.csv").write_text("text,label\nthe cat sat,a\nthe dog ran,b\n")
    (tmp_path / "d.jsonl").write_text('{"text": "the cat", "y": "a"}\n{"text": "sky", "y": "c"}\n')
    (tmp_path / "d.txt").write_text("the cat sat\nthe moon\n")
    cases = [(archive, ()), (tmp_path / "d.csv", ("--text-column", "text", "--label-column", "label")),
             (tmp_path / "d.jsonl", ("--label-column", "y")), (tmp_path / "d.txt", ())]
    for path, extra in cases:
        out = tmp_path / f"{path.name}.csv"
        code, text = run("--models", f"{root}/runs/fasttext", "--input", path, "--vectors",
                         vectors_file[0], "--out", out, *extra)
        assert code == 0, (path, text)
        assert len(read_csv(out)) == {"c.tar.gz": 90}.get(path.name, 2)


@pytest.mark.slow
def test_label_sets_may_differ_but_embedding_may_not(setup, tmp_path):
    root, store = setup
    out = tmp_path / "p.csv"
    code, text = run("--models", f"{root}/runs/fasttext,{root}/runs2/fasttext_xy", "--input", store,
                     "--out", out)
    assert code == 0, text
    rows = read_csv(out)
    assert "ensemble_label" not in rows[0]
    assert {r["fasttext_xy_label"] for r in rows} <= {"x", "y"}
    code, text = run("--models", f"{root}/runs/fasttext,{root}/runs3/short", "--input", store,
                     "--out", out)
    assert code == 1  # another representation, but of a store split differently: refused
    assert text.strip() == ("Error: Models fasttext and short were trained on differently embedded "
                            f"data (max_len 160 vs 40), and stores {store} and {root / 's3.zarr'} "
                            "do not hold the same documents in the same order and splits "
                            "(document 1: 'a/001' is in the val vs the train split); an ensemble "
                            "across them needs stores of the same corpus and split settings: "
                            "score them separately")


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_bad_inputs(setup, tmp_path, vectors_file):
    root, store = setup
    good = root / "runs" / "fasttext"
    out = tmp_path / "p.csv"
    nocard = copy_run(good, tmp_path / "nocard")
    (nocard / "model.json").unlink()
    assert run("--models", nocard, "--input", store, "--out", out) == (
        1, f"Error: {nocard} has no model card (model.json); train it with `embcache train`\n")
    tampered = copy_run(good, tmp_path / "tampered")
    card = json.loads((tampered / "model.json").read_text())
    card["store"]["label_names"] = ["c", "b", "a"]
    (tampered / "model.json").write_text(json.dumps(card))
    code, text = run("--models", tampered, "--input", store, "--out", out)
    assert code == 1 and "was edited after training" in text
    code, text = run("--models", good, "--input", store, "--out", tmp_path / "missing" / "p.csv")
    assert (code, text.strip()) == (1, f"Error: Output folder {tmp_path}/missing does not exist "
                                       f"(for --out {tmp_path}/missing/p.csv)")
    (tmp_path / "empty.txt").write_text("")
    code, text = run("--models", good, "--input", tmp_path / "empty.txt", "--vectors",
                     vectors_file[0], "--out", out)
    assert (code, text.strip()) == (1, f"Error: Corpus {tmp_path}/empty.txt holds no documents")
    assert not out.exists()


@pytest.mark.slow
def test_unsafe_model_is_refused(setup, tmp_path):
    root, store = setup
    run_dir = copy_run(root / "runs" / "fasttext", tmp_path / "unsafe")
    ins = {"embedded": keras.Input((160, 8), name="embedded"),
           "lengths": keras.Input((), dtype="int32", name="lengths")}
    x = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=1))(ins["embedded"])
    model = keras.Model(ins, keras.layers.Dense(3, activation="softmax")(x))
    model.save(run_dir / "model.keras")
    card = json.loads((run_dir / "model.json").read_text())
    write_card(run_dir, card)  # a consistent card: only safe mode stands in the way
    code, text = run("--models", run_dir, "--input", store, "--out", tmp_path / "p.csv")
    assert code == 1 and "needs unsafe deserialization" in text, text


@pytest.mark.slow
def test_failed_run_leaves_no_predictions(setup, tmp_path, monkeypatch):
    root, store = setup
    import embcache.jobs.score as score_mod
    import embcache.jobs.score_loop as loop_mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(loop_mod, "_add_topk", boom)  # fails mid-way through the rows
    out = tmp_path / "p.csv"
    with pytest.raises(RuntimeError):
        score_mod.score([str(root / "runs" / "fasttext")], str(store), str(out), progress=False)
    assert list(tmp_path.iterdir()) == []
    np.testing.assert_equal(out.exists(), False)


@pytest.mark.slow
def test_score_in_a_fresh_process_loads_custom_layers(setup, tmp_path):
    """A new interpreter has imported no model module: loading must still find the layers."""
    import subprocess
    import sys

    root, store = setup
    out = tmp_path / "p.jsonl"
    r = subprocess.run([sys.executable, "-m", "embcache.jobs.cli", "score", "-q", "--models",
                        f"{root}/runs/fasttext", "--input", str(store), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 90


@pytest.mark.slow
@pytest.mark.parametrize("how", ["weighted", "mean"])
def test_ensemble_is_the_exact_weighted_mean(setup, tmp_path, how):
    """Every ensemble probability equals the mean of the models' probabilities, weighted by
    their cards' validation accuracies (or equally), to the 6 decimals written."""
    root, store = setup
    out = tmp_path / "p.csv"
    dirs = [root / "runs" / "fasttext", root / "runs" / "kim_cnn"]
    code, text = run("--models", ",".join(map(str, dirs)), "--input", store, "--split", "test",
                     "--out", out, "--top-k", 3, "--ensemble", how, "--metrics-dir", tmp_path)
    assert code == 0, text
    acc = [json.loads((d / "model.json").read_text())["metrics"]["val_accuracy"] for d in dirs]
    w = np.array(acc) / sum(acc) if how == "weighted" else np.array([0.5, 0.5])
    labels = ["a", "b", "c"]
    for r in read_csv(out):
        dist = {}
        for name in ("fasttext", "kim_cnn", "ensemble"):
            dist[name] = np.zeros(3)
            for k in ("", "_2", "_3"):
                dist[name][labels.index(r[f"{name}_label{k}"])] = float(r[f"{name}_prob{k}"])
        want = w[0] * dist["fasttext"] + w[1] * dist["kim_cnn"]
        np.testing.assert_allclose(dist["ensemble"], want, atol=2e-6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["ensemble"]
    assert metrics["method"] == how
    assert metrics["weights"] == pytest.approx({"fasttext": w[0], "kim_cnn": w[1]}, abs=1e-6)


@pytest.mark.slow
def test_weighted_ensemble_needs_validation_accuracies(setup, tmp_path):
    root, store = setup
    run_dir = tmp_path / "noval"
    import shutil

    shutil.copytree(root / "runs" / "fasttext", run_dir)
    card = json.loads((run_dir / "model.json").read_text())
    card["metrics"] = {}
    write_card(run_dir, {k: v for k, v in card.items() if k not in ("model_sha256", "card_sha256")})
    code, text = run("--models", f"{root}/runs/kim_cnn,{run_dir}", "--input", store, "--out",
                     tmp_path / "p.csv")
    assert (code, text.strip()) == (1, f"Error: {run_dir / 'model.json'} records no validation "
                                       "accuracy to weight the ensemble by; pass --ensemble mean")
    code, text = run("--models", f"{root}/runs/kim_cnn,{run_dir}", "--input", store, "--out",
                     tmp_path / "p.csv", "--ensemble", "mean")
    assert code == 0, text


def test_parquet_output_is_written_in_bounded_row_groups(setup, tmp_path, monkeypatch):
    """Scored batches are gathered into row groups of ROW_GROUP_ROWS rows (not one per batch:
    the footer would grow with every batch), with the CSV's rows in the CSV's order."""
    from embcache.jobs import outputs

    root, store = setup
    models = f"{root}/runs/fasttext"
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 16)
    out, csv_out = tmp_path / "p.parquet", tmp_path / "p.csv"
    assert run("--models", models, "--input", store, "--out", out, "--batch-size", "4")[0] == 0
    assert run("--models", models, "--input", store, "--out", csv_out)[0] == 0
    meta = pq.ParquetFile(out).metadata
    rows = predictions(out)
    assert meta.num_rows == len(rows) == 90
    # every row group but the last holds at least 16 rows (batches of 4 were written)
    assert 2 <= meta.num_row_groups <= 90 // 16
    assert all(meta.row_group(i).num_rows >= 16 for i in range(meta.num_row_groups - 1))
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 65_536)
    assert run("--models", models, "--input", store, "--out", tmp_path / "q.parquet")[0] == 0
    assert pq.ParquetFile(tmp_path / "q.parquet").metadata.num_row_groups == 1
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in predictions(csv_out)]
