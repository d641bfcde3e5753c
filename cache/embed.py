"""Embed one block of documents and write it into its chunk of the store.

A block is exactly one chunk of documents, so a block's output depends only on its documents and
the settings: any number of workers, in any order, writes an identical store. Memory per block is
its kept tokens' vectors (at most ``chunk_docs x max_len x dim``, a few MB) plus its texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from embcache.cache.lexical import WordIds, word_id
from embcache.cache.meta import StoreMeta
from embcache.cache.rows import encode_rows, split_rows
from embcache.cache.settings import EmbedSettings
from embcache.cache.tokenize import make_tokenizer
from embcache.cache.vectors import VectorTable

if TYPE_CHECKING:
    from embcache.cache.sources import EmbeddingSource

_OOV = -2  # the row id of an out-of-vocabulary token


def oov_vector(table: VectorTable, settings: EmbedSettings) -> np.ndarray | None:
    """The vector for out-of-vocabulary tokens: ``None`` (zeros), one seeded random vector drawn
    with the table's per-dimension spread, or the mean of all vectors."""
    if settings.oov == "zero":
        return None
    if settings.oov == "mean":
        return _column_stats(table.vectors)[0].astype(np.float32)
    _mean, std = _column_stats(table.vectors)
    rng = np.random.default_rng(settings.seed)
    return rng.normal(0.0, std).astype(np.float32)


