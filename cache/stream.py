"""Stream a ragged store as padded NumPy batches: chunk-aligned reads, seeded shuffling, length
buckets (:mod:`embcache.cache.dataset` turns them into ``tf.data``; this module needs no TensorFlow).

A batch is padded to its length bucket (:func:`bucket_lengths`: a fixed grid of lengths, a
quarter octave apart, capped at the store's ``max_len``), not to ``max_len``: every document
joins the queue of its bucket and a batch leaves when a queue holds ``batch_size`` documents.
A document is therefore always padded to the same length, wherever it is read (training,
evaluation, scoring), and a batch wastes at most a fifth of its rows on padding. Padding goes on
the side the store records (``pre``: the tokens end the sequence, as Keras ``pad_sequences``).

Memory is bounded whatever the store's size: ``parallel_reads`` blocks in flight, the shuffle
buffer (``shuffle_docs`` documents, training), at most ``batch_size - 1`` documents waiting in
each of the ~24 bucket queues, and the prefetched batches. Documents are copied out of their block
when they enter a buffer, so a waiting document never pins its whole block. Python runs once per
block and once per batch, never per token.
"""

from __future__ import annotations

import collections
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from embcache.cache.meta import SPLIT_NAMES
from embcache.cache.plan import StreamPlan, bucket_lengths, plan_split
from embcache.cache.rows import attach_ids, decode_rows, join_rows
from embcache.cache.store import Store

if TYPE_CHECKING:
    pass

__all__ = ["SHUFFLE_DOCS", "Block", "BlockReader", "Bucketer", "ShuffleBuffer", "StreamPlan",
           "bucket_blocks", "bucket_lengths", "iter_batches", "pad_batch", "plan_split",
           "read_ahead", "read_padded", "read_rows", "text_batches"]

# Documents in the in-memory shuffle buffer when training (about 190 MB at 20 Newsgroups' mean
# length): the one home of this default (TrainConfig and the CLI read it from here).
SHUFFLE_DOCS = 8192


@dataclass
class Block:
    """One chunk's documents of the requested split, as stored (ragged)."""

    tokens: np.ndarray  # (rows, row_width): the documents' kept tokens back to back, packed
    starts: np.ndarray  # (n,) first row of each document in ``tokens``
    lengths: np.ndarray  # (n,) int32
    labels: np.ndarray  # (n,) int32 (zeros for an unlabelled store)

    def documents(self) -> np.ndarray:
        """An object array of per-document ``(length, dim)`` arrays, each a copy (so a document
        kept in a buffer never pins the whole block)."""
        docs = np.empty(len(self.lengths), dtype=object)
        for i, (s, n) in enumerate(zip(self.starts.tolist(), self.lengths.tolist())):
            docs[i] = self.tokens[s:s + n].copy()
        return docs

    def as_docs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(documents, lengths, labels)``: what :func:`bucket_blocks` takes."""
        return self.documents(), self.lengths, self.labels


class BlockReader:
    """Reads whole blocks: the per-document arrays of one chunk and its ``tokens`` rows in one
    contiguous read (only the chunks the block wrote), packed with their scales for int8."""

    def __init__(self, store: Store, with_labels: bool):
        names = ["tokens", "offsets", "lengths", "split"] + (["labels"] if with_labels else [])
        names += ["scales"] if store.dtype == "int8" else []
        self.names = set(names)
        self.store = store
        self.chunk_docs, self.num_docs = store.chunk_docs, store.num_docs

    def read(self, chunk: int, split: str | None) -> Block:
        """Block ``chunk``; a chunk that fails to decode raises one
        :class:`~embcache.cache.integrity.ChunkError` line naming it."""
        c = self.chunk_docs
        lo, hi = chunk * c, min((chunk + 1) * c, self.num_docs)

        def get(name):
            return self.store.read(name, lo, hi)

        offsets = get("offsets")
        lengths = get("lengths").astype(np.int32)
        labels = (get("labels").astype(np.int32) if "labels" in self.names
                  else np.zeros(len(lengths), np.int32))
        first, end = int(offsets[0]), int(offsets[-1] + lengths[-1])
        starts = offsets - first
        if split is not None:
            keep = get("split") == SPLIT_NAMES.index(split)
            starts, lengths, labels = starts[keep], lengths[keep], labels[keep]
        return Block(read_rows(self.store, first, end), starts, lengths, labels)


def read_rows(store: Store, first: int, end: int) -> np.ndarray:
    """Rows ``first:end`` of ``tokens`` as packed rows (joined with ``scales`` for int8, and
    with ``token_ids`` for a store :meth:`~embcache.cache.store.Store.reading_ids`; a store read
    without them never reads that array, and one read for ids alone never reads ``tokens``)."""
    def get(name):
        return store.read(name, first, end) if end > first else store.array(name)[0:0]

    if not store.vectors:  # the ids alone: ``tokens`` is never read
        return attach_ids(np.zeros((end - first, 0), store.row_dtype), get("token_ids"), store.dtype)
    rows = get("tokens") if store.dtype != "int8" else join_rows(get("tokens"), get("scales"))
    return attach_ids(rows, get("token_ids"), store.dtype) if store.with_ids else rows


def pad_batch(docs, length: int, padding: str, dim: int, dtype) -> np.ndarray:
    """``(n, length, dim)``: each document's rows at the end (``pre``) or start (``post``)."""
    x = np.zeros((len(docs), length, dim), dtype=dtype)
    for i, d in enumerate(docs):
        n = len(d)
        if n:
            if padding == "pre":
                x[i, length - n:] = d
            else:
                x[i, :n] = d
    return x


