"""``score --scheduler``: parts of whole blocks scored on Dask, assembled into the single
process's output; a stopped run resumes from its parts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from embcache.cache.store import open_store
from embcache.jobs.cli import main
from embcache.jobs.config import TrainConfig
from embcache.jobs.score_dask import make_parts
from embcache.jobs.train import train
from tests.helpers import one_error_line, small_store

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vectors_file):
    root = tmp_path_factory.mktemp("dscore")
    store = small_store(root, vectors_file[0], docs_per_label=30, val_frac=0.3, test_frac=0.3)
    for name in ("fasttext", "kim_cnn"):
        train(str(store), name, str(root / "runs" / name), config=TrainConfig(epochs=1),
              progress=False)
    return root, store


def score(*args, quiet=True):
    r = CliRunner().invoke(main, ["score", *(["-q"] if quiet else []), *map(str, args)])
    return r.exit_code, r.output


def rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def assert_same_predictions(a, b):
    ra, rb = rows(a), rows(b)
    assert [r["doc_id"] for r in ra] == [r["doc_id"] for r in rb] and ra
    assert list(ra[0]) == list(rb[0])
    for x, y in zip(ra, rb):
        for col in x:
            if "_prob" in col:
                assert abs(float(x[col]) - float(y[col])) < 1e-5, (col, x, y)
            else:
                assert x[col] == y[col], (col, x, y)


def test_parts_are_whole_blocks_of_every_store_and_cover_the_pass_once(setup, tmp_path,
                                                                       vectors_file):
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.meta import SplitSettings
    from embcache.cache.settings import EmbedSettings
    from embcache.jobs.embed_corpus import embed_corpus

    root, store = setup
    other = tmp_path / "c24.zarr"  # the same documents in blocks of 24 (the first's: 16)
    embed_corpus(CorpusSpec(str(root / "corpus")), str(vectors_file[0]), str(other), workers=1,
                 chunk_docs=24, progress=False, settings=EmbedSettings(max_len=160),
                 split=SplitSettings(val_frac=0.3, test_frac=0.3))
    a, b = open_store(str(store)), open_store(str(other))
    for split in (None, "test"):
        parts = make_parts([a, b], split, part_docs=20)
        assert all(p.first % 48 == 0 and (p.stop % 48 == 0 or p.stop == a.num_docs)
                   for p in parts)  # lcm(16, 24): whole blocks of both
        assert sum(p.docs for p in parts) == sum(1 for _ in a.split_doc_ids(split))
        for p in parts:
            assert p.plans[0].num_docs == p.plans[1].num_docs > 0
            assert list(p.plans[0].chunks) == list(range(p.first // 16, -(-p.stop // 16)))


def test_a_rerun_resumes_only_the_same_job(setup, tmp_path):
    """The parts folder is kept for the same runs (their cards), stores (their attributes),
    split and columns; anything else starts it afresh."""
    from embcache.jobs.score_dask import ScorerSpec, job_inputs, job_key, parts_folder

    root, store = setup
    s = open_store(str(store))
    spec = ScorerSpec((str(root / "runs" / "kim_cnn"),), (), 64, "weighted", "auto")
    inputs = job_inputs(spec, [s])
    assert (root / "runs" / "kim_cnn" / "model.json").read_text() in inputs
    key = job_key(spec, [str(store)], "test", ["doc_id"], inputs, 16)
    out = tmp_path / "p.csv"
    folder, resumed = parts_folder(out, key)
    assert not resumed
    (folder / "part-000000.parquet").write_bytes(b"x")
    assert parts_folder(out, key) == (folder, True) and (folder / "part-000000.parquet").exists()
    retrained = job_key(spec, [str(store)], "test", ["doc_id"], [inputs[0] + " "] + inputs[1:], 16)
    assert parts_folder(out, retrained) == (folder, False)
    assert not (folder / "part-000000.parquet").exists()


@pytest.mark.slow
def test_local_cluster_scores_a_store_and_raw_input_as_one_process_does(setup, tmp_path,
                                                                       vectors_file):
    root, store = setup
    models = f"{root}/runs/fasttext,{root}/runs/kim_cnn"
    (tmp_path / "one").mkdir()
    (tmp_path / "dask").mkdir()
    one, dask = tmp_path / "one" / "p.csv", tmp_path / "dask" / "p.csv"
    assert score("--models", models, "--input", store, "--split", "test", "--out", one)[0] == 0
    code, text = score("--models", models, "--input", store, "--split", "test", "--out", dask,
                       "--scheduler", "local:2", "--part-docs", "16")
    assert code == 0, text
    assert_same_predictions(one, dask)
    assert not (tmp_path / "dask" / "p.csv.parts").exists()  # removed once assembled
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "dask" / "metrics.json").read_text())
    assert m1["models"] == m2["models"] and m1["ensemble"]["accuracy"] == m2["ensemble"]["accuracy"]
    # raw input: embedded once here, scored on the workers
    raw_one, raw_dask = tmp_path / "raw1.csv", tmp_path / "raw2.csv"
    common = ["--models", models, "--input", root / "corpus", "--vectors", vectors_file[0]]
    assert score(*common, "--out", raw_one)[0] == 0
    code, text = score(*common, "--out", raw_dask, "--scheduler", "local:2", "--part-docs", "32")
    assert code == 0, text
    assert_same_predictions(raw_one, raw_dask)
    assert len(rows(raw_dask)) == open_store(str(store)).num_docs


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_parts_and_ends_identical(setup, tmp_path):
    root, store = setup
    models = f"{root}/runs/kim_cnn"
    one, out = tmp_path / "one.csv", tmp_path / "p.csv"
    assert score("--models", models, "--input", store, "--out", one)[0] == 0
    flag = tmp_path / "paused"
    args = ["--models", models, "--input", str(store), "--out", str(out), "--scheduler",
            "local:2", "--part-docs", "16"]
    env = {**os.environ, "EMBCACHE_PAUSE_AT": "score:part-written:2",
           "EMBCACHE_PAUSE_FILE": str(flag)}
    proc = subprocess.Popen([sys.executable, "-m", "embcache.jobs.cli", "score", "-q", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (flag.exists()
                                                                   and flag.read_text()):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local cluster, mid-run
    proc.wait()
    parts = sorted((tmp_path / "p.csv.parts").glob("part-*.parquet"))
    assert len(parts) >= 2 and not out.exists()
    code, text = score(*args, quiet=False)
    assert code == 0, text
    assert "resuming: " in text and "parts already written" in text
    assert_same_predictions(one, out)


def test_bad_schedulers_are_one_line(setup, tmp_path):
    root, store = setup
    models = f"{root}/runs/fasttext"
    code, text = score("--models", models, "--input", store, "--out", tmp_path / "p.csv",
                       "--scheduler", "lokal:2")
    assert code != 0 and "--scheduler" in one_error_line(text) and "local:N" in text
    # raw input on a remote scheduler: its workers could not read a temporary store here
    code, text = score("--models", models, "--input", root / "corpus", "--out",
                       tmp_path / "p.csv", "--scheduler", "tcp://127.0.0.1:9")
    assert code != 0 and "--keep-store" in one_error_line(text)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line(setup, tmp_path):
    root, store = setup
    code, text = score("--models", f"{root}/runs/fasttext", "--input", store, "--out",
                       tmp_path / "p.csv", "--scheduler", "tcp://127.0.0.1:9")
    assert code != 0 and "Cannot reach the Dask scheduler" in one_error_line(text)


@pytest.mark.slow
def test_a_damaged_chunk_met_on_a_worker_is_one_line(setup, tmp_path):
    import shutil

    root, store = setup
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(store, copy)
    chunk = copy / "tokens" / "c" / "2" / "0"
    chunk.write_bytes(os.urandom(chunk.stat().st_size))
    code, text = score("--models", f"{root}/runs/kim_cnn", "--input", copy, "--out",
                       tmp_path / "p.csv", "--scheduler", "local:2", "--part-docs", "16")
    line = one_error_line(text)
    assert code != 0 and "is damaged" in line and str(copy) in line
    assert not (tmp_path / "p.csv").exists()
