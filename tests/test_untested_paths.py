"""Promises on the paths an outside review found untested: an unreadable store is never deleted,
a damaged chunk keeps its error type across the producer process, a run survives its pictures,
refusing to overwrite reads no chunk, and library readers hold the store's reader lock as the
jobs do. Each test here failed on the code before its fix (the closing note of the issue says
how)."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli, make_folder_corpus, one_error_line, small_store

# The embed-corpus options small_store uses (a rerun must be the same command).
EMBED = ["--max-len", "160", "--chunk-docs", "16", "--val-frac", "0.25", "--test-frac", "0.25",
         "--workers", "1", "-q"]


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors_file):
    """A store of 3 x 30 documents (6 blocks), its corpus and vectors."""
    root = tmp_path_factory.mktemp("paths")
    store = small_store(root, vectors_file[0], docs_per_label=30, val_frac=0.25, test_frac=0.25)
    return root, store, vectors_file[0]


@pytest.fixture
def copy(built, tmp_path):
    target = tmp_path / "s.zarr"
    shutil.copytree(built[1], target)
    return target


def embed_again(built, out, *extra):
    root, _, vectors = built
    return cli("embed-corpus", "--corpus", root / "corpus", "--vectors", vectors, "--out", out,
               *EMBED, *extra)


# -- item 1: a store whose zarr.json cannot be read is refused, never deleted ---------------------

def test_a_store_whose_metadata_cannot_be_read_is_kept(built, copy):
    meta = copy / "zarr.json"
    meta.rename(copy.parent / "zarr.json.saved")
    # chmod 000 does not stop root (CI runs as root); a folder in its place gives an OS error too
    meta.mkdir()
    before = files(copy)
    code, out = embed_again(built, copy)
    assert code == 1, out
    line = one_error_line(out)
    assert f"Cannot read {meta}" in line and "Is a directory" in line and "left as it is" in line
    assert files(copy) == before  # nothing deleted, nothing rewritten
    meta.rmdir()
    (copy.parent / "zarr.json.saved").rename(meta)
    code, out = cli("verify", copy, "-q")
    assert code == 0 and "OK: every chunk is present and intact" in out


# -- item 3: a run is published before its pictures, which are best effort ------------------------

@pytest.mark.slow
def test_a_plotting_failure_leaves_both_runs_of_a_group_published(built, tmp_path, monkeypatch,
                                                                   caplog):
    import embcache
    from embcache.jobs import fit as fit_mod

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(fit_mod, "plot_curves", broken)
    with caplog.at_level(logging.WARNING, logger="embcache"):
        result = embcache.train(str(built[1]), ["fasttext", "cnn"], str(tmp_path / "runs"),
                                config={"epochs": 1})
    for name in ("fasttext", "cnn"):
        run = tmp_path / "runs" / name
        assert (run / "model.json").exists() and (run / "model.keras").exists()
        assert not (run / "curves.png").exists()
    assert len(result.runs) == 2
    warned = [r.getMessage() for r in caplog.records if "could not draw" in r.getMessage()]
    assert len(warned) == 2 and "RuntimeError: no display" in warned[0]
    code, out = cli("score", "--models", tmp_path / "runs" / "cnn", "--input", built[1],
                    "--out", tmp_path / "p.csv", "-q")
    assert code == 0, out  # the published run is whole


# -- item 4: refusing a complete store reads no chunk; repair is explicit --------------------------

@pytest.fixture
def chunk_reads(monkeypatch):
    """Keys of every chunk read through zarr's local store in this process."""
    from zarr.storage import LocalStore

    seen: list[str] = []
    real = LocalStore.get

    async def get(self, key, *args, **kwargs):
        if "/c/" in f"/{key}":
            seen.append(key)
        return await real(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", get)
    return seen


def test_a_refused_rerun_on_a_complete_store_reads_no_chunk(built, copy, chunk_reads):
    before = files(copy)
    code, out = embed_again(built, copy)
    assert code == 1
    line = one_error_line(out)
    assert "already exists and is complete" in line and "--overwrite" in line and "--repair" in line
    assert chunk_reads == []
    code, out = embed_again(built, copy, "--exist-ok")
    assert code == 0 and out.strip().endswith("is already complete: left as it is"), out
    assert chunk_reads == []
    assert files(copy) == before
    code, out = embed_again(built, copy, "--repair")  # verify reads them all: nothing to do
    assert code == 0 and "nothing to repair" in out and len(chunk_reads) > 10
    assert files(copy) == before
    code, out = embed_again(built, copy, "--repair", "--exist-ok")
    assert code == 1 and "at most one of --overwrite, --repair" in one_error_line(out)


def test_a_refusal_names_a_deleted_chunk_from_the_listing(built, copy, chunk_reads):
    (copy / "lengths" / "c" / "2").unlink()
    code, out = embed_again(built, copy)
    assert code == 1
    line = one_error_line(out)
    # 6 blocks: one block per shard by default (at least 4 shard groups)
    assert "inner chunk 2 of shard lengths/c/2 is missing" in line and "--repair" in line
    assert chunk_reads == [] or all(k.startswith("chunk_stats/") for k in chunk_reads)


# -- item 5: library readers hold the reader lock ----------------------------------------------

def test_overwrite_while_a_python_dataset_iterates_is_refused(built, copy):
    import embcache

    before = files(copy)
    batches = iter(embcache.dataset(str(copy), "train", batch_size=1, length_buckets=False))
    next(batches)
    code, out = embed_again(built, copy, "--overwrite")
    assert code == 1
    assert "is being read by another process right now" in one_error_line(out)
    assert files(copy) == before
    for _ in batches:  # the pass ends: the lock goes with it
        pass
    code, out = embed_again(built, copy, "--overwrite")
    assert code == 0, out
    assert not list(copy.parent.glob(".s.zarr.lock*"))


# -- item 2: a damaged chunk is a ChunkError, with its faults, through the producer process --------

@pytest.fixture(scope="module")
def large(tmp_path_factory, vectors_file):
    """A store of 2,400 documents (train split over the producer's 2,048) and a run on it."""
    import embcache
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.settings import EmbedSettings
    from embcache.jobs.embed_corpus import SplitSettings, embed_corpus

    root = tmp_path_factory.mktemp("large")
    make_folder_corpus(root / "corpus", docs_per_label=800, labels=("a", "b", "c"))
    store = root / "s.zarr"
    embed_corpus(CorpusSpec(str(root / "corpus")), str(vectors_file[0]), str(store), workers=1,
                 chunk_docs=128, progress=False, settings=EmbedSettings(max_len=40),
                 split=SplitSettings(val_frac=0.05, test_frac=0.05),
                 shard_blocks=0)  # a chunk per object, named below (sharded: test_shards.py)
    embcache.train(str(store), "fasttext", str(root / "run"), config={"epochs": 1})
    return root, store


@pytest.mark.slow
def test_a_damaged_chunk_is_a_chunk_error_through_the_producer(large, tmp_path, monkeypatch):
    import embcache
    from embcache.cache import dataset as dataset_mod
    from embcache.cache.dataset import _PROCESS_MIN_DOCS
    from embcache.cache.stream import plan_split

    root, store = large
    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    (copy / "tokens" / "c" / "3" / "0").write_bytes(b"garbage" * 100)
    opened = embcache.open_store(str(copy))
    assert plan_split(opened, "train").num_docs >= _PROCESS_MIN_DOCS  # the producer runs it

    def check(e):
        assert [f.key for f in e.value.faults] == ["tokens/c/3/0"]
        assert e.value.faults[0].docs == (384, 512) and "chunk tokens/c/3/0 is damaged" in str(e.value)

    with monkeypatch.context() as m:  # train's val pass too (the chunk holds val documents)
        m.setattr(dataset_mod, "_PROCESS_MIN_DOCS", 1)
        with pytest.raises(embcache.ChunkError) as e:
            embcache.train(str(copy), "fasttext", str(tmp_path / "run"),
                           config={"epochs": 1, "memory_mb": 0})
    check(e)
    assert not (tmp_path / "run").exists()
    with pytest.raises(embcache.ChunkError) as e, embcache.pipeline_errors():
        for _ in embcache.dataset(str(copy), "train"):
            pass
    check(e)
    with pytest.raises(embcache.ChunkError) as e:
        embcache.Scorer([str(root / "run")]).classify(str(copy))
    check(e)
