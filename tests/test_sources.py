"""Representations are one class family (cache/sources.py): the built-in three answer the same
questions, and a new representation is one subclass, picked by embed-corpus and score alike."""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from embcache.cache.embed import BlockResult
from embcache.cache.meta import VectorsInfo
from embcache.cache.rows import encode_rows
from embcache.cache.settings import EmbedSettings
from embcache.cache.sources import (
    SOURCES,
    EmbeddingSource,
    SourceArgs,
    WordVectorsSource,
    open_source,
    source_for,
)
from embcache.cache.store import open_store
from embcache.jobs.embed_corpus import embed_corpus


class ToyEmbedder:
    """Each word's vector from its CRC-32: no file at all."""

    def __init__(self, settings: EmbedSettings):
        self.settings = settings

    def embed(self, texts: list[str]) -> BlockResult:
        docs = [t.lower().split()[: self.settings.max_len] for t in texts]
        ids = np.array([zlib.crc32(w.encode()) & 0x7FFFFFFF for d in docs for w in d], np.int64)
        vectors = np.stack([(ids >> k) % 7 - 3.0 for k in range(4)], axis=1).astype(np.float32)
        lengths = np.array([len(d) for d in docs], np.int32)
        return BlockResult(encode_rows(vectors.reshape(-1, 4), self.settings.dtype), lengths,
                           int(lengths.sum()), 0, ids.astype(np.int32))


@dataclass(eq=False)
class ToySource(EmbeddingSource):
    kind = "toy"

    @classmethod
    def claims(cls, args: SourceArgs) -> bool:
        return str(args.vectors).endswith(".toy")

    @classmethod
    def wrote(cls, meta) -> bool:
        return meta.vectors.source.endswith(".toy")

    @classmethod
    def open(cls, args: SourceArgs, settings: EmbedSettings) -> ToySource:
        return cls(VectorsInfo(fingerprint="toy-v1", dim=4, vocab_size=0,
                               source=Path(str(args.vectors)).name), settings)

    @classmethod
    def reopen(cls, meta, args: SourceArgs) -> ToySource:
        return cls.open(args, meta.settings)

    def _load(self):
        return ToyEmbedder(self.settings)


@pytest.fixture
def toy():
    assert SOURCES[0] is ToySource  # defining it registered it, asked first
    yield ToySource
    SOURCES.remove(ToySource)


def test_a_new_representation_is_one_class(toy, tmp_path, folder_corpus, vectors_file):
    out = tmp_path / "toy.zarr"
    embed_corpus(str(folder_corpus), "my.toy", str(out), workers=1, progress=False,
                 settings=EmbedSettings(max_len=12))
    store = open_store(str(out))
    assert store.dim == 4 and store.meta.vectors.fingerprint == "toy-v1"
    assert store.meta.lexical == {"ids": "tokenizer ids"}
    again = source_for(store.meta, vectors="my.toy")
    assert isinstance(again, ToySource) and again.settings == store.meta.settings
    # the built-in ones are still found for their own files and stores
    words = open_source(str(vectors_file[0]), settings=EmbedSettings())
    assert isinstance(words, WordVectorsSource)


def test_a_source_travels_to_workers_without_what_it_loaded(vectors_file):
    source = open_source(str(vectors_file[0]), settings=EmbedSettings(max_len=5))
    loaded = source.embedder()
    copy = pickle.loads(pickle.dumps(source))
    assert copy == source and copy._loaded is None and source.embedder() is loaded
    text = ["the cat sat on the mat today"]
    np.testing.assert_array_equal(copy.embedder().embed(text).tokens, loaded.embed(text).tokens)
