"""A split held in memory: its documents decoded once into one buffer of rows, so that every
later pass is served from RAM (:func:`embcache.cache.held_dataset.hold_split` puts the buffer in a
TensorFlow variable; :func:`embcache.cache.held_dataset.memory_dataset` batches it)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embcache.cache.plan import StreamPlan
from embcache.cache.store import Store
from embcache.cache.stream import BlockReader, read_ahead


def _zeros(shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, object]:
    return np.zeros(shape, dtype=dtype), None


class InMemorySplit:
    """One split's documents decoded into memory once, so that every later pass is served from
    RAM instead of reading and decoding the store again (light models are bound by that).
    NumPy only: :func:`embcache.cache.held_dataset.memory_dataset` makes batches of it.

    ``rows`` holds the documents' kept token vectors back to back in the store's dtype, plus one
    zero row at the end (the padding row); ``offsets``/``lengths``/``labels`` are per document, in
    plan order. Batches are planned by :func:`iter_batches` over document *ids* with exactly the
    same chunk permutation, shuffle buffer and buckets as a streamed pass, so an in-memory pass
    with a seed gives the same batches, in the same order, as the streamed pass with that seed.

    Memory: ``nbytes`` (the split's kept tokens x row bytes, e.g. 367 MB for the 20 Newsgroups
    train split at 50d float16: :func:`memory_bytes`, known from the plan before anything is
    read), built only when that fits the caller's budget. Loading reads ``parallel_reads``
    blocks at a time (one by default), each copied in and freed.
    """

    def __init__(self, store: Store, plan: StreamPlan, split: str | None, with_labels: bool = True,
                 parallel_reads: int = 1, read_log: set | None = None,
                 allocate: Callable[[tuple, np.dtype], tuple[np.ndarray, object]] | None = None):
        self.store, self.plan, self.split = store, plan, split
        total = plan.num_tokens
        # `allocate(shape, dtype) -> (writable rows, owner)`: where the rows live. By default a
        # NumPy array (owner None); embcache.cache.held_dataset.hold_split puts them in a TensorFlow
        # variable's buffer instead, so that its batches are gathered in the graph, from the one
        # copy. Zero-filled either way (the last row is the padding row).
        self.rows, self.buffer = (allocate or _zeros)((total + 1, store.row_width),
                                                      np.dtype(store.row_dtype))
        n = plan.num_docs
        self.offsets = np.zeros(n, np.int64)
        self.lengths = np.zeros(n, np.int32)
        self.labels = np.zeros(n, np.int32)
        self.first: dict[int, tuple[int, int]] = {}  # chunk -> (first id, documents)
        reader = BlockReader(store, with_labels)
        doc, row = 0, 0
        # At most `parallel_reads` blocks in flight (pool.map would read every block ahead of
        # the copy: measured +0.37x of the split's bytes at the peak). One by default: each
        # reader thread's decoding left memory behind; with four in flight, training fasttext
        # on the 20 Newsgroups GloVe train split peaked at 1.47x its bytes, with one (and 2
        # batches in flight, held_dataset.HELD_IN_FLIGHT) at 1.26x (make bench-held). The load
        # took 0.97 s instead of 0.80 s (a probe timing hold_split alone).
        with ThreadPoolExecutor(max_workers=parallel_reads) as pool:
            blocks = read_ahead(pool, lambda c: reader.read(int(c), split), plan.chunks,
                                 parallel_reads)
            for chunk, b in zip(plan.chunks.tolist(), blocks):
                if read_log is not None:
                    read_log.add(chunk)
                k, m = len(b.lengths), int(b.lengths.sum())
                self.first[chunk] = (doc, k)
                self.lengths[doc:doc + k], self.labels[doc:doc + k] = b.lengths, b.labels
                within = np.cumsum(b.lengths, dtype=np.int64) - b.lengths  # each doc's first row
                self.offsets[doc:doc + k] = row + within
                # The split's documents' rows of the block, back to back (one gather).
                self.rows[row:row + m] = b.tokens[np.arange(m) + np.repeat(b.starts - within,
                                                                           b.lengths)]
                doc, row = doc + k, row + m
        self.pad_row = total
        self.nbytes = self.rows.nbytes

    def batch(self, ids, length: int) -> np.ndarray:
        """Documents ``ids`` as one padded batch ``(len(ids), length, row_width)``, padded and
        placed as the store's batches are: a NumPy gather of their rows.

        Memory: one copy of the batch, never of the split."""
        ids = np.asarray(ids, np.int64)
        n = self.lengths[ids][:, None].astype(np.int64)
        t = np.arange(length, dtype=np.int64)[None, :]
        first = length - n if self.store.padding == "pre" else np.zeros_like(n)
        real = (t >= first) & (t < first + n)
        index = np.where(real, self.offsets[ids][:, None] + (t - first), self.pad_row)
        return self.rows[index]

    def block(self, chunk: int):
        """A chunk's documents as ids, with their lengths and labels (what a block read gives)."""
        first, k = self.first[int(chunk)]
        ids = np.arange(first, first + k, dtype=np.int64)
        return ids, self.lengths[first:first + k], self.labels[first:first + k]


def memory_bytes(store: Store, plan: StreamPlan) -> int:
    """Bytes an :class:`InMemorySplit` of ``plan`` holds (its rows plus the padding row)."""
    return (plan.num_tokens + 1) * store.row_width * store.row_dtype.itemsize
