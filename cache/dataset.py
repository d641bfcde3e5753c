"""``tf.data`` datasets over a store, two ways sharing one :class:`Batching`: streamed from the
store on every pass (:func:`streamed_dataset`: the batches of
:func:`embcache.cache.stream.iter_batches`, made in a spawned producer process,
:mod:`embcache.cache.producer`, or in this one) or gathered from a split decoded into memory
once (:func:`memory_dataset`). :func:`dataset` is the public one.

This is the layer above the producer: the stream (NumPy only) knows nothing of either, the
producer runs the stream, and this module turns its batches into TensorFlow's (the stream and
the producer never import TensorFlow; :mod:`embcache.cache.tfenv` imports it quietly).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embcache.cache.errors import EmbcacheError, StoreError, StrPath
from embcache.cache.locks import reading
from embcache.cache.producer import Producer
from embcache.cache.store import Store, open_store
from embcache.cache.stream import (
    SHUFFLE_DOCS,
    StreamPlan,
    iter_batches,
    plan_split,
)
from embcache.cache.tfenv import quiet_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf

_PROCESS_MIN_DOCS = 2048

# The last EmbcacheError a dataset's generator met (a damaged chunk), raised again by
# :func:`pipeline_errors` outside TensorFlow. While one is open (`_CATCHING`), a generator that
# meets one ends its pass instead of raising: an error raised inside a tf.data PyFunc is logged
# by TensorFlow's C++ kernels (about 70 lines of traceback on stderr, whatever its Python log
# level) before it reaches Python. Outside pipeline_errors() it raises, so that no pass is ever
# cut short silently.
_RAISED: dict[str, EmbcacheError] = {}
_RAISED_LOCK = threading.Lock()
_CATCHING = [0]


@contextlib.contextmanager
def pipeline_errors() -> Iterator[None]:
    """``with pipeline_errors(): model.fit(ds, ...)``: an :class:`EmbcacheError` that a store's
    batches met inside TensorFlow (for example a damaged chunk, met mid-epoch) comes out as
    itself, one line, when the call returns, and TensorFlow prints nothing about it (the pass
    that met it, and every later pass inside the block, ends there)."""
    with _RAISED_LOCK:
        _RAISED.clear()
        _CATCHING[0] += 1
    try:
        yield
    except Exception:
        with _RAISED_LOCK:
            raised = _RAISED.pop("last", None)
        if raised is not None:  # whatever the cut-short pass made TensorFlow or Keras raise
            raise raised from None
        raise
    else:
        with _RAISED_LOCK:
            raised = _RAISED.pop("last", None)
        if raised is not None:
            raise raised from None
    finally:
        with _RAISED_LOCK:
            _CATCHING[0] -= 1


@dataclass(frozen=True)
class Batching:
    """How a pass over a split is batched: the options :func:`streamed_dataset` and
    :func:`memory_dataset` share (each of those takes only the further options it honours).

    ``buckets``: each batch padded to its length bucket (see :mod:`embcache.cache.stream`), or
    to ``max_len`` with ``False``. Shuffling is two-level and seeded: chunk order is reshuffled
    every epoch, then documents mix in a buffer of ``shuffle_docs``. Without ``shuffle``
    documents enter in store order; ``with_seq`` adds ``"seq"`` (the document's position in that
    order) to the features, so a caller can put results back in order. ``repeat`` loops forever
    (steps are then set by the caller).
    """

    batch_size: int = 32
    shuffle: bool = False
    seed: int = 0
    shuffle_docs: int = SHUFFLE_DOCS
    buckets: bool = True
    with_labels: bool = True
    with_seq: bool = False
    repeat: bool = False
    # Add ``"token_ids"`` (the lexical channel, (b, T) int32) to the features: only for models
    # that take it (the others' passes never read ``token_ids``).
    with_ids: bool = False


def streamed_dataset(store: Store | StrPath, split: str | None = "train", *,
                     batching: Batching = Batching(), plan: StreamPlan | None = None,
                     shard: tuple[int, int] | None = None, parallel_reads: int = 4,
                     max_wait: int | None = None, read_log: set | None = None,
                     in_process: bool | None = None):
    """A ``tf.data.Dataset`` of ``({"embedded": (b, T, dim) float32, "lengths": (b,)}, labels)``,
    read and decoded from the store on every pass.

    ``plan``: the split's :func:`~embcache.cache.stream.plan_split`, when the caller has it
    (the split is then not scanned again). ``shard=(index, count)`` reads only every
    ``count``-th chunk: the explicit sharding that multi-worker training needs (tf.data's
    auto-sharding cannot see inside a Zarr reader and would make every worker read everything,
    so it is switched off). ``max_wait`` bounds how far an unshuffled batch runs ahead;
    ``read_log`` collects the chunk indices actually read.

    The batches are made by a spawned producer process (:mod:`embcache.cache.producer`), except for a
    ``memory://`` store (which lives in this process only), a pass of fewer than 2,048
    documents, or with ``in_process=True``. As with any spawned worker, a script that iterates
    the dataset needs the ``if __name__ == "__main__":`` guard (the ``embcache`` command has it).
    Memory: the blocks in flight, the shuffle buffer and the bucket queues, never the split.

    Raises:
        StoreError: labels requested from an unlabelled store.
    """
    quiet_tensorflow()
    import tensorflow as tf

    b = batching
    if not isinstance(store, Store):
        store = open_store(store, require_complete=True)
    if b.with_ids and not store.with_ids:
        store = store.reading_ids()
    if b.with_labels and not store.labelled:
        raise StoreError(f"Store {store.url} has no labels")
    plan = plan or plan_split(store, split, shard)
    pipeline: dict[str, Any] = dict(batch_size=b.batch_size, shuffle_docs=b.shuffle_docs,
                                    with_labels=b.with_labels, parallel_reads=parallel_reads,
                                    max_wait=max_wait, buckets=b.buckets)
    if in_process is None:  # spawning costs about a second: small passes run here
        in_process = str(store.url).startswith("memory://") or plan.num_docs < _PROCESS_MIN_DOCS
    producer = (None if in_process else
                Producer(store, plan, split, seed=b.seed, shuffle=b.shuffle, **pipeline))
    batches = _batch_source(store, plan, split, b, pipeline, producer, read_log)
    spec = (tf.TensorSpec([None, None, store.row_width], tf.as_dtype(store.row_dtype)),
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int64))
    # One element per padded batch: Python runs per block and per batch, never per document.
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    if b.repeat:
        ds = ds.repeat()
    elif max_wait is None:
        # The count is known from the plan: tell tf.data, so Keras shows a full progress bar
        # from the first epoch and never warns that the input "ran out of data".
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            plan.num_batches(b.batch_size, b.buckets, merge_tail=b.shuffle)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = _finish(ds.with_options(options), lambda x, lengths: x, store, b)
    ds._embcache_producer = producer  # lives exactly as long as the dataset (see _batch_source)
    return ds


def _batch_source(store: Store, plan, split: str | None, b: Batching, pipeline: dict,
                  producer: Producer | None, read_log: set | None):
    """The generator function ``tf.data`` calls once per epoch: the producer process's batches,
    or :func:`iter_batches` here; epoch ``e`` of a shuffled pass is seeded ``[seed, e]``."""
    epochs = itertools.count()
    # The generator holds the producer weakly and the dataset strongly: tf.data keeps a
    # generator's function registered for the process's lifetime, so a strong reference from it
    # would keep every producer process of every dataset ever made alive (and its memory held).
    producer_ref = weakref.ref(producer) if producer is not None else None

    expected = plan.num_batches(b.batch_size, b.buckets, merge_tail=b.shuffle)

    def batches():
        epoch = next(epochs)
        with _RAISED_LOCK:
            failed = _CATCHING[0] and "last" in _RAISED
        if failed:  # an earlier pass failed inside pipeline_errors(), which will raise it
            yield from itertools.repeat(_filler(store), expected)
            return
        made, last = 0, None
        try:
            # No writer replaces the store while a pass reads it (a refused `--overwrite` names
            # this process); a writer at work refuses the pass. See cache.locks.
            with reading(store.url):
                for last in _pass(epoch):
                    made += 1
                    yield last
        except EmbcacheError as e:  # raised again by pipeline_errors(), outside TensorFlow
            with _RAISED_LOCK:
                _RAISED["last"] = e
                catching = _CATCHING[0] > 0
            if not catching:
                raise
            # The pass still makes the batches TensorFlow was promised (its cardinality, which it
            # asserts), copies of the last one: nothing trained on them is kept, as the error is
            # raised when pipeline_errors() closes.
            yield from itertools.repeat(last if last is not None else _filler(store),
                                        max(expected - made, 0))

    def _pass(epoch: int):
        if producer_ref is not None:
            live = producer_ref()
            if live is None:
                raise StoreError(f"The dataset over {store.url} was released; make a new one")
            yield from live.batches(epoch, read_log)
            return
        rng = np.random.default_rng([b.seed, epoch]) if b.shuffle else None
        yield from iter_batches(store, plan, split=split, rng=rng, read_log=read_log, **pipeline)

    return batches


def _filler(store: Store) -> tuple[np.ndarray, ...]:
    """A batch of one all-padding document (``(x, lengths, labels, seq)``, as a pass makes them)
    to stand in for the batches of a pass cut short by a store error (see ``_batch_source``)."""
    x = np.zeros((1, store.max_len, store.row_width), np.dtype(store.row_dtype))
    return x, np.ones(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.int64)


def to_float(x, store: Store):
    """Packed rows ``(..., row_width)`` -> float32 vectors ``(..., dim)``, in the graph: a cast,
    or for int8 ``float32(q) * float32(scale)`` with the scale's two bytes bitcast back to
    float16 (the same arithmetic as :func:`embcache.cache.rows.decode_rows`)."""
    import tensorflow as tf

    if store.dtype != "int8" or not store.vectors:  # without vectors: (..., 0)
        return tf.cast(x, tf.float32)
    # tf.split, not two strided slices: measured 14.5 against 21.5 ms for a (32, 1000, 258)
    # batch (a float16 batch's cast: 7.3 ms).
    q, packed_scale = tf.split(x, [store.dim, 2], axis=-1)
    scale = tf.bitcast(packed_scale, tf.float16)  # (..., 2) int8 -> (...) float16
    return tf.cast(q, tf.float32) * tf.cast(scale, tf.float32)[..., None]


def split_ids(rows, store: Store):
    """Packed rows with token ids (a store :meth:`~Store.reading_ids`) -> ``(rows, ids)``, in
    the graph: the ids' columns bitcast back to int32 (:func:`embcache.cache.rows.detach_ids`)."""
    import tensorflow as tf

    from embcache.cache.rows import id_columns

    k = id_columns(store.dtype)
    rows, packed = rows[..., :-k], rows[..., -k:]
    ids = tf.bitcast(packed, tf.int32)  # (..., k) of a k-times narrower type -> (...)
    return rows, (ids[..., 0] if k == 1 else ids)


