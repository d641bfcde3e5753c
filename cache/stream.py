"""Stream a store into ``tf.data``: chunk-aligned reads, seeded shuffling, float16 -> float32 in graph.

Memory is bounded by ``parallel_reads + shuffle_chunks`` chunks of decoded documents plus the
shuffle buffer of ``shuffle_docs`` documents, whatever the store's size: a store far larger than
RAM streams the same way. The only whole-store read is the ``split`` array (1 byte per document).
Python runs once per chunk (about 125 documents), never per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cache.errors import StoreError
from cache.store import SPLIT_NAMES, Store


@dataclass(frozen=True)
class StreamPlan:
    """Which chunks hold documents of the requested split, and how many documents that is."""

    chunks: np.ndarray  # chunk indices, ascending
    num_docs: int


def plan_split(store: Store, split: str | None, shard: tuple[int, int] | None = None) -> StreamPlan:
    """Chunks with at least one document of ``split`` (``None``: all documents).

    ``shard=(index, count)`` keeps every ``count``-th of those chunks starting at ``index``
    (explicit sharding by chunk, for multi-worker training).
    """
    if split is not None and split not in SPLIT_NAMES:
        raise StoreError(f"Invalid value for `split`. Expected one of {SPLIT_NAMES}. "
                         f"Received: split={split!r}")
    c = store.chunk_docs
    if split is None:
        per_chunk = np.full(store.num_chunks, c, dtype=np.int64)
        per_chunk[-1] = store.num_docs - c * (store.num_chunks - 1)
    else:
        codes = store.array("split")[:] == SPLIT_NAMES.index(split)
        per_chunk = np.add.reduceat(codes.astype(np.int64), np.arange(0, store.num_docs, c))
    chunks = np.flatnonzero(per_chunk > 0)
    if shard is not None:
        index, count = shard
        chunks = chunks[index::count]
    return StreamPlan(chunks=chunks, num_docs=int(per_chunk[chunks].sum()))


def read_chunk(store: Store, chunk: int, split: str | None, with_labels: bool):
    """One chunk's documents of ``split``: (embedded float16, lengths, labels or None)."""
    c = store.chunk_docs
    region = slice(chunk * c, min((chunk + 1) * c, store.num_docs))
    x = store.array("embedded")[region]
    lengths = store.array("lengths")[region]
    labels = store.array("labels")[region] if with_labels else None
    if split is not None:
        keep = store.array("split")[region] == SPLIT_NAMES.index(split)
        x, lengths = x[keep], lengths[keep]
        labels = labels[keep] if labels is not None else None
    return x, lengths, labels


def make_dataset(
    store: Store,
    *,
    split: str | None = "train",
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    shuffle_docs: int = 1024,
    with_labels: bool = True,
    parallel_reads: int = 4,
    shard: tuple[int, int] | None = None,
    plan: StreamPlan | None = None,
    repeat: bool = False,
    read_log: set | None = None,
):
    """A ``tf.data.Dataset`` of ``({"embedded": (b, max_len, dim) float32, "lengths": (b,)}, labels)``.

    Shuffling is two-level and seeded: chunk order is reshuffled every epoch, then documents mix
    in a buffer of ``shuffle_docs``. Without ``shuffle`` the order is the store's.

    ``shard=(index, count)`` reads only every ``count``-th chunk: the explicit sharding that
    multi-worker training needs (tf.data's auto-sharding cannot see inside a Zarr reader and
    would make every worker read everything, so it is switched off). ``repeat`` loops forever
    (steps are then set by the caller); ``read_log`` collects the chunk indices actually read.

    Raises:
        StoreError: labels requested from an unlabelled store.
    """
    import tensorflow as tf

    if with_labels and not store.labelled:
        raise StoreError(f"Store {store.url} has no labels")
    plan = plan or plan_split(store, split, shard)
    # Open the arrays once here; each read then goes straight to the chunk.
    arrays = {k: store.array(k) for k in ("embedded", "lengths", "split", "labels")
              if k in store.group}
    local = Store(url=store.url, group=arrays, attrs=store.attrs)
    max_len, dim = store.max_len, store.dim
    dtype = tf.as_dtype(store.attrs["dtype"])

    def _read(chunk):
        if read_log is not None:
            read_log.add(int(chunk))
        x, lengths, labels = read_chunk(local, int(chunk), split, with_labels)
        if labels is None:
            labels = np.zeros(len(lengths), dtype=np.int32)
        return x, lengths.astype(np.int32), labels.astype(np.int32)

    def _tf_read(chunk):
        x, lengths, labels = tf.numpy_function(_read, [chunk], [dtype, tf.int32, tf.int32],
                                               stateful=False)
        x.set_shape([None, max_len, dim])
        lengths.set_shape([None])
        labels.set_shape([None])
        return tf.data.Dataset.from_tensor_slices((x, lengths, labels))

    ds = tf.data.Dataset.from_tensor_slices(plan.chunks.astype(np.int64))
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(len(plan.chunks), seed=seed, reshuffle_each_iteration=True)
    # interleave with parallel calls reads several chunks at once (zarr decompression releases
    # the GIL); deterministic, so a seeded run is reproducible and scoring keeps store order.
    ds = ds.interleave(_tf_read, cycle_length=parallel_reads, block_length=store.chunk_docs,
                       num_parallel_calls=parallel_reads, deterministic=True)
    if shuffle:
        ds = ds.shuffle(shuffle_docs, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    # The size is known from the plan: tell tf.data, so Keras shows a full progress bar from the
    # first epoch and never warns that the input "ran out of data".
    if not repeat:
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-plan.num_docs // batch_size)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(options)

    def _to_model(x, lengths, labels):
        features = {"embedded": tf.cast(x, tf.float32), "lengths": lengths}
        return (features, labels) if with_labels else features

    return ds.map(_to_model, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