def read_padded(store: Store, start: int, stop: int, length: int | None = None) -> np.ndarray:
    """Documents ``start:stop`` padded to ``length`` (default ``max_len``), as layout 1 held them,
    as float32 vectors (int8 dequantised). For tests and benchmarks: memory is
    ``(stop - start) x length x dim``."""
    offsets = store.read("offsets", start, stop).tolist()
    lengths = store.read("lengths", start, stop).tolist()
    c = store.chunk_docs
    docs = []
    for block in range(start - start % c, stop, c):  # a block's rows are contiguous: one read
        lo, hi = max(block, start) - start, min(block + c, stop) - start
        first = offsets[lo]
        rows = decode_rows(read_rows(store, first, offsets[hi - 1] + lengths[hi - 1]),
                           store.dim, store.dtype)
        docs += [rows[o - first:o - first + n] for o, n in zip(offsets[lo:hi], lengths[lo:hi])]
    return pad_batch(docs, length or store.max_len, store.padding, store.dim, np.float32)


class Bucketer:
    """Length-bucket queues: documents in, padded batches ``(x, lengths, labels, seq)`` out.

    ``seq`` numbers documents in the order they entered. ``max_wait`` (documents) flushes a
    queue, as a short batch, once its oldest document has waited that long: in store order this
    bounds how far a batch can run ahead of the documents before it (scoring writes rows in
    input order through a buffer of that size).

    ``make(docs, length)`` turns a batch's documents into its ``x`` (default: pad them with
    :func:`pad_batch`); an :class:`InMemorySplit` passes document ids through instead.
    """

    def __init__(self, boundaries: np.ndarray, batch_size: int, padding: str, dim: int, dtype,
                 max_wait: int | None = None, make=None):
        self.boundaries, self.batch_size, self.padding = boundaries, batch_size, padding
        self.dim, self.dtype, self.max_wait = dim, dtype, max_wait
        self.make = make or (lambda docs, length: pad_batch(docs, length, padding, dim, dtype))
        self.queues: list[list] = [[] for _ in boundaries]
        self.seq = 0

    def add(self, docs: np.ndarray, lengths: np.ndarray, labels: np.ndarray):
        buckets = np.searchsorted(self.boundaries, lengths)  # first boundary >= length
        for d, n, y, k in zip(docs, lengths.tolist(), labels.tolist(), buckets.tolist()):
            q = self.queues[k]
            q.append((d, n, y, self.seq))
            self.seq += 1
            if len(q) == self.batch_size:
                yield self._batch(k)
        if self.max_wait is not None:
            for k, q in enumerate(self.queues):
                if q and self.seq - q[0][3] >= self.max_wait:
                    yield self._batch(k)

    def flush(self, merge: bool = False):
        """The remaining short batches, oldest first.

        ``merge`` (training passes): the buckets' remainders instead make full batches of mixed
        lengths, in length order, each padded to the bucket of its longest document; only the
        last is short. Left per bucket, an epoch would end on ~24 tiny batches (one document
        each, some), each a full optimizer step on almost no data, just before validation:
        measured, that cost the Keras example's ``cnn`` 0.05 of validation accuracy.
        """
        if merge:
            items = sorted((it for q in self.queues for it in q), key=lambda it: (it[1], it[3]))
            self.queues = [[] for _ in self.boundaries]
            for start in range(0, len(items), self.batch_size):
                part = items[start:start + self.batch_size]
                k = int(np.searchsorted(self.boundaries, part[-1][1]))
                yield self._make(part, k)
            return
        while True:
            waiting = [(q[0][3], k) for k, q in enumerate(self.queues) if q]
            if not waiting:
                return
            yield self._batch(min(waiting)[1])

    def _batch(self, k: int):
        q, self.queues[k] = self.queues[k], []
        return self._make(q, k)

    def _make(self, q: list, k: int):
        docs, lengths, labels, seq = zip(*q)
        x = self.make(docs, int(self.boundaries[k]))
        return (x, np.asarray(lengths, np.int32), np.asarray(labels, np.int32),
                np.asarray(seq, np.int64))


