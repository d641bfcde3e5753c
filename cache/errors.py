"""The one family of exceptions embcache raises for problems a user can fix.

The CLI prints any :class:`EmbcacheError` as a single ``Error: ...`` line with exit code 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeAlias, TypeVar

# A path argument: a string (a path or a URL) or a path object (``pathlib.Path``).
StrPath: TypeAlias = "str | os.PathLike[str]"

P = ParamSpec("P")
R = TypeVar("R")


class EmbcacheError(Exception):
    """Base class: a problem with the user's input, files or settings."""


class VectorsError(EmbcacheError):
    """The word-vectors file is missing, unreadable or malformed."""


class CorpusError(EmbcacheError):
    """The corpus is missing, empty, unreadable or does not match the options given."""


class StoreError(EmbcacheError):
    """The store is missing, incomplete, of another layout or not compatible with the request."""


class ModelError(EmbcacheError):
    """A model name, run folder or model card is wrong."""


def os_error_line(e: OSError, where: str | None = None) -> str:
    """``[Errno 27] File too large`` -> one line naming the file (or ``where``: what was being
    written when the error has no file name) and what to do."""
    import errno

    path = e.filename if e.filename is not None else where
    what = e.strerror or str(e) or type(e).__name__
    hint = {errno.ENOSPC: "free some space", errno.EFBIG: "free space or raise the file-size limit",
            errno.EDQUOT: "free space within your quota", errno.EROFS: "write somewhere writable",
            errno.EACCES: "check its permissions", errno.EPERM: "check its permissions"}
    fix = hint.get(e.errno or 0, "fix it")
    return f"{what}{f': {path}' if path else ''} ({fix} and rerun the command)"


@contextlib.contextmanager
def writing(where: str) -> Iterator[None]:
    """``with writing("store news20.zarr"):`` turns an ``OSError`` (disk full, read-only file
    system, permissions) into an :class:`EmbcacheError` naming what was being written."""
    try:
        yield
    except OSError as e:
        raise EmbcacheError(os_error_line(e, where)) from None


def install_hint(extra: str) -> str:
    """The ``pip install`` that adds ``extra`` to *this* installation of embcache: from the
    folder it was installed from (``-e`` for an editable install: a checkout), else by name."""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    for dist in metadata.distributions(name="embcache"):  # a checkout's egg-info comes first
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        url = urlparse(info.get("url", ""))
        if url.scheme == "file":
            editable = "-e " if info.get("dir_info", {}).get("editable") else ""
            return f"pip install {editable}'{unquote(url.path)}[{extra}]'"
    return f"pip install 'embcache[{extra}]'"


# A spawned child re-runs the user's main script; one that starts embcache's processes at its top
# level (no `if __name__ == "__main__":`) would start more of them from every child. The child
# leaves at once with this exit code, silently, and the parent says what to add.
NO_MAIN_GUARD_EXIT = 87
NO_MAIN_GUARD = ("this script starts embcache's worker processes at its top level, so every "
                 "worker would run it again: put the script's work under "
                 "`if __name__ == \"__main__\":`")


def leave_if_bootstrapping() -> None:
    """Call before starting processes: in a child that is still importing the parent's main
    script (spawn's bootstrapping), exit with :data:`NO_MAIN_GUARD_EXIT` instead."""
    import multiprocessing
    import os

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        os._exit(NO_MAIN_GUARD_EXIT)


def renamed(**old_to_new: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: keyword arguments that were renamed, so that one concept has one name across
    the API (``vectors``, ``store``, ``out``, ``runs``, ``data``). The old name keeps working for
    one release with a :class:`DeprecationWarning`; giving both is an error."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise EmbcacheError(f"Give `{new}=` only: `{old}=` is its old name")
                warnings.warn(f"{fn.__name__}({old}=...) is deprecated and goes in the next release: "
                              f"call it {new}=...", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return deco


def path_arg(value: StrPath, name: str) -> str:
    """A path argument as a string (``pathlib.Path`` accepted), or one line naming ``name``."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str) and path:
            return path
    raise EmbcacheError(f"Invalid value for `{name}`. Expected a path or URL (a str or a "
                        f"pathlib.Path). Received: {name}={value!r}"[:300])


T = TypeVar("T")


def settings_arg(cls: type[T], value: T | dict[str, Any], name: str) -> T:
    """A settings object given as itself or as a dict of its fields (one line naming ``name``
    and the unknown field otherwise)."""
    import dataclasses

    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        fields = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise EmbcacheError(f"Invalid value for `{name}`: unknown field {unknown[0]!r}; the "
                                f"fields are {', '.join(fields)}")
        return cls(**value)
    raise EmbcacheError(f"Invalid value for `{name}`. Expected a {cls.__name__} or a dict of its "
                        f"fields. Received: {name}={value!r}"[:300])
