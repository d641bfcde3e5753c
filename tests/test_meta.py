"""The store contract: StoreMeta round-trips, refuses malformed attributes by name; the store
writer resumes only the same job and never deletes a remote store it cannot open; option defaults
have one home; the private Keras names multi-worker training needs are still there."""

from __future__ import annotations

import copy

import click
import numpy as np
import pytest

from embcache.cache.errors import EmbcacheError, StoreError
from embcache.cache.layout import new_meta
from embcache.cache.meta import SplitSettings, StoreMeta, StoreTotals, VectorsInfo
from embcache.cache.settings import EmbedSettings
from embcache.cache.store import open_store
from embcache.cache.writer import StoreWriter
from embcache.jobs.cli import main

VECTORS = VectorsInfo(fingerprint="f" * 64, dim=8, vocab_size=20, source="tiny.txt")


def meta(**changes) -> StoreMeta:
    kw = dict(settings=EmbedSettings(max_len=12), vectors=VECTORS, split=SplitSettings(),
              corpus={"path": "/c", "format": "lines", "strip_headers": False}, label_names=None,
              num_docs=10, chunk_docs=4)
    kw.update(changes)
    return new_meta(**kw)


def test_round_trip_through_attributes():
    m = meta(label_names=["a", "b"])
    assert StoreMeta.from_attrs(m.to_attrs(), "x") == m
    done = m.finished(StoreTotals(num_tokens=10, oov_tokens=1, kept_tokens=9,
                                  split_counts={"train": 8, "val": 1, "test": 1},
                                  created="2026-11-25T00:00:00+00:00", seconds=1.5))
    attrs = done.to_attrs()
    assert attrs["complete"] is True and attrs["oov_rate"] == 0.1 and done.num_chunks == 3
    assert not {"num_chunks", "labelled", "strip_headers", "job"} & attrs.keys()  # each fact once
    assert StoreMeta.from_attrs(attrs, "x") == done
    # The layout is decided in one place: blocks own whole token chunks.
    assert m.block_rows % m.token_chunk == 0 and m.block_rows >= m.chunk_docs * m.max_len


@pytest.mark.parametrize("edit, field", [
    (lambda a: a.pop("max_len"), "max_len"),
    (lambda a: a.update(max_len="1000"), "max_len"),
    (lambda a: a.update(max_len=0), "max_len"),
    (lambda a: a.update(padding="middle"), "padding"),
    (lambda a: a["oov"].update(policy="random"), "oov.policy"),
    (lambda a: a["vectors"].pop("fingerprint"), "vectors.fingerprint"),
    (lambda a: a["tokenizer"].update(lower="yes"), "tokenizer.lower"),
    (lambda a: a["split"].update(val_frac="a tenth"), "split.val_frac"),
    (lambda a: a.update(num_docs=True), "num_docs"),
    (lambda a: a.update(label_names=[]), "label_names"),
    (lambda a: a.update(dim=9), "dim"),
])
def test_malformed_attributes_are_named(edit, field):
    attrs = copy.deepcopy(meta(label_names=["a"]).to_attrs())
    edit(attrs)
    with pytest.raises(StoreError, match=f"Store s.zarr.*{field}") as e:
        StoreMeta.from_attrs(attrs, "Store s.zarr")
    assert "\n" not in str(e.value)


def test_contract_differences_name_what_differs():
    a, b = meta(), meta(settings=EmbedSettings(max_len=40, oov="mean"))
    assert a.contract_differences(a) == []
    assert a.contract_differences(b) == ["max_len 12 vs 40", "oov ('zero', 0) vs ('mean', 0)"]
    # dtype and the physical layout are not part of what a model sees.
    assert a.contract_differences(meta(settings=EmbedSettings(max_len=12, dtype="float32"),
                                       chunk_docs=2)) == []