def _column_stats(vectors: np.ndarray, rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std, reading the (memory-mapped) table a slab at a time."""
    total = np.zeros(vectors.shape[1])
    squares = np.zeros(vectors.shape[1])
    for start in range(0, vectors.shape[0], rows):
        slab = np.asarray(vectors[start:start + rows], dtype=np.float64)
        total += slab.sum(0)
        squares += (slab * slab).sum(0)
    n = vectors.shape[0]
    mean = total / n
    return mean, np.sqrt(np.maximum(squares / n - mean * mean, 0.0))


Row = TypeVar("Row", np.ndarray, list[str])


def truncate(row: Row, max_len: int, truncating: str) -> Row:
    """At most ``max_len`` ids; as Keras ``pad_sequences``, ``pre`` drops from the start."""
    if len(row) <= max_len:
        return row
    return row[-max_len:] if truncating == "pre" else row[:max_len]


@dataclass
class BlockResult:
    # (kept tokens, row_width): every document's kept tokens, in order, no padding, as packed
    # rows of the store's dtype (embcache.cache.rows)
    tokens: np.ndarray
    lengths: np.ndarray  # (n,) int32
    num_tokens: int
    oov_tokens: int
    # (kept tokens,) int32: each kept token's id (the lexical channel, embcache.cache.lexical)
    ids: np.ndarray | None = None

    def starts(self) -> np.ndarray:
        """Each document's first row in ``tokens`` (int64)."""
        starts = np.zeros(len(self.lengths), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=starts[1:])
        return starts


class BlockEmbedder:
    """Tokenize, look up and truncate a block of texts into its kept tokens' vectors (ragged)."""

    def __init__(self, table: VectorTable, settings: EmbedSettings, oov: np.ndarray | None):
        self.settings = settings
        self.tokenize = make_tokenizer(settings.tokenizer)
        self.lookup = table.index.get
        self.vectors = table.vectors
        self.oov = oov
        self.dtype = np.dtype(settings.dtype)
        self.word_ids = WordIds()
        self.words = table.words
        self._row_ids: np.ndarray | None = None

    def row_word_ids(self) -> np.ndarray:
        """Each vocabulary row's word id (:func:`~embcache.cache.lexical.word_id` of its word),
        hashed once per process (1.6 MB for 400k words): a known token's id is then one gather,
        and only out-of-vocabulary words are hashed one by one."""
        if self._row_ids is None:
            self._row_ids = np.fromiter(map(word_id, self.words), dtype=np.int32,
                                        count=len(self.words))
        return self._row_ids

    def token_ids(self, text: str) -> np.ndarray:
        """Row ids of every token (``-2`` for out-of-vocabulary), before truncation."""
        return self._rows(self.tokenize(text))

    def _rows(self, tokens: list[str]) -> np.ndarray:
        return np.fromiter(map(self.lookup, tokens, repeat(_OOV)), dtype=np.int64,
                           count=len(tokens))

    def embed(self, texts: list[str]) -> BlockResult:
        s = self.settings
        kept: list[np.ndarray] = []
        words: list[str] = []
        tokens = oov = 0
        for text in texts:
            toks = self.tokenize(text)
            row = self._rows(toks)
            tokens += len(row)
            oov += int(np.count_nonzero(row == _OOV))
            kept.append(truncate(row, s.max_len, s.truncating))
            words += truncate(toks, s.max_len, s.truncating)
        lengths = np.fromiter(map(len, kept), dtype=np.int32, count=len(kept))
        ids = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        out = np.zeros((len(ids), self.vectors.shape[1]),
                       dtype=np.float32 if self.settings.dtype == "int8" else self.dtype)
        known = ids >= 0
        out[known] = self.vectors[ids[known]]  # one gather per block, cast on assignment
        if self.oov is not None:
            out[ids == _OOV] = self.oov
        return BlockResult(encode_rows(out, self.settings.dtype), lengths, tokens, oov,
                           self._token_ids(ids, known, words))

    def _token_ids(self, rows: np.ndarray, known: np.ndarray, words: list[str]) -> np.ndarray:
        """The kept tokens' word ids: gathered for known words, hashed for the others."""
        out = np.empty(len(rows), dtype=np.int32)
        out[known] = self.row_word_ids()[rows[known]]
        unknown = np.flatnonzero(~known)
        if len(unknown):
            out[unknown] = self.word_ids([words[i] for i in unknown.tolist()])
        return out


class SubwordEmbedder:
    """A block of texts through a static subword table (:mod:`embcache.cache.subword`): one
    batched tokenizer call, then one gather of the kept tokens' rows from the table already
    encoded in the store's dtype (each row is one token's vector, so encoding the table once
    equals encoding every gathered row; memory: the table once more, ``vocab x row_width``)."""

    def __init__(self, table, settings: EmbedSettings):
        self.table, self.settings = table, settings
        self.rows = encode_rows(table.vectors, settings.dtype)

    def embed(self, texts: list[str]) -> BlockResult:
        s = self.settings
        rows, total, unknown = self.table.token_ids(texts)
        kept = [truncate(r, s.max_len, s.truncating) for r in rows]
        lengths = np.fromiter(map(len, kept), dtype=np.int32, count=len(kept))
        ids = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        return BlockResult(self.rows[ids], lengths, total, unknown, ids.astype(np.int32))


class EncoderEmbedder:
    """A block of texts through a frozen transformer encoder: each document's token vectors
    (its tokenizer's tokens, start and end tokens kept, truncated to ``max_len``)."""

    def __init__(self, encoder, settings: EmbedSettings):
        self.encoder, self.dtype = encoder, settings.dtype

    def embed(self, texts: list[str]) -> BlockResult:
        ids, total, unknown = self.encoder.token_ids(texts)
        vectors = self.encoder.encode(ids)
        lengths = np.fromiter((len(v) for v in vectors), dtype=np.int32, count=len(vectors))
        out = np.concatenate(vectors) if vectors else np.zeros((0, self.encoder.dim), np.float32)
        kept = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)
        return BlockResult(encode_rows(out, self.dtype), lengths, total, unknown, kept)


Block = tuple[list[str], list[str], "list[int] | None", np.ndarray]  # texts, ids, labels, split


