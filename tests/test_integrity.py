"""Integrity: a store damaged after it was completed (a chunk deleted, overwritten with garbage or
cut short) is never read as if it were whole. Every job says which chunk, in one line; verify
finds every fault; rerunning embed-corpus rewrites only the damaged blocks, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli, one_error_line, small_store

DAMAGE = ("deleted", "garbage", "truncated")
# The embed-corpus options small_store uses (the repair must be the same command).
EMBED = ["--max-len", "160", "--chunk-docs", "16", "--val-frac", "0.25", "--test-frac", "0.25",
         "--workers", "1", "-q"]




def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:
        path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors_file):
    """A pristine store (8 blocks of 16 documents), its corpus, and a trained run. Unsharded: one
    object per chunk (tests/test_shards.py damages and repairs sharded stores)."""
    root = tmp_path_factory.mktemp("integrity")
    store = small_store(root, vectors_file[0], docs_per_label=40, val_frac=0.25, test_frac=0.25,
                        shard_blocks=0)
    code, out = cli("train", "--store", store, "--model", "fasttext", "--epochs", "1",
                    "--out", root / "run", "-q")
    assert code == 0, out
    return root, store, vectors_file[0]


@pytest.fixture
def copy(built, tmp_path):
    target = tmp_path / "s.zarr"
    shutil.copytree(built[1], target)
    return target


def arrays_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store but the group's attributes (they hold the creation time)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.relative_to(store) != Path("zarr.json")}


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGE)
def test_train_score_scorer_and_dataset_name_the_damaged_chunk(built, copy, how):
    import embcache

    root = built[0]
    damage(copy / "tokens" / "c" / "2" / "0", how)
    wanted = "chunk tokens/c/2/0 is"
    # train: from memory (the split fits) and streamed through tf.data (--memory-mb 0)
    for extra in ([], ["--memory-mb", "0"]):
        code, out = cli("train", "--store", copy, "--model", "fasttext", "--epochs", "1",
                        "--out", copy.parent / f"r{len(extra)}", "-q", *extra)
        assert code == 1
        line = one_error_line(out)
        assert wanted in line and "documents 32-47" in line and "embcache verify" in line
        assert not (copy.parent / f"r{len(extra)}").exists()
    code, out = cli("score", "--models", root / "run", "--input", copy, "--out",
                    copy.parent / "p.csv", "-q")
    assert code == 1 and wanted in one_error_line(out)
    assert not (copy.parent / "p.csv").exists()
    with pytest.raises(embcache.ChunkError, match=wanted):
        embcache.Scorer([root / "run"]).classify(str(copy))
    if how == "deleted":  # found by the listing when the store is opened
        with pytest.raises(embcache.ChunkError, match=wanted):
            embcache.dataset(str(copy), "train")
    else:  # found when the chunk is read: tf.data wraps it, pipeline_errors() unwraps it
        ds = embcache.dataset(str(copy), "train")
        with pytest.raises(embcache.ChunkError, match=wanted), embcache.pipeline_errors():
            for _ in ds:
                pass


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGE)
def test_verify_finds_it_and_embed_corpus_repairs_byte_for_byte(built, copy, how):
    root, store, vectors = built
    damage(copy / "tokens" / "c" / "5" / "0", how)
    damage(copy / "doc_ids" / "c" / "1", how)
    code, out = cli("verify", copy, "--json")
    assert code == 1
    report = json.loads(out)
    faults = {f["key"]: f for f in report["faults"]}
    problem = "missing" if how == "deleted" else "damaged"
    assert set(faults) == {"tokens/c/5/0", "doc_ids/c/1"}, faults
    assert all(f["problem"] == problem for f in faults.values())
    assert faults["tokens/c/5/0"]["docs"] == [80, 96] and faults["doc_ids/c/1"]["docs"] == [16, 32]
    assert report["damaged_blocks"] == [1, 5] and report["checksummed"] and not report["ok"]

    code, out = cli("embed-corpus", "--corpus", root / "corpus", "--vectors", vectors, "--out",
                    copy, *EMBED)  # without --repair: refused, after the listing only
    assert code == 1 and "--repair" in one_error_line(out)
    code, out = cli("embed-corpus", "--corpus", root / "corpus", "--vectors", vectors, "--out",
                    copy, *EMBED, "--repair")
    assert code == 0, out
    assert "repaired 2 damaged of 8 chunks" in out
    assert arrays_bytes(copy) == arrays_bytes(store)
    code, out = cli("verify", copy, "-q")
    assert code == 0 and "OK: every chunk is present and intact" in out


@pytest.mark.slow
def test_repair_refuses_other_settings_and_an_intact_store_is_left_alone(built, copy):
    root, _, vectors = built
    damage(copy / "lengths" / "c" / "3", "garbage")
    code, out = cli("embed-corpus", "--corpus", root / "corpus", "--vectors", vectors,
                    "--out", copy, *EMBED, "--max-len", "100", "--repair")
    assert code == 1
    line = one_error_line(out)
    assert "damaged blocks with different settings" in line and "settings" in line
    code, out = cli("verify", copy, "-q")
    assert code == 1  # the refusal changed nothing: still damaged, still complete
    intact = copy.parent / "intact.zarr"
    shutil.copytree(built[1], intact)
    code, out = cli("embed-corpus", "--corpus", root / "corpus", "--vectors", vectors,
                    "--out", intact, *EMBED, "--repair")
    assert code == 0 and "verified: every chunk is intact, nothing to repair" in out, out


@pytest.mark.slow
def test_a_lost_commit_marker_and_several_faults(built, copy):
    damage(copy / "chunk_stats" / "c" / "6" / "0", "garbage")
    damage(copy / "split" / "c" / "0", "deleted")
    code, out = cli("verify", copy)
    assert code == 1
    assert "chunk chunk_stats/c/6/0 is damaged" in out and "chunk split/c/0 is missing" in out
    assert "2 chunks in 2 blocks (32 documents)" in out


@pytest.mark.slow
def test_a_store_without_checksums_or_manifest_still_trains_scores_and_verifies(
        tmp_path, vectors_file, monkeypatch):
    """As written before this change: no crc32c codec, no ``chunks`` attribute."""
    import zarr

    from embcache.cache import layout as layout_module

    monkeypatch.setattr(layout_module, "CHECKSUM_CHUNKS", False)
    old = small_store(tmp_path, vectors_file[0], docs_per_label=10, val_frac=0.25, test_frac=0.25,
                      shard_blocks=0)  # older stores are unsharded
    group = zarr.open_group(str(old), mode="r+")
    attrs = dict(group.attrs)
    del attrs["chunks"]
    group.attrs.put(attrs)
    code, out = cli("info", old)
    assert code == 0 and "checksums    none" in out, out
    code, out = cli("train", "--store", old, "--model", "fasttext", "--epochs", "1", "--out",
                    tmp_path / "run", "-q")
    assert code == 0, out
    code, out = cli("score", "--models", tmp_path / "run", "--input", old, "--out",
                    tmp_path / "p.csv", "-q")
    assert code == 0, out
    code, out = cli("verify", old, "-q")
    assert code == 0 and "no checksums" in out
    damage(old / "tokens" / "c" / "0" / "0", "garbage")  # still found: zstd cannot decode it
    code, out = cli("verify", old, "-q")
    assert code == 1 and "chunk tokens/c/0/0 is damaged" in out


@pytest.mark.slow
def test_info_says_what_is_checked(built):
    code, out = cli("info", built[1])
    assert code == 0 and "checksums    crc32c on every chunk" in out, out
    code, out = cli("info", built[1], "--json")
    info = json.loads(out)
    assert info["checksummed"] is True and info["chunks"]["tokens"] == 8
