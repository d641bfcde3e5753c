"""The bad-input battery: every case is a command a user could type against broken or hostile
input. Each must exit non-zero with exactly one ``Error:`` line (click's own usage errors add
their usage lines), no traceback, no new output, and nothing the user already had changed.

Kill -9 cases, which need a second process, are in ``test_train.py`` (train) and at the end of
this file (score).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from embcache.cache.locks import exclusive
from embcache.jobs.cli import main
from embcache.jobs.config import TrainConfig
from embcache.jobs.runs import card_digest
from embcache.jobs.train import train
from tests.helpers import paused, small_store, write_vectors


@pytest.fixture(scope="module")
def env(tmp_path_factory, vectors_file):
    """A store, a trained run, an incompatible run, an unlabelled store, earlier predictions."""
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.settings import EmbedSettings
    from embcache.jobs.embed_corpus import embed_corpus

    root = tmp_path_factory.mktemp("battery")
    vectors = vectors_file[0]
    store = small_store(root, vectors, docs_per_label=20, val_frac=0.3, test_frac=0.3)
    cfg = TrainConfig(epochs=1)
    train(str(store), "fasttext", str(root / "runs" / "ft"), config=cfg, progress=False)
    short = root / "short.zarr"
    embed_corpus(CorpusSpec(str(root / "corpus")), str(vectors), str(short), workers=1,
                 progress=False, settings=EmbedSettings(max_len=40))
    train(str(short), "fasttext", str(root / "runs" / "short"), config=cfg, progress=False)
    (root / "lines.txt").write_text("the cat sat\nthe dog ran\n")
    embed_corpus(CorpusSpec(str(root / "lines.txt")), str(vectors), str(root / "u.zarr"),
                 workers=1, progress=False)
    result = CliRunner().invoke(main, ["score", "-q", "--models", str(root / "runs" / "ft"),
                                       "--input", str(store), "--out", str(root / "prev.csv")])
    assert result.exit_code == 0, result.output
    return {"root": root, "vectors": vectors, "store": store, "run": root / "runs" / "ft",
            "short_run": root / "runs" / "short", "unlabelled": root / "u.zarr",
            "prev": root / "prev.csv"}


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what "nothing lost" is checked against)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


# -- helpers that build broken inputs in the case's own tmp folder --------------------------------

def embed(e, t, corpus=None, vectors=None, *extra):
    return ["embed-corpus", "--corpus", corpus or e["root"] / "corpus",
            "--vectors", vectors or e["vectors"], "--out", t / "out.zarr", "-q", *extra]


def text_file(t, name, content):
    (t / name).write_text(content)
    return t / name


def truncated_gz_vectors(e, t):
    data = gzip.compress(Path(e["vectors"]).read_bytes())
    (t / "v.txt.gz").write_bytes(data[: len(data) // 2])
    return t / "v.txt.gz"


def truncated_tar(e, t):
    with tarfile.open(t / "c.tar.gz", "w:gz") as tar:
        tar.add(e["root"] / "corpus", arcname="corpus")
    data = (t / "c.tar.gz").read_bytes()
    (t / "c.tar.gz").write_bytes(data[: len(data) // 2])
    return t / "c.tar.gz"


def copy_store(e, t, edit=None):
    out = t / "copy.zarr"
    shutil.copytree(e["store"], out)
    if edit:
        meta = json.loads((out / "zarr.json").read_text())
        edit(meta["attributes"])
        (out / "zarr.json").write_text(json.dumps(meta))
    return out


def copy_run(e, t, edit_card=None, reseal=False, name="ft"):
    out = t / name
    shutil.copytree(e["run"], out)
    if edit_card:
        card = json.loads((out / "model.json").read_text())
        edit_card(card)
        if reseal:  # a forger who recomputes the checksum: the content checks must still catch it
            card["card_sha256"] = card_digest(card)
        (out / "model.json").write_text(json.dumps(card))
    return out


def broken_card(e, t):
    out = copy_run(e, t)
    (out / "model.json").write_text("{")
    return out


def swap_model(e, t):
    out = copy_run(e, t)
    with open(out / "model.keras", "ab") as f:
        f.write(b"\0")
    return out


def score(e, t, models, inp=None, *extra):
    return ["score", "-q", "--models", ",".join(map(str, models)),
            "--input", inp or e["store"], "--out", t / "p.csv", *extra]


def train_args(e, t, *extra, store=None):
    return ["train", "-q", "--store", store or e["store"], "--model", "fasttext",
            "--out", t / "run", "--epochs", "1", *extra]


def set_in(d, path, value):
    *head, last = path.split(".")
    for k in head:
        d = d[k]
    d[last] = value


CASES = {
    # vectors: missing, empty, truncated, malformed
    "vectors-missing": (lambda e, t: embed(e, t, None, t / "none.txt"), 1, "Vectors file not found"),
    "vectors-empty": (lambda e, t: embed(e, t, None, text_file(t, "v.txt", "")), 1, "v.txt"),
    "vectors-truncated-gz": (lambda e, t: embed(e, t, None, truncated_gz_vectors(e, t)), 1,
                             "v.txt.gz"),
    "vectors-non-numeric": (lambda e, t: embed(e, t, None, text_file(t, "v.txt", "a 1 2\nb 1 x\n")),
                            1, "line 2"),
    "vectors-ragged": (lambda e, t: embed(e, t, None, text_file(t, "v.txt", "a 1 2\nb 1\n")), 1,
                       "line 2: expected a word and 2 values"),
    # corpora: missing, empty, truncated, malformed
    "corpus-missing": (lambda e, t: embed(e, t, t / "none"), 1, "Corpus not found"),
    "corpus-empty": (lambda e, t: embed(e, t, text_file(t, "c.txt", "")), 1, "holds no documents"),
    "corpus-truncated-tar": (lambda e, t: embed(e, t, truncated_tar(e, t)), 1, "c.tar.gz"),
    "corpus-csv-no-such-column": (
        lambda e, t: embed(e, t, text_file(t, "c.csv", "text,label\nhi,a\n"), None,
                           "--text-column", "text", "--label-column", "topic"), 1, "'topic'"),
    "corpus-jsonl-bad-line": (
        lambda e, t: embed(e, t, text_file(t, "c.jsonl", '{"text": "hi"}\n{"text": \n')), 1,
        "line 2"),
    "corpus-unknown-format": (lambda e, t: embed(e, t, text_file(t, "c.xyz", "hi\n")), 1,
                              "Cannot tell the format"),
    # options
    "option-max-len-0": (lambda e, t: embed(e, t, None, None, "--max-len", "0"), 2, "--max-len"),
    "option-val-frac-1.5": (lambda e, t: embed(e, t, None, None, "--val-frac", "1.5"), 2,
                            "--val-frac"),
    "option-epochs-0": (lambda e, t: train_args(e, t, "--epochs", "0"), 2, "--epochs"),
    "option-unknown-model": (lambda e, t: train_args(e, t, "--model", "nosuch"), 1,
                             "Unknown model 'nosuch'"),
    "option-unknown-param": (lambda e, t: train_args(e, t, "--param", "nosuch=1"), 1,
                             "no hyperparameter 'nosuch'"),
    "option-output-format": (lambda e, t: score(e, t, [e["run"]])[:-1] + [t / "p.xlsx"], 1,
                             "p.xlsx"),
    # stores: missing, unlabelled, incomplete, tampered
    "store-missing": (lambda e, t: train_args(e, t, store=t / "none.zarr"), 1, "Store not found"),
    "store-unlabelled": (lambda e, t: train_args(e, t, store=e["unlabelled"]), 1, "has no labels"),
    "store-incomplete": (
        lambda e, t: train_args(e, t, store=copy_store(e, t, lambda a: a.update(complete=False))),
        1, "is incomplete"),
    "store-tampered-attribute": (
        lambda e, t: train_args(e, t, store=copy_store(e, t, lambda a: a.update(max_len="long"))),
        1, "malformed attribute `max_len`"),
    "store-num-docs-edited": (
        lambda e, t: train_args(e, t, store=copy_store(e, t, lambda a: a.update(num_docs=10_000_000))),
        1, "give array `offsets` the shape (10000000,), but it has"),
    "store-tampered-vectors": (
        lambda e, t: train_args(e, t, store=copy_store(e, t, lambda a: a["vectors"].pop("fingerprint"))),
        1, "`vectors.fingerprint` (missing)"),
    # cards and models: tampered, forged, swapped, old
    "card-edited": (
        lambda e, t: score(e, t, [copy_run(e, t, lambda c: set_in(c, "store.max_len", 80))]), 1,
        "was edited after training"),
    "card-forged-malformed": (
        lambda e, t: score(e, t, [copy_run(e, t, lambda c: set_in(c, "store.padding", "middle"),
                                           reseal=True)]), 1, "malformed attribute `padding`"),
    "card-forged-labels": (
        lambda e, t: score(e, t, [copy_run(e, t, lambda c: set_in(c, "store.label_names", ["a"]),
                                           reseal=True)]), 1, "predicts 3 classes"),
    "card-old-version": (
        lambda e, t: score(e, t, [copy_run(e, t, lambda c: c.update(card_version=2), reseal=True)]),
        1, "has version 2"),
    "card-not-json": (lambda e, t: score(e, t, [broken_card(e, t)]), 1, "is not valid JSON"),
    "model-swapped": (lambda e, t: score(e, t, [swap_model(e, t)]), 1, "does not match its card"),
    # incompatible models and inputs
    "models-incompatible": (lambda e, t: score(e, t, [e["run"], e["short_run"]]), 1,
                            "were trained on differently embedded data"),
    "store-embedded-differently": (lambda e, t: score(e, t, [e["short_run"]]), 1,
                                   "was embedded differently"),
    "raw-input-without-vectors": (
        lambda e, t: score(e, t, [e["run"]], text_file(t, "new.txt", "the cat\n")), 1,
        "needs --vectors"),
    "raw-input-other-vectors": (
        lambda e, t: score(e, t, [e["run"]], text_file(t, "new.txt", "the cat\n"), "--vectors",
                           (write_vectors(t / "other.txt", seed=9), t / "other.txt")[1]), 1,
        "are not the ones the models were trained with"),
    # paths that cannot be written
    "cache-dir-is-a-file": (
        lambda e, t: embed(e, t, None, None, "--cache-dir", text_file(t, "afile", "x")), 2,
        "--cache-dir"),
    "metrics-dir-is-a-file": (
        lambda e, t: score(e, t, [e["run"]], None, "--metrics-dir", text_file(t, "afile", "x")), 2,
        "--metrics-dir"),
    "out-under-a-file": (
        lambda e, t: embed(e, t)[:5] + ["--out", text_file(t, "afile", "x") / "o.zarr", "-q"], 1,
        "a folder you can write to?"),
    # concurrent writers (the other writer holds the lock)
    "concurrent-embed": (lambda e, t: ("lock", t / "out.zarr", embed(e, t)), 1,
                         "is being written by another process"),
    "concurrent-train": (lambda e, t: ("lock", t / "run", train_args(e, t)), 1,
                         "is being written by another process"),
    "existing-run-folder": (lambda e, t: train_args(e, t)[:-4] + ["--out", e["run"]], 1,
                            "already holds a trained model"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_error_line(env, tmp_path, case):
    make, code, fragment = CASES[case]
    before = digest(env["root"])
    args = make(env, tmp_path)
    lock = None
    if args[0] == "lock":
        _, target, args = args
        lock = exclusive(target, str(target))
        lock.__enter__()
    try:
        result = CliRunner().invoke(main, list(map(str, args)))
    finally:
        if lock:
            lock.__exit__(None, None, None)
    out = result.output
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert result.exit_code == code, out
    assert len(errors) == 1 and fragment in errors[0], out
    assert "Traceback" not in out and not isinstance(result.exception, (AssertionError, KeyError,
                                                                         TypeError, ValueError))
    if code == 1:  # our own errors are one line and nothing else
        assert out.strip() == errors[0], out
    assert not (tmp_path / "out.zarr" / "zarr.json").exists()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "run").exists()
    assert digest(env["root"]) == before  # nothing the user had was changed


def test_the_battery_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.slow
def test_kill_9_during_score_keeps_the_previous_predictions(env, tmp_path):
    """A score killed mid-run leaves the earlier predictions file as it was and no partial one
    in its place; the next run removes the dead run's hidden temporary file."""
    out = tmp_path / "p.csv"
    shutil.copy(env["prev"], out)
    before = out.read_bytes()
    cmd = [sys.executable, "-m", "embcache.jobs.cli", "score", "-q", "--models", str(env["run"]),
           "--input", str(env["store"]), "--out", str(out), "--batch-size", "1"]
    # Killed right after its first rows are written (it waits there: embcache.cache.hooks).
    proc, _flag = paused(cmd, "score:rows-written", tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert out.read_bytes() == before
    assert list(tmp_path.glob(".p.csv.*.tmp"))  # the killed run's partial file, hidden
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".p.csv.*.tmp"))
    assert out.read_bytes().count(b"\n") == before.count(b"\n")
