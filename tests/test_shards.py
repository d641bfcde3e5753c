"""Sharded stores (``--shard-blocks K``): each array's chunks of K blocks in one object, written
whole by one writer. The same values as an unsharded store, far fewer objects, identical whatever
runs the blocks (one process, spawned workers, Dask), resumed after a kill, checked by verify
down to the inner chunk, repaired shard group by shard group, and read in one range per shard."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import EmbcacheError, StoreError
from embcache.cache.integrity import ChunkError
from embcache.cache.settings import EmbedSettings
from embcache.cache.shards import ShardReader
from embcache.cache.store import open_store
from embcache.jobs.embed_corpus import SplitSettings, embed_corpus
from tests.helpers import cli, kill_after_chunks, make_folder_corpus

K = 3  # blocks per shard: 8 blocks of 16 documents -> shard groups of 3, 3 and 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "corpus"
    make_folder_corpus(root, docs_per_label=40, labels=("a", "b", "c"))
    return root


def build(corpus, vectors, out, shard_blocks, **kw):
    settings = kw.pop("settings", EmbedSettings(max_len=160))
    return embed_corpus(CorpusSpec(str(corpus)), str(vectors), str(out), chunk_docs=16,
                        progress=False, settings=settings, shard_blocks=shard_blocks,
                        split=SplitSettings(val_frac=0.25, test_frac=0.25),
                        **{"workers": 1, **kw})


def values(url) -> dict[str, np.ndarray]:
    """Every array's values: the documents' token rows (``tokens``, ``scales``, ``token_ids``
    are address spaces, read document by document) and the per-document arrays whole."""
    store = open_store(str(url))
    out = {name: store.read(name) for name in ("offsets", "lengths", "labels", "split",
                                                 "chunk_stats", "doc_ids")}
    for name in ("tokens", "scales", "token_ids"):
        if name in store.group:
            out[name] = np.concatenate([store.read(name, o, o + n) for o, n in
                                        zip(out["offsets"], out["lengths"])])
    return out


def files(store: Path) -> dict[str, bytes]:
    """Every object of a store but the group's attributes (they hold the creation time)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.relative_to(store) != Path("zarr.json")}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, corpus, vectors_file):
    root = tmp_path_factory.mktemp("pair")
    plain, sharded = root / "plain.zarr", root / "sharded.zarr"
    build(corpus, vectors_file[0], plain, 0)
    build(corpus, vectors_file[0], sharded, K)
    return plain, sharded


def test_sharded_store_holds_the_same_values_in_far_fewer_objects(pair):
    plain, sharded = pair
    a, b = values(plain), values(sharded)
    assert a.keys() == b.keys() and "token_ids" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    meta = open_store(str(sharded)).meta
    assert meta.shard_blocks == K and open_store(str(plain)).meta.shard_blocks == 0
    group = zarr.open_group(str(sharded), mode="r")
    assert group["tokens"].shards == (K * meta.block_rows, meta.dim)
    # One object per array per shard group: the manifest counts shards.
    assert set(meta.totals.chunks.values()) == {meta.num_shards} and meta.num_shards == 3
    assert len(files(sharded)) * 2 < len(files(plain))  # 32 against 72 (array metadata too)


def test_shard_reader_reads_what_zarr_reads(pair):
    group = zarr.open_group(str(pair[1]), mode="r")
    rng = np.random.default_rng(0)
    for name in ("tokens", "token_ids", "offsets", "lengths", "labels", "split", "chunk_stats"):
        array = group[name]
        assert ShardReader.fits(array), name
        reader = ShardReader(array)
        n = array.shape[0]
        for start in [0, n - 1, *rng.integers(0, n, 20).tolist()]:
            stop = min(n, start + int(rng.integers(0, 4 * array.chunks[0])))
            got, want = reader.read(start, stop), np.asarray(array[start:stop])
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=f"{name}[{start}:{stop}]")
    assert not ShardReader.fits(group["doc_ids"])  # strings: read by zarr


@pytest.mark.slow
def test_workers_and_dask_write_the_same_shards(tmp_path, corpus, vectors_file, pair):
    """Every shard is byte-identical whoever writes it."""
    pool, dask = tmp_path / "pool.zarr", tmp_path / "dask.zarr"
    build(corpus, vectors_file[0], pool, K, workers=2)
    build(corpus, vectors_file[0], dask, K, scheduler="local:2")
    want = files(pair[1])
    assert files(pool) == want
    assert files(dask) == want


@pytest.mark.slow
def test_killed_run_resumes_whole_shard_groups(tmp_path, corpus, vectors_file, pair):
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "embcache.jobs.cli", "embed-corpus", "--corpus", str(corpus),
           "--vectors", str(vectors_file[0]), "--out", str(out), "--max-len", "160",
           "--chunk-docs", "16", "--val-frac", "0.25", "--test-frac", "0.25", "--workers", "1",
           "--shard-blocks", str(K), "-q"]
    kill_after_chunks(cmd, out, 1, timeout=120)  # one shard group committed, then SIGKILL
    stats = zarr.open_group(str(out), mode="r")["chunk_stats"][:]
    assert (stats[:K, 0] >= 0).all() and (stats[K:, 0] < 0).all()
    # Without --shard-blocks the rerun continues the store's own layout.
    code, output = cli(*cmd[3:-3], "-q")
    assert code == 0, output
    assert "resumed 3 of 8 chunks" in output
    assert files(out) == files(pair[1])