def _finish(ds, make_x, store: Store, b: Batching, in_flight: int | None = None):
    """Batches ``(x, lengths, labels, seq)`` -> the models' ``(features, labels)``; ``make_x``
    turns the first element into the batch's packed rows, dequantised here. ``in_flight``: at
    most that many batches made ahead (``None``: as many as ``tf.data`` autotunes)."""
    import tensorflow as tf

    def _to_model(x, lengths, labels, seq):
        rows = make_x(x, lengths)
        features = {}
        if store.with_ids:
            rows, features["token_ids"] = split_ids(rows, store)
        features.update({"embedded": to_float(rows, store), "lengths": lengths})
        if b.with_seq:
            features["seq"] = seq
        return (features, labels) if b.with_labels else features

    depth = tf.data.AUTOTUNE if in_flight is None else in_flight
    return ds.map(_to_model, num_parallel_calls=depth).prefetch(depth)


def dataset(store: Store | StrPath, split: str | None = "train", *, batch_size: int = 32,
            shuffle: bool | None = None, seed: int = 0, shuffle_docs: int = SHUFFLE_DOCS,
            length_buckets: bool = True, repeat: bool = False,
            token_ids: bool = False, with_ids: bool = False) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of one split of a store, ready for ``model.fit``: elements are
    ``({"embedded": (b, T, dim) float32, "lengths": (b,) int32}, labels (b,) int32)``.

    The same pipeline as ``embcache train``: each batch padded to its length bucket ``T``
    (``length_buckets=False``: to ``max_len``), blocks reshuffled every epoch and documents mixed
    in a seeded buffer of ``shuffle_docs`` documents (``shuffle`` defaults to true for
    ``split="train"`` only), batches made by a spawned producer process for passes of 2,048
    documents or more (so a script needs the ``if __name__ == "__main__":`` guard). Iterating it
    again starts the next epoch. Memory: the blocks in flight, the shuffle buffer and the bucket
    queues (see :mod:`embcache.cache.stream`), never the whole store. The dataset shuffles itself:
    give ``model.fit`` ``shuffle=False``, or Keras warns that its own shuffle is ignored.

    Args:
        store: a store path or URL, or a store from :func:`embcache.open_store`.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (every document).
        repeat: loop forever (then give ``model.fit`` its ``steps_per_epoch``).
        token_ids: add ``"token_ids"`` ``(b, T) int32`` to the features, padded as the vectors
            are: the lexical channel, for models built with ``inputs(dim, token_ids=True)``.
        with_ids: add ``"doc_id"`` ``(b,)`` to the features (int64 where the store's ids are
            integers, else strings). Batches come grouped by length, not in store order: pair
            your own predictions with ids and labels through it (pop it before calling the
            model), or use :func:`embcache.predict`, which gives store order. Needs an
            unshuffled pass. Memory: the split's ids (a few bytes per document).

    Raises:
        StoreError: a missing, incomplete or unlabelled store, an unknown split, or
            ``token_ids`` from a store written without them.
    """
    shuffle = split == "train" if shuffle is None else shuffle
    if with_ids and shuffle:
        raise EmbcacheError("Invalid value for `with_ids`: ids come with an unshuffled pass; "
                            "pass shuffle=False")
    for name, value in (("batch_size", batch_size), ("shuffle_docs", shuffle_docs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EmbcacheError(f"Invalid value for `{name}`. Expected a positive integer. "
                                f"Received: {name}={value!r}")
    if with_ids and not isinstance(store, Store):
        store = open_store(store, require_complete=True)
    ds = streamed_dataset(store, split, batching=Batching(
        batch_size=batch_size, shuffle=shuffle, seed=seed, shuffle_docs=shuffle_docs,
        buckets=length_buckets, repeat=repeat, with_ids=token_ids, with_seq=with_ids))
    if not with_ids:
        return ds
    import tensorflow as tf

    assert isinstance(store, Store)
    ids = tf.constant(list(store.split_doc_ids(split)),
                      dtype=tf.int64 if store.meta.doc_ids == "int" else tf.string)

    def _doc_ids(features, *labels):  # seq: the document's position in the unshuffled split
        features = dict(features)
        features["doc_id"] = tf.gather(ids, features.pop("seq"))
        return (features, *labels) if labels else features

    return ds.map(_doc_ids)
