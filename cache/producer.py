"""The input pipeline in its own process: batches are read, shuffled, bucketed and padded by a
spawned producer, written into shared-memory slots, and handed to ``tf.data`` as slot numbers.

Why a process: in the training process the pipeline's Python (zarr's reads, the shuffle buffer,
the buckets) and TensorFlow's generator thread take turns at one GIL. Measured on 20 Newsgroups
(2 cores, BENCHMARKS.md), the same pipeline that makes 35,000-40,000 padded documents/s on its
own delivered 6,000-11,000/s through ``tf.data.Dataset.from_generator``; lowering Python's
switch interval only reached 14,000-20,000. A producer process has its own interpreter, so the
model's process only copies each finished batch out of its slot.

The producer is spawned (never forked: TensorFlow and zarr hold threads) with its dataset, serves
one pass per request (the epoch number seeds its shuffle, so passes are as reproducible as in
process), and stops when its dataset is garbage-collected or the program exits. Memory: the
producer's pipeline (see :mod:`embcache.cache.stream`) plus ``queue_batches`` slots of one batch padded to
``max_len`` each (at most 256 MB).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import weakref

import numpy as np

from embcache.cache.errors import (
    NO_MAIN_GUARD,
    NO_MAIN_GUARD_EXIT,
    EmbcacheError,
    StoreError,
    leave_if_bootstrapping,
)
from embcache.cache.store import open_store
from embcache.cache.stream import StreamPlan, iter_batches

_END, _ERROR = "end", "error"


@contextlib.contextmanager
def _quiet_resource_tracker():
    """Python's resource tracker unlinks the slots if this process is killed (``kill -9``), and
    then warns "leaked shared_memory objects" to the terminal: the cleanup is what we want, the
    warning is noise. The tracker starts with the first shared-memory block and inherits the
    environment: its warning is filtered in ``PYTHONWARNINGS`` while the block is made, and the
    variable is put back as it was (the tracker, once started, keeps what it was given)."""
    rule = "ignore::UserWarning:multiprocessing.resource_tracker"
    current = os.environ.get("PYTHONWARNINGS")
    if rule not in (current or ""):
        os.environ["PYTHONWARNINGS"] = f"{current},{rule}" if current else rule
    try:
        yield
    finally:
        if current is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = current


class Slots:
    """Batch slots in shared memory: the producer writes a padded batch into a free slot and
    sends only ``(slot, shape)``; a pipe would carry every byte (measured: 14,000 documents/s
    through a ``multiprocessing.Queue`` against 35,000 made)."""

    def __init__(self, count: int, x_bytes: int, rows: int, name: str | None = None):
        from multiprocessing import shared_memory

        self.count, self.x_bytes, self.rows = count, x_bytes, rows
        self.slot_bytes = x_bytes + rows * (4 + 4 + 8)
        if name is None:
            with _quiet_resource_tracker():
                self.shm = shared_memory.SharedMemory(create=True, size=count * self.slot_bytes)
        else:  # the creating process owns it and unlinks it
            self.shm = shared_memory.SharedMemory(name=name)

    def spec(self) -> tuple:
        return self.count, self.x_bytes, self.rows, self.shm.name

    def _views(self, slot: int, shape, dtype):
        base = slot * self.slot_bytes
        n = shape[0]
        buf = self.shm.buf
        x = np.ndarray(shape, dtype=dtype, buffer=buf, offset=base)
        at = base + self.x_bytes
        lengths = np.ndarray((n,), np.int32, buffer=buf, offset=at)
        labels = np.ndarray((n,), np.int32, buffer=buf, offset=at + 4 * self.rows)
        seq = np.ndarray((n,), np.int64, buffer=buf, offset=at + 8 * self.rows)
        return x, lengths, labels, seq

    def write(self, slot: int, batch) -> tuple:
        for view, a in zip(self._views(slot, batch[0].shape, batch[0].dtype), batch):
            view[...] = a
        return slot, batch[0].shape, batch[0].dtype.str

    def read(self, slot: int, shape, dtype) -> tuple:
        return tuple(v.copy() for v in self._views(slot, shape, np.dtype(dtype)))


def _serve(url: str, reading: tuple[bool, bool], split, chunks, counts, tokens, options: dict, slots_spec,
           requests, out, free, cancel) -> None:
    """The producer's loop: one pass of :func:`embcache.cache.stream.iter_batches` per request."""
    store = open_store(url, check_chunks=False)  # the opening process listed its chunks already
    if reading[0]:  # (with ids, with vectors): as the opening process reads the store
        store = store.reading_ids(vectors=reading[1])
    plan = StreamPlan(chunks, counts, tokens)
    slots = Slots(*slots_spec)
    seed = options.pop("seed")  # None: unshuffled passes
    while True:
        epoch = requests.recv()
        if epoch is None:
            return
        log: set[int] = set()
        try:
            rng = np.random.default_rng([seed, epoch]) if seed is not None else None
            for batch in iter_batches(store, plan, split=split, rng=rng, read_log=log, **options):
                if cancel.is_set():
                    break
                out.send(slots.write(free.recv(), batch))
            out.send((_END, sorted(log)))
        except EmbcacheError as e:  # a damaged chunk: the error itself goes through, with its
            out.send((_ERROR, _portable(e), True))  # type and fields (ChunkError.faults)
        except Exception as e:  # noqa: BLE001 - reported to the training process, which raises
            out.send((_ERROR, f"{type(e).__name__}: {e}", False))


