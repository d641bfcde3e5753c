"""Writers and readers of a store or run folder coordinate through an advisory lock (``flock``)
on ``.<name>.lock`` beside it.

- A writer (``embed-corpus``, ``train`` into its run folder) holds it exclusively: a second
  writer, or a writer while a job is reading the store, fails at once with one line, instead of
  interleaving writes or replacing a store under a reader.
- A reader (``train`` and ``score`` streaming a store, ``info``) holds it shared for as long as
  it reads, and leaves a record ``.<name>.lock.reader-<pid>`` (its command) beside it so a
  refused writer can say who is reading; a reader that finds a writer at work is refused too.

The lock itself goes with the process that held it, so a killed job never leaves a stale lock
(a killed reader's record is ignored once its process is gone). The last holder to leave removes
the lock file (while still holding it exclusively), and a process that locked a file removed
meanwhile sees that it is no longer the one at the path and locks the new one: so no call leaves
a ``.lock`` file behind, and two processes never hold "the" lock on two different files. A
killed job's lock file stays until the next job on that target removes it. Object-storage stores
are not locked: there is no shared file system to lock on (see the README).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from embcache.cache.errors import EmbcacheError, StoreError


def lock_path(target: str | os.PathLike) -> Path:
    """``.<name>.lock`` in the folder that holds ``target``."""
    p = Path(target).absolute()
    return p.parent / f".{p.name}.lock"


def _lock(path: Path, mode: int) -> int:
    """A descriptor of ``path`` holding ``flock(mode | LOCK_NB)``; the file is (re)created when
    its last holder removed it between our open and our lock.

    Raises:
        OSError: the file cannot be created; BlockingIOError: another process holds the lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # we locked a removed file: lock the one now at the path


def _unlock(fd: int, path: Path) -> None:
    """Release; the last holder (the one that can turn its lock exclusive at once) removes the
    file first."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except OSError:  # another holder remains (BlockingIOError), or the folder is read-only
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock of ``target`` for the block.

    Raises:
        EmbcacheError: another process holds it (``what`` names the thing in the message).
    """
    path = lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, fcntl.LOCK_EX)
    except BlockingIOError:
        readers = _live_readers(path)
        if readers:
            pid, command = readers[0]
            more = f" and {len(readers) - 1} more" if len(readers) > 1 else ""
            raise EmbcacheError(f"{what} is being read by another process right now (pid "
                                f"{pid}: {command}{more}); wait for it to finish, or write "
                                "elsewhere") from None
        raise EmbcacheError(f"{what} is being written by another process right now (it holds "
                            f"{path}); wait for it to finish, or write elsewhere") from None
    except OSError as e:
        raise EmbcacheError(f"Cannot create the lock file {path} ({e.strerror}): is "
                            f"{path.parent} a folder you can write to?") from None
    try:
        yield
    finally:
        _unlock(fd, path)


def _record(path: Path, pid: int) -> Path:
    return path.with_name(f"{path.name}.reader-{pid}")


def _live_readers(path: Path) -> list[tuple[int, str]]:
    """(pid, command) of the processes whose reader records are beside ``path`` and still run."""
    out = []
    for rec in sorted(path.parent.glob(f"{path.name}.reader-*")):
        pid = rec.name.rpartition("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        try:
            command = json.loads(rec.read_text()).get("command", "?")
        except (OSError, ValueError):
            command = "?"
        out.append((int(pid), command))
    return out


# The shared locks this process holds: lock file -> [descriptor, reader record, holders]. A job
# that holds a store (train) and the dataset passes inside it (each pass holds it too) share one
# descriptor and one record, so the inner release never drops the outer hold's record.
_HELD: dict[Path, list] = {}
_HELD_LOCK = threading.Lock()


def _join(path: Path) -> bool:
    """Count one more holder of a shared lock this process already holds."""
    with _HELD_LOCK:
        if path in _HELD:
            _HELD[path][2] += 1
            return True
    return False


def _leave(path: Path) -> None:
    """One holder fewer; the last one removes the record and releases the lock."""
    with _HELD_LOCK:
        held = _HELD[path]
        held[2] -= 1
        if held[2]:
            return
        del _HELD[path]
    fd, record = held[0], held[1]
    if record is not None:
        with contextlib.suppress(OSError):
            record.unlink()
    _unlock(fd, path)


@contextlib.contextmanager
def reading(store_url: str, *, while_written: bool = False) -> Iterator[None]:
    """Hold a store's lock shared while it is read (object storage: no lock).

    The one entry every reader goes through: the jobs (``train``, ``score``, ``verify``,
    ``info``, ``tune``) for as long as they run, and every pass of a streamed dataset
    (:func:`embcache.cache.dataset.streamed_dataset`: ``dataset()``, ``predict()``, the
    ``Scorer``, ``save_run()``) for as long as it iterates. Holds in one process share one
    lock.

    ``while_written``: a writer at work is no error, the caller reads without the lock (``info``
    shows an embed-corpus run's progress this way).

    A store in a folder this process cannot write to (a read-only share) is read without the
    lock: nobody can replace it from here either.

    Raises:
        StoreError: a writer holds the lock (the store is being written or replaced).
    """
    url = str(store_url)
    if "://" in url and not url.startswith("file://"):
        yield
        return
    target = Path(url.removeprefix("file://"))
    path = lock_path(target)
    if _join(path):
        try:
            yield
        finally:
            _leave(path)
        return
    try:
        fd = _lock(path, fcntl.LOCK_SH)
    except BlockingIOError:
        if not while_written:
            raise StoreError(f"Store {url} is being written by another process right now; "
                             "wait for it to finish") from None
        yield
        return
    except OSError:  # a folder this process cannot write to: nobody replaces it from here
        yield
        return
    record: Path | None = None
    try:
        _record(path, os.getpid()).write_text(json.dumps({"pid": os.getpid(),
                                                          "command": " ".join(_command())}))
        record = _record(path, os.getpid())
    except OSError:
        pass
    with _HELD_LOCK:
        _HELD[path] = [fd, record, 1]
    try:
        yield
    finally:
        _leave(path)


def _command() -> list[str]:
    args = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else ["python"]
    return [a if len(a) < 80 else a[:77] + "..." for a in args][:12]
