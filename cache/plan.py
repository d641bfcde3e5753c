"""A split's reading plan: which chunks hold its documents, how many per length bucket, and how
many kept tokens (one scan of ``split`` and ``lengths``), and the fixed grid of bucket lengths.
Every reader of a store starts from one (:mod:`embcache.cache.stream`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from embcache.cache.errors import StoreError
from embcache.cache.meta import SPLIT_NAMES
from embcache.cache.store import Store


@dataclass(frozen=True)
class StreamPlan:
    """Which chunks hold documents of the requested split, how many, and in which length buckets."""

    chunks: np.ndarray  # chunk indices, ascending
    counts: np.ndarray  # (len(chunks), buckets) int32: the split's documents per length bucket
    tokens: np.ndarray  # (len(chunks),) int64: the split's kept tokens per chunk

    @property
    def num_docs(self) -> int:
        return int(self.counts.sum())

    @property
    def num_tokens(self) -> int:
        """Kept tokens of the plan's documents: what :class:`InMemorySplit` holds in rows."""
        return int(self.tokens.sum())

    def head(self, n_chunks: int) -> StreamPlan:
        """The first ``n_chunks`` chunks only (benchmarks take a sample this way)."""
        return StreamPlan(self.chunks[:n_chunks], self.counts[:n_chunks], self.tokens[:n_chunks])

    def within(self, first_chunk: int, stop_chunk: int) -> StreamPlan:
        """Only chunks ``first_chunk <= chunk < stop_chunk`` (a part of a distributed pass)."""
        keep = (self.chunks >= first_chunk) & (self.chunks < stop_chunk)
        return StreamPlan(self.chunks[keep], self.counts[keep], self.tokens[keep])

    def num_batches(self, batch_size: int, buckets: bool = True, merge_tail: bool = False) -> int:
        """Batches in one pass when short batches leave only at the end (no ``max_wait``): every
        bucket gives ``ceil(count / batch_size)``, whatever the order the documents come in;
        with ``merge_tail`` (shuffled passes) its full batches, and the buckets' remainders
        together make ``ceil(sum / batch_size)`` (see :meth:`Bucketer.flush`)."""
        per_bucket = self.counts.sum(axis=0) if buckets else self.counts.sum(keepdims=True)
        if merge_tail:
            return int((per_bucket // batch_size).sum() + -(-(per_bucket % batch_size).sum()
                                                           // batch_size))
        return int((-(-per_bucket // batch_size)).sum())


def plan_split(store: Store, split: str | None, shard: tuple[int, int] | None = None) -> StreamPlan:
    """Chunks with at least one document of ``split`` (``None``: all documents).

    ``shard=(index, count)`` keeps every ``count``-th of those chunks starting at ``index``
    (explicit sharding by chunk, for multi-worker training). Reads ``split`` and ``lengths``
    (5 bytes per document) a slab of about a million documents at a time: the one scan of the
    split a job makes (its documents per bucket and kept tokens per chunk both come from it).
    """
    if split is not None and split not in SPLIT_NAMES:
        raise StoreError(f"Invalid value for `split`. Expected one of {SPLIT_NAMES}. "
                         f"Received: split={split!r}")
    c, n_chunks = store.chunk_docs, store.num_chunks
    buckets = bucket_lengths(store.max_len)
    counts = np.zeros(n_chunks * len(buckets), dtype=np.int64)  # (chunk, bucket), flat
    tokens = np.zeros(n_chunks, dtype=np.int64)
    slab = max(1, (1 << 20) // c) * c
    for start in range(0, store.num_docs, slab):
        stop = min(start + slab, store.num_docs)
        lengths = store.read("lengths", start, stop)
        chunk = np.arange(start, stop) // c
        if split is not None:
            keep = store.read("split", start, stop) == SPLIT_NAMES.index(split)
            lengths, chunk = lengths[keep], chunk[keep]
        index = chunk * len(buckets) + np.searchsorted(buckets, lengths)
        counts += np.bincount(index, minlength=len(counts))
        np.add.at(tokens, chunk, lengths.astype(np.int64))
    table = counts.reshape(n_chunks, len(buckets))
    chunks = np.flatnonzero(table.sum(axis=1) > 0)
    if shard is not None:
        first, step = shard
        chunks = chunks[first::step]
    return StreamPlan(chunks=chunks, counts=table[chunks].astype(np.int32), tokens=tokens[chunks])


def bucket_lengths(max_len: int, granule: int = 8, per_octave: int = 4) -> np.ndarray:
    """The lengths a batch is padded to: multiples of ``granule``, ``per_octave`` per doubling,
    ending at ``max_len`` (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, ... 864, 1000 for 1000).

    Fixed by ``max_len`` alone, so a document gets the same padded length in every store and job;
    a quarter octave bounds the padding at about a fifth of a batch; ~24 lengths keep the
    number of shapes a model sees small (one trace each where shapes are static, as on XLA).
    """
    out = set()
    for i in itertools.count():
        b = -(-int(np.ceil(granule * 2 ** (i / per_octave))) // granule) * granule
        if b >= max_len:
            out.add(max_len)
            break
        out.add(b)
    return np.array(sorted(out), dtype=np.int64)
