"""Faults past the store's chunks: many labels, a model of the wrong width, Ctrl-C at named
moments of train (tracing included), and a store cut while its own metadata was written."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import cli, one_error_line, paused, small_store

CLI = [sys.executable, "-m", "embcache.jobs.cli"]




@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    root = tmp_path_factory.mktemp("faults")
    return small_store(root, vectors_file[0], docs_per_label=20, val_frac=0.25, test_frac=0.25)


# -- many labels -------------------------------------------------------------------------------
@pytest.mark.slow
def test_ten_thousand_labels_train_and_score(tmp_path, vectors_file):
    """20,000 documents over 10,000 labels: the scores, metrics.json and a readable picture of
    the most confused labels, without a 10,000 x 10,000 matrix anywhere."""
    from tests.helpers import WORDS

    corpus = tmp_path / "many.jsonl"
    with corpus.open("w") as f:
        for i in range(20_000):
            label = i % 10_000
            words = " ".join(WORDS[(label * 7 + k) % len(WORDS)] for k in range(4))
            f.write(json.dumps({"id": f"d{i}", "text": words, "label": f"L{label:05d}"}) + "\n")
    s = tmp_path / "many.zarr"
    code, out = cli("embed-corpus", "--corpus", corpus, "--vectors", vectors_file[0], "--out", s,
                    "--max-len", "8", "--label-column", "label", "--id-column", "id", "-q")
    assert code == 0, out
    code, out = cli("train", "--store", s, "--model", "fasttext", "--epochs", "1", "--out",
                    tmp_path / "run", "-q")
    assert code == 0, out
    code, out = cli("score", "--models", tmp_path / "run", "--input", s, "--split", "test",
                    "--out", tmp_path / "p.csv", "-q")
    assert code == 0, out
    metrics = json.loads((tmp_path / "metrics.json").read_text())["models"]["run"]
    assert len(metrics["labels"]) == 10_000 and "confusion_matrix" not in metrics
    assert metrics["docs"] > 0 and len(metrics["per_class"]) == 10_000
    assert all(p["true"] != p["predicted"] for p in metrics["most_confused"])
    assert (tmp_path / "confusion_run.png").stat().st_size > 1000


def test_confusion_keeps_the_whole_matrix_for_few_labels():
    import numpy as np

    from embcache.jobs.metrics import Confusion

    c = Confusion(["a", "b", "c"])
    c.add(np.array([0, 1, 2, 2, -1]), np.array([0, 2, 2, 1, 0]))
    r = c.report()
    assert r["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert r["docs"] == 4 and r["accuracy"] == 0.5
    assert c.most_confused() == [(1, 2, 1), (2, 1, 1)]


# -- the model's output width ------------------------------------------------------------------
def build_too_wide(*, dim, num_classes, padding="pre"):
    import keras

    from embcache.models import inputs

    x = inputs(dim)
    pooled = keras.layers.GlobalAveragePooling1D()(x["embedded"])
    out = keras.layers.Dense(num_classes + 3, activation="softmax")(pooled)
    return keras.Model(x, out)


def test_a_model_of_the_wrong_output_width_is_refused_before_training(store, tmp_path):
    import embcache

    with pytest.raises(embcache.ModelError, match=r"outputs shape \(6,\) per document but the "
                                                  r"store has 3 labels"):
        embcache.train(str(store), build_too_wide, str(tmp_path / "r"), progress=False)
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()
    assert not list(tmp_path.glob(".r.lock*"))  # no lock file left by the failed call


# -- Ctrl-C at any moment of train -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("point", ["train:tracing-train_step", "train:tracing-test_step",
                                   "train:epoch-end"])
def test_ctrl_c_ends_train_within_seconds_at_every_moment(store, tmp_path, point):
    out = tmp_path / "run"
    cmd = [*CLI, "train", "--store", str(store), "--model", "fasttext", "--out", str(out), "-q",
           "--epochs", "3", "--memory-mb", "0"]
    proc, _flag = paused(cmd, point, tmp_path)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)  # the flag stays: the job would wait forever, not go on
    stdout, stderr = proc.communicate(timeout=60)
    assert time.time() - t0 < 20
    assert proc.returncode == 130
    assert one_error_line(stdout + stderr).startswith("Error: Interrupted: training stopped")
    assert not out.exists() and not (tmp_path / ".run.partial").exists()


# -- a store cut while its metadata was written -------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("limit", [600, 1200, 1600])
def test_a_store_cut_in_its_first_kilobytes_is_recreated_on_rerun(tmp_path, vectors_file,
                                                                    limit):
    """A file-size limit of ``limit`` bytes cuts the store's metadata documents (the group's is
    about 1.7 KB once complete): the rerun recreates or resumes it, never calls it malformed."""
    from tests.helpers import make_folder_corpus

    make_folder_corpus(tmp_path / "corpus", docs_per_label=20)
    out = tmp_path / "s.zarr"
    args = [*CLI, "embed-corpus", "--corpus", str(tmp_path / "corpus"), "--vectors",
            str(vectors_file[0]), "--out", str(out), "-q", "--chunk-docs", "16", "--workers", "1"]

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(args, capture_output=True, text=True, preexec_fn=small_files)
    assert r.returncode == 1 and one_error_line(r.stdout + r.stderr).startswith(
        "Error: File too large: store")
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    code, text = cli("verify", out, "-q")
    assert code == 0, text


def test_lock_files_go_with_their_last_holder(tmp_path):
    """The last holder removes the lock file; a reader among readers leaves it to the others; a
    writer refused while another holds it leaves the holder's file alone."""
    from embcache.cache.errors import EmbcacheError, StoreError
    from embcache.cache.locks import exclusive, lock_path, reading

    target = tmp_path / "s.zarr"
    target.mkdir()
    path = lock_path(target)
    with exclusive(target, "Store s.zarr"):
        assert path.exists()
        with pytest.raises(EmbcacheError, match="being written by another process"):
            with exclusive(target, "Store s.zarr"):
                pass
        assert path.exists()  # the refused one did not remove the holder's file
    assert not path.exists()
    with reading(str(target)):
        with pytest.raises(EmbcacheError, match="being read by another process"):
            with exclusive(target, "Store s.zarr"):
                pass
        with reading(str(target)):
            pass
        assert path.exists()  # the outer reader still holds it
    assert not path.exists() and not list(tmp_path.glob(".s.zarr.lock*"))
    with exclusive(target, "Store s.zarr"):
        with pytest.raises(StoreError, match="is being written"):
            with reading(str(target)):
                pass
    assert not path.exists()