def _portable(e: EmbcacheError) -> EmbcacheError | str:
    """``e`` itself when it survives the pipe (pickled and rebuilt), so the training process
    raises the same type with the same fields as an in-process read would; else its line."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
    except Exception:  # noqa: BLE001 - an error that cannot travel goes as its message
        return str(e)
    return e


class Producer:
    """A spawned process that produces the batches of :func:`embcache.cache.stream.iter_batches`.

    Passes are numbered by epoch. When a shuffled (training) pass ends, the next is requested at
    once, so the producer reads and shuffles epoch ``e + 1``'s first blocks while the model
    finishes epoch ``e`` (the shuffle buffer must fill before the first batch leaves); an
    unshuffled pass (evaluation, scoring) is often the last, so it is not read ahead. Messages go
    over pipes written directly by the sending thread (``multiprocessing.Queue`` hands each one
    to a feeder thread: one more GIL hand-off per batch).
    """

    def __init__(self, store, plan, split, *, seed: int, shuffle: bool, queue_batches: int = 8,
                 **options):
        leave_if_bootstrapping()
        self.args = (store.url, (store.with_ids, store.vectors), split, plan.chunks, plan.counts, plan.tokens,
                     {**options, "seed": seed if shuffle else None})
        self.read_ahead = shuffle
        rows = options["batch_size"]
        x_bytes = rows * store.max_len * store.row_width * store.row_dtype.itemsize
        # At least 2 slots (one written while one is read), at most 256 MB of them.
        count = max(2, min(queue_batches, (256 << 20) // x_bytes))
        self.slots = Slots(count, x_bytes, rows)
        self.lock = threading.Lock()
        self.inflight: int | None = None  # the epoch the producer is on (requested, not ended)
        self.consumer = 0  # token of the generator that may read the pass in flight
        ctx = multiprocessing.get_context("spawn")
        requests_r, self.requests = ctx.Pipe(duplex=False)
        self.out, out_w = ctx.Pipe(duplex=False)
        free_r, self.free = ctx.Pipe(duplex=False)
        for slot in range(count):
            self.free.send(slot)
        self.cancel = ctx.Event()
        # Started now: the process imports and opens the store while the caller builds its model.
        self.process = ctx.Process(target=_serve, daemon=True, args=(
            *self.args, self.slots.spec(), requests_r, out_w, free_r, self.cancel))
        self.process.start()
        weakref.finalize(self, _stop, self.process, self.requests, self.slots.shm)

    def _get(self):
        while not self.out.poll(1.0):
            if not self.process.is_alive():
                self._died()
        try:
            return self.out.recv()
        except EOFError:  # the process ended and closed its pipe
            self.process.join(5)
            self._died()

    def _died(self):
        if self.process.exitcode == NO_MAIN_GUARD_EXIT:
            raise EmbcacheError(f"Reading {self.args[0]} failed: {NO_MAIN_GUARD}")
        raise StoreError(f"The input pipeline process for {self.args[0]} died "
                         f"(exit code {self.process.exitcode})")

    def _request(self, epoch: int) -> None:
        self.requests.send(epoch)
        self.inflight = epoch

    def _drain(self) -> None:
        """Abandon the pass in flight (its consumer stopped early): run it to its end."""
        self.cancel.set()
        while True:
            item = self._get()
            if isinstance(item[0], str):
                break
            self.free.send(item[0])
        self.cancel.clear()
        self.inflight = None

    def batches(self, epoch: int, read_log: set | None = None):
        """One pass: yields ``(x, lengths, labels, seq)`` as :func:`iter_batches` would."""
        with self.lock:
            if self.inflight is not None and self.inflight != epoch:
                self._drain()
            if self.inflight is None:
                self._request(epoch)
            self.consumer += 1
            token = self.consumer
        done = False
        try:
            while True:
                with self.lock:
                    if self.consumer != token:  # a newer pass took over
                        return
                    item = self._get()
                    if isinstance(item[0], str):
                        done = True
                        self.inflight = None
                        if item[0] == _ERROR:
                            if isinstance(item[1], EmbcacheError):
                                raise item[1]
                            raise StoreError(item[1] if item[2] else
                                             f"Reading {self.args[0]} failed: {item[1]}")
                        if self.read_ahead:
                            self._request(epoch + 1)
                        if read_log is not None:
                            read_log.update(item[1])
                        return
                    batch = self.slots.read(*item)
                    self.free.send(item[0])
                yield batch
        finally:
            with self.lock:
                if not done and self.consumer == token and self.inflight == epoch:
                    self._drain()


def _stop(process, requests, shm) -> None:
    if process.is_alive():
        try:
            requests.send(None)
            process.join(timeout=5)
        except (OSError, ValueError):
            pass
        if process.is_alive():
            process.terminate()
    shm.close()
    shm.unlink()
