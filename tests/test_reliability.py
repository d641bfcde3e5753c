"""Faults beyond bad options: a store replaced under a reader, a full disk, an unreachable object
store, interrupts, and values checked where they enter. Each ends with exit != 0 and exactly one
``Error:`` line (or succeeds correctly), with nothing the user had lost or changed."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from embcache.jobs.cli import main
from tests.helpers import make_folder_corpus, paused, small_store

CLI = [sys.executable, "-m", "embcache.jobs.cli"]


def one_error_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output[-3000:]
    return lines[0]


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    root = tmp_path_factory.mktemp("rel")
    return small_store(root, vectors_file[0], docs_per_label=20, val_frac=0.25, test_frac=0.25)


@pytest.mark.slow
def test_overwriting_a_store_while_train_streams_it_is_refused(tmp_path, store, vectors_file):
    """train waits at the end of its first epoch (a pause point) while the overwrite is tried:
    the refusal is checked with the reader certainly there, then training goes on."""
    out = tmp_path / "run"
    train, flag = paused([*CLI, "train", "--store", str(store), "--model", "fasttext", "--out",
                          str(out), "-q", "--epochs", "2", "--patience", "2"], "train:epoch-end",
                         tmp_path)
    try:
        before = sorted(p.name for p in store.iterdir())
        other = tmp_path / "other"
        make_folder_corpus(other, docs_per_label=5, labels=("x", "y"))
        code, text = cli("embed-corpus", "--corpus", other, "--vectors", vectors_file[0], "--out",
                         store, "--overwrite", "-q")
        assert code == 1
        line = one_error_line(text)
        assert line.startswith(f"Error: Store {store} is being read by another process right now "
                               f"(pid {train.pid}: ")
        assert "train --store" in line
        assert sorted(p.name for p in store.iterdir()) == before
    finally:
        flag.unlink(missing_ok=True)  # training goes on
        stdout, stderr = train.communicate(timeout=300)
    assert train.returncode == 0, stderr[-3000:]
    assert stdout.startswith("Trained fasttext for 2 epochs")
    assert not list(tmp_path.glob(f".{store.name}.lock.reader-*"))  # the record goes with it


def test_a_store_being_written_is_not_read(tmp_path, store):
    from embcache.cache.locks import exclusive

    with exclusive(store, "held by this test"):
        code, text = cli("train", "--store", store, "--model", "fasttext", "--out", tmp_path / "r")
        assert code == 1
        assert one_error_line(text) == (f"Error: Store {store} is being written by another "
                                        "process right now; wait for it to finish")
        code, text = cli("info", store)  # info shows a store being written: no error
        assert code == 0 and "60 of up to 160 tokens" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_file_size_limit_is_one_line_and_the_rerun_resumes(tmp_path):
    import random

    from tests.helpers import write_vectors

    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    vectors = tmp_path / "v.txt"
    write_vectors(vectors, words=words, dim=16)
    folder_corpus = tmp_path / "corpus"
    for label in ("a", "b"):
        (folder_corpus / label).mkdir(parents=True)
        for i in range(24):  # long documents of distinct random vectors: a block's token chunk
            (folder_corpus / label / str(i)).write_text(" ".join(rng.choices(words, k=200)))
    out = tmp_path / "s.zarr"  # (200 KB, incompressible) outgrows the limit below
    args = [*CLI, "embed-corpus", "--corpus", str(folder_corpus), "--vectors", str(vectors),
            "--out", str(out), "-q", "--chunk-docs", "16", "--workers", "1", "--dtype", "float32"]
    env = {**os.environ, "EMBCACHE_CACHE_DIR": str(tmp_path / "vcache")}
    subprocess.run([*CLI, "embed-corpus", "--corpus", str(folder_corpus), "--vectors",
                    str(vectors), "--out", str(tmp_path / "warm.zarr"), "-q"], env=env,
                   check=True, capture_output=True)  # parse the vectors before the limit is set

    def limit():
        # 16 KiB: the metadata documents fit, the first block's token chunk does not.
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    r = subprocess.run(args, env=env, capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_error_line(r.stdout + r.stderr)
    assert line.startswith(f"Error: File too large: store {out}")
    assert "raise the file-size limit and rerun the command" in line
    code, text = cli("info", out, "--json")
    assert code == 0 and json.loads(text)["complete"] is False
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(cli("info", out, "--json")[1])["complete"] is True


@pytest.mark.slow
def test_unreachable_object_store_prints_one_line_and_nothing_after(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    for args in (["info", "s3://no-bucket/s.zarr"],
                 ["train", "--store", "s3://no-bucket/s.zarr", "--out", str(tmp_path / "r")]):
        r = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1
        line = one_error_line(r.stdout + r.stderr)  # and nothing printed at shutdown
        assert line.startswith("Error: Cannot open s3://no-bucket/s.zarr")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_interrupted_train_says_it_does_not_resume(tmp_path, store):
    out = tmp_path / "run"
    # Interrupted mid-training, after its second epoch (it waits there: embcache.cache.hooks).
    proc, _flag = paused([*CLI, "train", "--store", str(store), "--model", "fasttext", "--out",
                          str(out), "-q", "--epochs", "5", "--patience", "5"],
                         "train:epoch-end:2", tmp_path)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = one_error_line(stdout + stderr)
    assert line == ("Error: Interrupted: training stopped and the run folders are as they were "
                    "before; training does not resume: rerun the command to train again from the "
                    "start")
    assert not out.exists()


def test_killed_producer_owner_leaves_no_warning_and_no_segment(tmp_path):
    code = ("import time\nfrom embcache.cache.producer import Slots\n"
            "s = Slots(2, 1024, 4)\nprint(s.shm.name, flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip().lstrip("/")
    assert name and Path("/dev/shm", name).exists()
    os.kill(proc.pid, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and Path("/dev/shm", name).exists():
        time.sleep(0.1)
    assert not Path("/dev/shm", name).exists()  # the tracker still cleans up
    assert "leaked" not in err and "resource_tracker" not in err, err


@pytest.mark.parametrize("line, message", [
    ('{"text": null, "label": "a"}', "field 'text' (text) is null; expected a string"),
    ('{"text": 5, "label": "a"}', "field 'text' (text) is a number (5); expected a string"),
    ('{"text": ["a", "b"], "label": "a"}', "field 'text' (text) is a list ([\"a\", \"b\"]); "
                                           "expected a string"),
    ('{"text": {"a": 1}, "label": "a"}', "field 'text' (text) is an object ({\"a\": 1}); "
                                         "expected a string"),
    ('{"text": "fine", "label": null}', "field 'label' (label) is null; expected a string or a "
                                        "number"),
])
def test_json_values_are_checked(tmp_path, vectors_file, line, message):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "the cat", "label": "b"}\n' + line + "\n")
    out = tmp_path / "o.zarr"
    code, text = cli("embed-corpus", "--corpus", corpus, "--vectors", vectors_file[0], "--out",
                     out, "--label-column", "label", "-q")
    assert code == 1
    assert one_error_line(text) == f"Error: {corpus}, line 2: {message}"
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e39"])
def test_non_finite_vectors_are_refused(tmp_path, folder_corpus, value):
    vectors = tmp_path / "v.txt"
    vectors.write_text(f"the 0.1 0.2\ncat 0.3 {value}\nsat 0.5 0.6\n")
    code, text = cli("embed-corpus", "--corpus", folder_corpus, "--vectors", vectors, "--out",
                     tmp_path / "o.zarr", "-q")
    assert code == 1
    assert one_error_line(text) == (f"Error: {vectors}, line 2: the vector of 'cat' holds nan or "
                                    "inf (or a value beyond float32); every value must be a "
                                    "finite number")
    assert not (tmp_path / "o.zarr").exists()


def test_single_class_store_is_not_trained(tmp_path, vectors_file):
    make_folder_corpus(tmp_path / "c", docs_per_label=20, labels=("only",))
    store = tmp_path / "s.zarr"
    assert cli("embed-corpus", "--corpus", tmp_path / "c", "--vectors", vectors_file[0], "--out",
               store, "-q", "--max-len", "20")[0] == 0
    code, text = cli("train", "--store", store, "--model", "fasttext", "--out", tmp_path / "r")
    assert code == 1
    assert one_error_line(text) == (f"Error: Store {store} has a single class ('only'): a "
                                    "classifier needs at least two; embed a corpus with two or "
                                    "more labels")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_split_on_raw_input_is_refused(tmp_path, store, vectors_file):
    run = tmp_path / "run"
    assert cli("train", "--store", store, "--model", "fasttext", "--out", run, "-q",
               "--epochs", "1")[0] == 0
    raw = tmp_path / "new.txt"
    raw.write_text("the cat sat\n")
    code, text = cli("score", "--models", run, "--input", raw, "--vectors", vectors_file[0],
                     "--split", "test", "--out", tmp_path / "p.csv", "-q")
    assert code == 1
    assert one_error_line(text) == (f"Error: --split test applies to a store; {raw} is raw "
                                    "input, which has no splits")
    assert not (tmp_path / "p.csv").exists()


def test_excel_csv_with_bom_and_crlf(tmp_path, vectors_file):
    corpus = tmp_path / "excel.csv"
    rows = ["label,text"] + [f"{'pos' if i % 2 else 'neg'},the cat sat on the mat {i}"
                             for i in range(10)]
    corpus.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    out = tmp_path / "o.zarr"
    code, text = cli("embed-corpus", "--corpus", corpus, "--vectors", vectors_file[0], "--out",
                     out, "--label-column", "label", "--text-column", "text", "-q")
    assert code == 0, text
    info = json.loads(cli("info", out, "--json")[1])
    assert info["label_names"] == ["neg", "pos"]