class BlockWriter:
    """Embeds blocks and writes them into an existing store (one per process)."""

    def __init__(self, source: EmbeddingSource):
        self.embedder = source.embedder()
        self.dtype = source.settings.dtype
        self._stores: dict[str, tuple[dict, StoreMeta]] = {}

    def _open(self, store_url: str) -> tuple[dict, StoreMeta]:
        if store_url not in self._stores:
            import zarr

            from embcache.cache.layout import writable_arrays

            group = zarr.open_group(store=store_url, mode="r+")
            # Open each array once: looking one up re-reads its metadata document.
            arrays = writable_arrays(group)
            self._stores[store_url] = arrays, StoreMeta.from_attrs(dict(group.attrs),
                                                                   f"Store {store_url}")
        return self._stores[store_url]

    def write_blocks(self, store_url: str, first: int, blocks: list[Block]) -> np.ndarray:
        """Write blocks ``first, first + 1, ...``: each one's ``chunk_stats`` row goes last (its
        commit marker). In a sharded store the blocks are one shard group
        (:mod:`embcache.cache.shards`): built in memory, then each array's shard written whole.

        Returns:
            The ``(len(blocks), 4)`` stats rows (docs, tokens, oov tokens, kept tokens).
        """
        arrays, meta = self._open(store_url)
        if not meta.sharded:
            return np.stack([self._write(arrays, meta, first + i, *b) for i, b in enumerate(blocks)])
        from embcache.cache.shards import ShardBuffer, group_blocks, group_of

        group = group_of(meta, first)
        if list(group_blocks(meta, group)) != list(range(first, first + len(blocks))):
            raise ValueError(f"blocks {first}+{len(blocks)} are not shard group {group}")
        buffer = ShardBuffer(meta)
        stats = np.stack([self._write(buffer.arrays, meta, first + i, *b)
                          for i, b in enumerate(blocks)])
        buffer.flush(arrays, group)
        return stats

    def _write(self, arrays: dict, meta: StoreMeta, chunk: int, texts: list[str],
               doc_ids: list[str], labels: list[int] | None, split: np.ndarray) -> np.ndarray:
        """Embed block ``chunk`` into ``arrays``; its stats row last."""
        region = slice(chunk * meta.chunk_docs, chunk * meta.chunk_docs + len(texts))
        result = self.embedder.embed(texts)
        first = chunk * meta.block_rows  # this block's own rows of `tokens`: whole chunks
        starts = result.starts()
        if len(result.tokens):
            for name, part in split_rows(result.tokens, meta.dim, self.dtype).items():
                arrays[name][first:first + len(part)] = part
            if "token_ids" in arrays:
                arrays["token_ids"][first:first + len(result.ids)] = result.ids
        arrays["offsets"][region] = first + starts
        arrays["lengths"][region] = result.lengths
        arrays["doc_ids"][region] = np.asarray(doc_ids, dtype=object)
        arrays["split"][region] = split
        if "labels" in arrays:
            arrays["labels"][region] = np.asarray(labels, dtype=np.int32)
        stats = np.array([len(texts), result.num_tokens, result.oov_tokens,
                          int(result.lengths.sum())], dtype=np.int64)
        arrays["chunk_stats"][chunk] = stats
        return stats


# One writer per worker process (spawned, never forked: zarr-python 3 can deadlock after fork).
_WRITER: BlockWriter | None = None
_WRITER_SOURCE: EmbeddingSource | None = None


def init_worker(source: EmbeddingSource) -> None:
    """Load the vectors and tokenizer (or the encoder) once per worker process."""
    global _WRITER, _WRITER_SOURCE
    _WRITER, _WRITER_SOURCE = BlockWriter(source), source


def write_blocks(source: EmbeddingSource, store_url: str, first: int,
                 blocks: list[Block]) -> np.ndarray:
    """The task every executor runs: embed and write consecutive blocks (one block, or a
    sharded store's shard group). The worker's writer (vectors memory-mapped from the cache,
    or the encoder) is built on first use and reused by later tasks; ``source``
    (:mod:`embcache.cache.sources`) names what to load."""
    if _WRITER is None or _WRITER_SOURCE != source:
        init_worker(source)
    assert _WRITER is not None  # init_worker sets it
    return _WRITER.write_blocks(store_url, first, blocks)
