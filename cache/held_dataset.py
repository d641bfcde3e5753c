"""A split held in memory as a ``tf.data.Dataset``: its rows decoded once into a TensorFlow
variable's buffer (:func:`hold_split`), and every epoch's batches gathered from them in the graph
(:func:`memory_dataset`): the same batches, in the same order, as :func:`~embcache.cache.dataset.
streamed_dataset` gives over the store."""

from __future__ import annotations

import itertools

import numpy as np

from embcache.cache.dataset import Batching, _finish
from embcache.cache.held import InMemorySplit
from embcache.cache.plan import StreamPlan, bucket_lengths
from embcache.cache.store import Store
from embcache.cache.stream import iter_batches
from embcache.cache.tfenv import quiet_tensorflow


def variable_rows(shape: tuple, dtype: np.dtype):
    """Zero-filled rows in a TensorFlow variable's buffer, on the CPU, and a writable NumPy view
    of that same memory: ``(view, variable)``. :class:`InMemorySplit` fills the view; the graph
    gathers batches from the variable. One copy of the split, never two or three: ``tf.constant``
    copies an array (and holds a transient second copy while it does), and ``tf.data`` copies
    any tensor a dataset captures by value (a variable is captured by its handle). Falls back
    to a NumPy array (``(array, None)``) where the view cannot be made."""
    import ctypes

    import tensorflow as tf

    try:
        with tf.device("/CPU:0"):
            variable = tf.Variable(tf.zeros(shape, tf.as_dtype(dtype)), trainable=False)
        value = variable.read_value()  # the variable's own buffer (nothing else reads it)

        class _Capsule:  # what np.from_dlpack asks of an object
            def __dlpack__(self, stream=None, **kwargs):
                return tf.experimental.dlpack.to_dlpack(value)

            def __dlpack_device__(self):
                return (1, 0)  # kDLCPU

        readonly = np.from_dlpack(_Capsule())
        address, nbytes = readonly.ctypes.data, readonly.nbytes
        view = np.frombuffer((ctypes.c_char * nbytes).from_address(address),  # type: ignore[call-overload]
                             dtype=dtype)  # numpy's stubs know no ctypes arrays; it reads them
        return view.reshape(shape), variable
    except Exception:  # noqa: BLE001 - no DLPack here: the NumPy rows serve (gathered in Python)
        return np.zeros(shape, dtype=dtype), None


def hold_split(store: Store, plan: StreamPlan, split: str | None, **kwargs) -> InMemorySplit:
    """A split decoded into memory for :func:`memory_dataset`, its rows in a variable's buffer
    (:func:`variable_rows`). Memory: the split's rows, once."""
    return InMemorySplit(store, plan, split, allocate=variable_rows, **kwargs)


def memory_dataset(held: InMemorySplit, batching: Batching = Batching()):
    """A ``tf.data.Dataset`` like :func:`streamed_dataset`'s, over a split already decoded into
    memory (:class:`embcache.cache.stream.InMemorySplit`): the same batches, in the same order,
    with the same seed, and no reads. Python plans each pass (document ids per batch, a few
    microseconds per document). A split from :func:`hold_split` is gathered in ``tf.data``'s
    parallel map from its variable, without the GIL; other splits in Python, from their NumPy
    rows (:meth:`InMemorySplit.batch`). Memory: the split's rows, once, and the batches in
    flight."""
    return _memory_dataset(held, batching, held.buffer)


# Batches gathered ahead from a held split. Each is a fresh float32 copy of its rows; autotuned,
# tf.data kept enough of them to add ~20 MB to the peak of training fasttext on the 20
# Newsgroups GloVe split (make bench-held), and a gather from memory needs no deep queue.
HELD_IN_FLIGHT = 2


def _memory_dataset(held: InMemorySplit, b: Batching, rows, in_flight: int | None = HELD_IN_FLIGHT):
    """:func:`memory_dataset` with its rows' tensor or variable given (``None``: gathered in
    Python from the NumPy rows); ``make bench-held`` passes the ``tf.constant`` it replaced,
    and ``in_flight=None`` (autotuned, as before)."""
    quiet_tensorflow()
    import tensorflow as tf

    store, plan = held.store, held.plan
    epochs = itertools.count()
    in_graph = rows is not None

    def _plan():
        rng = np.random.default_rng([b.seed, next(epochs)]) if b.shuffle else None
        yield from iter_batches(store, plan, split=held.split, rng=rng, batch_size=b.batch_size,
                                shuffle_docs=b.shuffle_docs, buckets=b.buckets,
                                in_memory=_Ids(held) if in_graph else held)

    first = (tf.TensorSpec([None], tf.int64) if in_graph else
             tf.TensorSpec([None, None, store.row_width], tf.as_dtype(store.row_dtype)))
    spec = (first, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int64))
    ds = tf.data.Dataset.from_generator(_plan, output_signature=spec)
    ds = ds.repeat() if b.repeat else ds.apply(tf.data.experimental.assert_cardinality(
        plan.num_batches(b.batch_size, b.buckets, merge_tail=b.shuffle)))
    return _finish(ds, _graph_gather(held, b, rows) if in_graph else (lambda x, lengths: x),
                   store, b, in_flight)


class _Ids:
    """``iter_batches``' in-memory source, making each batch's document ids (the graph gathers
    their rows)."""

    def __init__(self, held: InMemorySplit):
        self.block = held.block

    @staticmethod
    def batch(ids, length: int) -> np.ndarray:
        return np.asarray(ids, np.int64)


def _graph_gather(held: InMemorySplit, b: Batching, rows):
    """``(ids, lengths) -> rows`` in the graph, from ``rows`` (the variable that holds the
    split): each batch padded to its bucket (the grid length of its longest document), as the
    store pads."""
    import tensorflow as tf

    store = held.store
    offsets = tf.constant(held.offsets)
    grid = tf.constant(bucket_lengths(store.max_len) if b.buckets else [store.max_len], tf.int32)
    pre = store.padding == "pre"

    def gather(ids, lengths):
        steps = tf.gather(grid, tf.searchsorted(grid, tf.reduce_max(lengths)[None],
                                                side="left"))[0]
        t = tf.range(steps)[None, :]
        n = lengths[:, None]
        first = steps - n if pre else tf.zeros_like(n)
        index = tf.gather(offsets, ids)[:, None] + tf.cast(t - first, tf.int64)
        real = (t >= first) & (t < first + n)
        return tf.gather(rows, tf.where(real, index, held.pad_row))

    return gather
