"""The verify job: read every chunk of a store, report damaged and missing ones (see
:mod:`embcache.cache.integrity`). Repair is embed-corpus's: the command that built the store,
with ``repair=True`` (``--repair``), rewrites only the damaged blocks."""

from __future__ import annotations

import sys

from embcache.cache.errors import StrPath, path_arg, renamed
from embcache.cache.locks import reading
from embcache.cache.store import open_store
from embcache.cache.verifier import VerifyReport, verify_store


@renamed(url="store")
def verify(store: StrPath, *, progress: bool = False, threads: int = 4) -> VerifyReport:
    """Check every chunk of the complete store at ``store`` (a path or URL); damage is
    reported, not raised.

    Raises:
        StoreError: the store cannot be opened, is incomplete, or is being written.
    """
    url = path_arg(store, "store")
    with reading(url):  # not while embed-corpus replaces or repairs it
        return verify_unlocked(url, progress=progress, threads=threads)


def verify_unlocked(url: str, *, progress: bool = True, threads: int = 4) -> VerifyReport:
    """:func:`verify` for a caller that holds the store's lock itself (embed-corpus)."""
    from tqdm.auto import tqdm

    opened = open_store(url, require_complete=False, check_chunks=False)  # errors before the bar
    bar = tqdm(total=0, unit="chunk", disable=not progress, file=sys.stderr, desc="verify",
               dynamic_ncols=True)

    def tick(n: int) -> None:
        if n < 0:
            bar.total = -n
            bar.refresh()
        else:
            bar.update(n)

    try:
        return verify_store(opened, threads=threads, progress=tick)
    finally:
        bar.close()