def test_writer_creates_resumes_and_finishes(tmp_path):
    url = str(tmp_path / "s.zarr")
    m = meta()
    w = StoreWriter.open(url, m)
    assert w.resumed == 0 and not w.done.any() and len(w.done) == 3
    with pytest.raises(StoreError, match="incomplete"):
        open_store(url)
    w.group["chunk_stats"][0] = [4, 5, 1, 5]  # block 0 committed
    again = StoreWriter.open(url, m)
    assert again.resumed == 1 and again.done.tolist() == [True, False, False]
    with pytest.raises(StoreError, match=r"different settings \(settings differ\); rerun the "
                                         "command that wrote it, or pass `overwrite=True`"):
        StoreWriter.open(url, meta(settings=EmbedSettings(max_len=13)))
    with pytest.raises(StoreError, match="2 chunks were not written"):
        again.finish(1.0)
    again.group["chunk_stats"][1:] = np.array([[4, 4, 0, 4], [2, 2, 0, 2]])
    final = again.finish(2.0)
    assert final.complete and final.totals.num_tokens == 11 and final.totals.oov_tokens == 1
    assert open_store(url).meta == final
    with pytest.raises(StoreError, match="already exists and is complete; pass `overwrite=True`"):
        StoreWriter.open(url, m)
    assert StoreWriter.open(url, m, overwrite=True).resumed == 0


def test_a_remote_store_that_cannot_be_opened_is_never_deleted(monkeypatch):
    import zarr

    import embcache.cache.writer as writer_mod

    removed = []
    monkeypatch.setattr(writer_mod, "remove_store", removed.append)

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(zarr, "open_group", unreachable)
    with pytest.raises(StoreError, match="Cannot open s3://bucket/s.zarr to resume it: "
                                         "ConnectionError: no route to host"):
        writer_mod._resume("s3://bucket/s.zarr", meta())
    assert removed == []


def test_option_defaults_come_from_the_typed_settings():
    from embcache.jobs.config import TrainConfig
    from embcache.jobs.score import ScoreConfig

    def defaults(command):
        return {p.name: p.default for p in main.commands[command].params
                if isinstance(p, click.Option)}

    embed, train, score = defaults("embed-corpus"), defaults("train"), defaults("score")
    e, s = EmbedSettings(), SplitSettings()
    assert (embed["padding"], embed["oov"], embed["dtype"]) == (e.padding, e.oov, e.dtype)
    # max_len and truncating default by the kind of vectors (word vectors: EmbedSettings; an
    # encoder: 256 tokens, truncated at the end); the help names both.
    assert embed["max_len"] is None and embed["truncating"] is None
    helps = {p.name: p.help for p in main.commands["embed-corpus"].params}
    assert f"[default: {e.max_len}; with --encoder 256" in helps["max_len"]
    assert f"[default: {e.truncating}; with --encoder post" in helps["truncating"]
    assert (embed["val_frac"], embed["test_frac"], embed["seed"]) == (s.val_frac, s.test_frac, s.seed)
    t = TrainConfig()
    for name in ("epochs", "batch_size", "learning_rate", "patience", "seed", "shuffle_docs",
                 "steps_per_execution", "length_buckets", "strategy"):
        assert train[name] == getattr(t, name), name
    c = ScoreConfig()
    assert (score["batch_size"], score["top_k"], score["ensemble"]) == (c.batch_size, c.top_k,
                                                                       c.ensemble)
    from embcache.cache.dataset import Batching
    from embcache.cache.stream import SHUFFLE_DOCS

    assert Batching().shuffle_docs == SHUFFLE_DOCS == t.shuffle_docs


def test_keras_still_has_what_multi_worker_training_uses():
    """Fails loudly on a Keras upgrade that moves the private names (see jobs/multiworker.py)."""
    import keras

    from embcache.jobs.multiworker import KERAS_CHECKED, missing_private_api

    assert missing_private_api() == [], (
        f"Keras {keras.__version__} moved names jobs/multiworker.py relies on (checked with "
        f"{KERAS_CHECKED}); port MultiWorker.build and _patch_keras_multi_worker_reduce")


def test_a_missing_private_name_is_one_clear_error(monkeypatch):
    import embcache.jobs.multiworker as mw

    monkeypatch.setattr(mw, "PRIVATE_API", (*mw.PRIVATE_API, "keras.src.nowhere.gone"))
    assert mw.missing_private_api() == ["keras.src.nowhere.gone"]
    with pytest.raises(EmbcacheError, match=r"needs Keras internals .* \(keras.src.nowhere.gone\)"):
        mw.check_keras()
