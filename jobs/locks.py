"""One writer at a time: an exclusive advisory lock (``flock``) beside what a job writes.

A second ``embed-corpus`` into the same store, or a second ``train`` into the same run folder,
fails at once with one line instead of interleaving its writes with the first one's. The lock
file stays (empty files named ``.<name>.lock``); the lock itself goes with the process that held
it, so a killed job never leaves a stale lock. Object-storage stores are not locked (no shared
file system to lock on).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from embcache.cache.errors import EmbcacheError


def lock_path(target: str | os.PathLike) -> Path:
    """``.<name>.lock`` in the folder that holds ``target``."""
    p = Path(target).absolute()
    return p.parent / f".{p.name}.lock"


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock of ``target`` for the block.

    Raises:
        EmbcacheError: another process holds it (``what`` names the thing in the message).
    """
    path = lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise EmbcacheError(f"Cannot create the lock file {path} ({e.strerror}): is "
                            f"{path.parent} a folder you can write to?") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbcacheError(f"{what} is being written by another process right now (it holds "
                                f"{path}); wait for it to finish, or write elsewhere") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