def test_resume_with_other_shard_blocks_is_refused(tmp_path, corpus, vectors_file):
    out = tmp_path / "s.zarr"
    build(corpus, vectors_file[0], out, K)
    zarr.open_group(str(out), mode="r+").update_attributes({"complete": False})
    with pytest.raises(StoreError, match="shard_blocks differ"):
        build(corpus, vectors_file[0], out, 2)
    with pytest.raises(EmbcacheError, match="Expected an integer >= 0"):
        build(corpus, vectors_file[0], tmp_path / "t.zarr", -1)
    code, output = cli("embed-corpus", "--corpus", corpus, "--vectors", vectors_file[0],
                       "--out", tmp_path / "u.zarr", "--shard-blocks", "x")
    assert code != 0 and "--shard-blocks" in output


def test_verify_names_the_damaged_inner_chunk_and_repair_rewrites_its_group(
        tmp_path, corpus, vectors_file, pair):
    out = tmp_path / "s.zarr"
    shutil.copytree(pair[1], out)
    meta = open_store(str(out)).meta
    # Flip a byte inside shard 1's first inner chunk of `tokens` (blocks 3-5); delete shard 2
    # of `labels` (blocks 6-7).
    shard = out / "tokens" / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "labels" / "c" / "2").unlink()
    code, output = cli("verify", out, "--json")
    report = json.loads(output[output.index("{"):])
    assert code != 0 and not report["ok"]
    damaged = [f for f in report["faults"] if f["problem"] == "damaged"]
    per_block = meta.block_rows // meta.token_chunk
    assert [(f["array"], f["chunk"], f["key"], f["block"]) for f in damaged] == [
        ("tokens", [K * per_block, 0], "tokens/c/1/0", K)]
    assert damaged[0]["docs"] == [K * 16, K * 16 + 16]  # [first, stop)
    missing = {(f["array"], f["block"]) for f in report["faults"] if f["problem"] == "missing"}
    assert missing == {("labels", 6), ("labels", 7)}
    # A read of the damaged rows is one line naming the inner chunk and its shard.
    with pytest.raises(ChunkError, match=r"inner chunk \d+/0 of shard tokens/c/1/0 is damaged"):
        store = open_store(str(out), check_chunks=False)
        store.read("tokens", K * meta.block_rows, K * meta.block_rows + 10)
    summary = build(corpus, vectors_file[0], out, None, repair=True)
    assert summary.repaired_chunks == 3
    assert files(out) == files(pair[1])
    code, output = cli("verify", out)
    assert code == 0, output


def test_a_damaged_shard_index_is_named(tmp_path, pair):
    out = tmp_path / "s.zarr"
    shutil.copytree(pair[1], out)
    shard = out / "offsets" / "c" / "0"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # the index's checksum
    shard.write_bytes(bytes(data))
    code, output = cli("verify", out)
    assert code != 0
    assert "inner chunk 0 of shard offsets/c/0 is damaged (the shard's index is damaged)" in output
    with pytest.raises(ChunkError, match="offsets"):
        open_store(str(out), check_chunks=False).read("offsets", 0, 5)


def test_int8_sharded_store_equals_unsharded(tmp_path, corpus, vectors_file):
    settings = EmbedSettings(max_len=160, dtype="int8")
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    build(corpus, vectors_file[0], a, 0, settings=settings)
    build(corpus, vectors_file[0], b, 2, settings=settings)
    va, vb = values(a), values(b)
    assert "scales" in va
    for name in va:
        np.testing.assert_array_equal(va[name], vb[name], err_msg=name)


@pytest.mark.slow
def test_sharded_store_trains_and_scores_identically(tmp_path, pair):
    """Same batches, same metrics: train and score read a sharded store as an unsharded one."""
    from tests.helpers import stream

    for split in ("train", "test"):
        batches = [list(stream(open_store(str(s)), split, batch_size=16, seed=3, in_process=True))
                   for s in pair]
        assert len(batches[0]) == len(batches[1])
        for (fa, la), (fb, lb) in zip(*batches):
            np.testing.assert_array_equal(fa["embedded"].numpy(), fb["embedded"].numpy())
            np.testing.assert_array_equal(la.numpy(), lb.numpy())
    metrics = []
    for i, s in enumerate(pair):
        run = tmp_path / f"run{i}"
        code, out = cli("train", "--store", s, "--model", "fasttext", "--epochs", "2", "--seed", "1",
                        "--out", run, "-q", "--precision", "float32")
        assert code == 0, out
        (tmp_path / f"s{i}").mkdir()
        code, out = cli("score", "--models", run, "--input", s, "--split", "test",
                        "--out", tmp_path / f"s{i}" / "p.csv", "-q")
        assert code == 0, out
        found = json.loads((tmp_path / f"s{i}" / "metrics.json").read_text())["models"]
        metrics.append(list(found.values()))  # keyed by the run's folder name
    assert metrics[0] == metrics[1]


def test_default_is_recorded_and_an_old_store_keeps_its_layout(tmp_path, corpus, vectors_file,
                                                               pair):
    """Without the option a new store of 8 blocks gets 2 per shard (at least 4 shard groups);
    an unsharded store (as every store before sharding) is resumed and repaired unsharded."""
    from embcache.cache.layout import auto_shard_blocks

    assert [auto_shard_blocks(n) for n in (1, 8, 31, 32, 40, 10_000)] == [1, 2, 7, 8, 8, 8]
    out = tmp_path / "s.zarr"
    build(corpus, vectors_file[0], out, None)
    assert open_store(str(out)).meta.shard_blocks == 2
    code, output = cli("info", out)
    assert code == 0 and "sharded, 2 blocks per shard" in output, output
    old = tmp_path / "old.zarr"
    shutil.copytree(pair[0], old)
    (old / "tokens" / "c" / "0" / "0").unlink()
    summary = build(corpus, vectors_file[0], old, None, repair=True)
    assert summary.repaired_chunks == 1
    assert open_store(str(old)).meta.shard_blocks == 0
    assert files(old) == files(pair[0])
    code, output = cli("info", old)
    assert "unsharded" in output