class ShuffleBuffer:
    """A shuffle buffer over whole chunks, in NumPy: tf.data's ``shuffle`` semantics (every
    document leaves from a uniformly random slot of a full buffer) at a fraction of the cost.

    tf.data's own ``shuffle`` handles one document per element and was the training bottleneck
    on layout 1 (measured: 3,900 docs/s through ``shuffle(2048)`` against 47,000 without). Here a
    chunk of documents enters in one step: its documents take random slots of the buffer and the
    documents they displace leave as one array. Memory: ``size`` documents.
    """

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.filled = max(1, size), rng, 0
        self.arrays: list[np.ndarray] | None = None

    def push(self, arrays: tuple[np.ndarray, ...]):
        """Add one chunk's arrays (same first dimension); yield the displaced documents."""
        n = len(arrays[0])
        if n > self.size:  # a chunk bigger than the buffer: mix it in buffer-sized pieces
            for s in range(0, n, self.size):
                yield from self.push(tuple(a[s:s + self.size] for a in arrays))
            return
        if self.arrays is None:
            self.arrays = [np.empty((self.size, *a.shape[1:]), dtype=a.dtype) for a in arrays]
        free = min(self.size - self.filled, n)
        for buf, a in zip(self.arrays, arrays):
            buf[self.filled:self.filled + free] = a[:free]
        self.filled += free
        if free == n:
            return
        # The rest take distinct random slots; the documents there leave.
        slots = self.rng.choice(self.size, size=n - free, replace=False)
        out = tuple(buf[slots] for buf in self.arrays)  # fancy indexing copies
        for buf, a in zip(self.arrays, arrays):
            buf[slots] = a[free:]
        yield out

    def drain(self, piece: int):
        """Yield what is left, in random order, ``piece`` documents at a time; empties the buffer."""
        if not self.filled or self.arrays is None:
            return
        order = self.rng.permutation(self.filled)
        for start in range(0, self.filled, piece):
            rows = order[start:start + piece]
            yield tuple(buf[rows] for buf in self.arrays)
        self.filled = 0


class InMemory(Protocol):
    """What ``iter_batches`` takes of a split held in memory (:class:`InMemorySplit`, or the
    graph's document ids over it): a chunk's documents, and a batch made of some of them."""

    def block(self, chunk: int) -> Any: ...

    def batch(self, ids: Any, length: int) -> np.ndarray: ...


def iter_batches(store: Store, plan: StreamPlan, *, split: str | None, batch_size: int,
                 rng: np.random.Generator | None = None,
                 shuffle_docs: int = SHUFFLE_DOCS, with_labels: bool = True, parallel_reads: int = 4,
                 max_wait: int | None = None, read_log: set | None = None, buckets: bool = True,
                 in_memory: InMemory | None = None):
    """One pass over ``plan``: padded batches ``(x, lengths, labels, seq)`` in NumPy.

    ``buckets=False`` pads every batch to ``max_len`` (one bucket), as layout 1 did.

    With an ``rng`` (a shuffled pass), chunk order is a permutation drawn from it and documents mix
    through a ``ShuffleBuffer`` of ``shuffle_docs`` before they are bucketed; without, documents enter in
    store order (``seq`` is then the position in the split) and ``max_wait`` bounds how far a
    batch runs ahead (see :class:`Bucketer`).

    A shuffled pass ends on the buckets' remainders merged into full batches of mixed lengths
    (:meth:`Bucketer.flush`); an unshuffled one on a short batch per bucket, so that there every
    document is padded to its own bucket's length.

    ``in_memory``: the split already in memory (:class:`InMemorySplit`): no reads, and the same
    documents, in the same batches and order, as without.
    """
    lengths = bucket_lengths(store.max_len) if buckets else np.array([store.max_len])
    if in_memory is None:
        reader = BlockReader(store, with_labels)

        def read(chunk):
            if read_log is not None:
                read_log.add(int(chunk))
            return reader.read(int(chunk), split).as_docs()
        make = None
    else:
        read, parallel_reads, make = in_memory.block, 1, in_memory.batch
    bucketer = Bucketer(lengths, batch_size, store.padding, store.row_width,
                        store.row_dtype, max_wait=max_wait, make=make)
    chunks = rng.permutation(plan.chunks) if rng is not None else plan.chunks
    buffer = ShuffleBuffer(min(shuffle_docs, plan.num_docs), rng) if rng is not None else None

    with ThreadPoolExecutor(max_workers=parallel_reads) as pool:
        yield from bucket_blocks(read_ahead(pool, read, chunks, parallel_reads), bucketer,
                                 buffer=buffer, drain_piece=store.chunk_docs)


