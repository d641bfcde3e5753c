"""Where embed-corpus blocks run: in this process, a pool of spawned processes, or Dask.

All three run the same task (:func:`embcache.cache.embed.write_blocks`) on whole blocks (a sharded
store's whole shard groups), so they write the same store. Workers load the vectors themselves
from the parse cache (memory-mapped), so only a block's texts travel with a task, never the
vectors.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from embcache.cache.errors import NO_MAIN_GUARD, EmbcacheError, install_hint, leave_if_bootstrapping
from embcache.cache.sources import EmbeddingSource
from embcache.cache.tfenv import is_verbose, stderr_to_devnull


@dataclass
class Executor:
    """``submit(store_url, first, blocks) -> Future`` and how many tasks may run at once."""

    submit: Callable[..., Future]
    parallel: int


def parse_scheduler(value: str | None) -> tuple[str, int | str] | None:
    """``local:N`` -> ("local", N); ``tcp://host:port`` (or tls://, ws://) -> ("remote", address)."""
    if value is None:
        return None
    if value.startswith("local:"):
        n = value.removeprefix("local:")
        if n.isdigit() and int(n) >= 1:
            return "local", int(n)
    elif "://" in value:
        return "remote", value
    raise EmbcacheError("Invalid value for `scheduler`. Expected local:N (N workers on this "
                        f"machine) or a scheduler address such as tcp://host:8786. Received: "
                        f"scheduler={value!r}")


@contextlib.contextmanager
def block_executor(scheduler: str | None, workers: int, use_pool: bool,
                   source: EmbeddingSource) -> Iterator[Executor | None]:
    """``None`` means: run blocks in this process. ``source`` travels to each worker as a
    reference (:mod:`embcache.cache.sources`); each worker loads it once."""
    from embcache.cache.embed import init_worker, write_blocks

    parsed = parse_scheduler(scheduler)
    if parsed is not None:
        yield from _dask(parsed, source)
        return
    if not use_pool:
        yield None
        return
    leave_if_bootstrapping()
    # Spawned, never forked: zarr-python 3 can deadlock in a forked child.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(source,))
    try:
        yield Executor(submit=lambda *a: pool.submit(write_blocks, source, *a),
                       parallel=workers)
    except BrokenProcessPool:
        raise EmbcacheError(f"A worker process of embed-corpus died; if this is your own "
                            f"script, {NO_MAIN_GUARD}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def dask_client(parsed: tuple[str, int | str]) -> Iterator[Any]:
    """A ``distributed.Client`` for a parsed scheduler: ``local`` starts a ``LocalCluster`` of N
    single-threaded worker processes on this machine (closed afterwards); ``remote``
    connects to the scheduler at the address.

    Raises:
        EmbcacheError: the 'dask' extra is missing; the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise EmbcacheError("`scheduler=` needs the 'dask' extra (dask.distributed is not "
                            f"installed): {install_hint('dask')}") from None
    kind, arg = parsed
    cluster = None
    try:
        if kind == "local":
            leave_if_bootstrapping()
            # The workers start with stderr at /dev/null (unless --verbose): each imports
            # TensorFlow, whose start-up lines would otherwise reach the terminal once per
            # worker; a task's error comes back to this process through its future.
            with stderr_to_devnull(not is_verbose()):
                cluster = LocalCluster(n_workers=int(arg), threads_per_worker=1,
                                       processes=True, dashboard_address=None)
            client = Client(cluster)
        else:
            client = Client(arg, timeout="20s")
    except OSError as e:
        if cluster is not None:
            cluster.close()
        raise EmbcacheError(f"Cannot reach the Dask scheduler {arg}: {e}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _dask(parsed, source: EmbeddingSource):
    from embcache.cache.embed import write_blocks

    with dask_client(parsed) as client:
        # Each task owns one whole chunk and writes its own region; a failed task is retried.
        executor = client.get_executor(retries=2, pure=False)
        parallel = max(1, sum(client.nthreads().values()))
        yield Executor(submit=lambda *a: executor.submit(write_blocks, source, *a),
                       parallel=parallel)