def test_a_dead_readers_record_is_ignored(tmp_path):
    """A reader killed with its record left behind is not named as reading: once its process
    is gone, a refused writer names only live readers (or the writer that holds the lock)."""
    import json
    import os
    import subprocess

    from embcache.cache.errors import EmbcacheError
    from embcache.cache.locks import exclusive, lock_path, reading

    target = tmp_path / "s.zarr"
    target.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = lock_path(target).with_name(f".s.zarr.lock.reader-{dead.pid}")
    stale.write_text(json.dumps({"pid": dead.pid, "command": "embcache train (killed)"}))
    with exclusive(target, "Store s.zarr"):
        with pytest.raises(EmbcacheError, match="being written by another process") as e:
            with exclusive(target, "Store s.zarr"):
                pass
        assert "killed" not in str(e.value)
    with reading(str(target)):
        with pytest.raises(EmbcacheError) as e:
            with exclusive(target, "Store s.zarr"):
                pass
        assert f"(pid {os.getpid()}:" in str(e.value) and "more" not in str(e.value)
        assert "killed" not in str(e.value)
    with exclusive(target, "Store s.zarr"):  # and nothing holds it now: a writer may go
        pass


def test_a_store_in_a_folder_without_write_access_is_read_without_a_lock(tmp_path, monkeypatch,
                                                                          vectors_file):
    """A read-only share: the lock file cannot be created, so the store is read without it
    (nobody can replace it from here either); reading works and leaves nothing behind."""
    import errno

    import embcache
    from embcache.cache import locks
    from tests.helpers import small_store

    store = small_store(tmp_path, vectors_file[0], docs_per_label=8, val_frac=0.25,
                        test_frac=0.25)

    def read_only(path, mode):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(locks, "_lock", read_only)
    batches = list(embcache.dataset(str(store), "train", batch_size=4))
    assert batches
    code, out = cli("info", store)
    assert code == 0, out
    assert not list(tmp_path.glob(".s.zarr.lock*"))