def read_ahead(pool: ThreadPoolExecutor, read, chunks, depth: int):
    """``read(chunk)`` for each chunk, in order, ``depth`` reads in flight (memory stays flat)."""
    ahead: collections.deque = collections.deque()
    for chunk in itertools.chain(chunks, [None] * depth):
        if chunk is not None:
            ahead.append(pool.submit(read, chunk))
        if len(ahead) >= depth or (chunk is None and ahead):
            yield ahead.popleft().result()


def bucket_blocks(blocks, bucketer: Bucketer, *, buffer: ShuffleBuffer | None = None,
                  drain_piece: int = 1024):
    """Ragged blocks ``(docs, lengths, labels)`` in, padded batches ``(x, lengths, labels, seq)``
    out: the one bucketing path. A store's blocks (:func:`iter_batches`: training, evaluation and
    scoring a store) and texts embedded in memory (:func:`text_batches`: scoring texts) both
    go through it, so a document is batched and padded the same way wherever it comes from.

    With a ``buffer`` (a shuffled pass), blocks mix through it first and the buckets'
    remainders end the pass merged (:meth:`Bucketer.flush`); without, documents enter in order
    and each bucket ends on its own short batch.
    """
    for block in blocks:
        for docs in (buffer.push(block) if buffer else (block,)):
            yield from bucketer.add(*docs)
    if buffer:
        for docs in buffer.drain(drain_piece):
            yield from bucketer.add(*docs)
    yield from bucketer.flush(merge=buffer is not None)


def text_batches(embedder, texts: list[str], *, max_len: int, padding: str, dim: int, dtype: str,
                 batch_size: int, piece: int = 1024, max_wait: int | None = None,
                 prepare=None, with_ids: bool = False):
    """Texts -> float32 batches ``(x, lengths, labels, seq)`` in NumPy, without a store: each
    ``piece`` of texts is embedded by the store writer's own embedder
    (:mod:`embcache.cache.embed`) into a ragged block of packed rows, and the blocks are bucketed
    by :func:`bucket_blocks` exactly as a store's unshuffled pass is; rows are decoded where the
    batch is made, as the dataset does in its graph. ``seq`` is the text's position.
    ``prepare(piece)``: applied to each piece's texts first (as the corpus readers do).

    ``with_ids``: each batch's ``x`` is ``(vectors, token_ids)``, the ids the store writer
    would store (the lexical channel), padded as the vectors.

    Memory: one piece's kept tokens' packed rows, plus the documents waiting in the buckets
    (bounded by ``max_wait``).
    """
    from embcache.cache.rows import detach_ids, id_columns, row_dtype, row_width

    width, rdtype = row_width(dim, dtype), row_dtype(dtype)
    if with_ids:
        width += id_columns(dtype)

    def make(docs, length):
        rows = pad_batch(docs, length, padding, width, rdtype)
        if not with_ids:
            return decode_rows(rows, dim, dtype)
        rows, ids = detach_ids(rows, dtype)
        return decode_rows(rows, dim, dtype), ids

    def blocks():
        for start in range(0, len(texts), piece):
            part = texts[start:start + piece]
            result = embedder.embed(prepare(part) if prepare else part)
            rows = attach_ids(result.tokens, result.ids, dtype) if with_ids else result.tokens
            yield Block(rows, result.starts(), result.lengths,
                        np.zeros(len(part), np.int32)).as_docs()

    bucketer = Bucketer(bucket_lengths(max_len), batch_size, padding, width, rdtype,
                        max_wait=max_wait, make=make)
    yield from bucket_blocks(blocks(), bucketer)
