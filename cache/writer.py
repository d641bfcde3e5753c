"""Writing a store: created new, resumed from its commit markers (``chunk_stats`` rows), or a
complete one reopened to rewrite its damaged blocks. Blocks are written by
:class:`embcache.cache.embed.BlockWriter`, in any process; :class:`StoreWriter` decides what is
left to write and, when every block is in, records the totals and sets ``complete``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from embcache.cache.errors import StoreError
from embcache.cache.integrity import chunk_counts, mark_for_rewrite, read_chunk_stats
from embcache.cache.layout import create_store
from embcache.cache.meta import LAYOUT_VERSION, SPLIT_NAMES, StoreMeta, StoreTotals
from embcache.cache.store import Store, is_local, layout_error, store_state


def remove_store(url: str) -> None:
    """Delete a store (only called for stores embcache itself recognises)."""
    if is_local(url):
        shutil.rmtree(str(url).removeprefix("file://"))
    else:
        import zarr

        zarr.open_group(store=url, mode="w")  # mode "w" clears the prefix


def check_target(url: str, overwrite: bool, *, complete_ok: bool = False) -> str:
    """Refuse an output a new store may not be written to; returns its state.

    Raises:
        StoreError: a file or a foreign folder is in the way, or a complete store without
            ``overwrite`` (unless ``complete_ok``: the caller checks it for repair).
    """
    state = store_state(url)
    if state == "file":
        raise StoreError(f"Output {url} is a file, not a store folder")
    if state == "foreign":
        raise StoreError(f"Output {url} exists and is not an embcache store; choose another path")
    if state == "complete" and not overwrite and not complete_ok:
        raise StoreError(f"Store {url} already exists and is complete; pass `overwrite=True` to "
                         "rebuild it")
    return state


class StoreWriter:
    """A store being written: created new, or resumed from its commit markers.

    The job that drives it reads ``scan -> StoreWriter.open -> write blocks -> finish``:
    ``done[i]`` says block *i* is already in (a resumed run skips it), blocks are written by
    :class:`cache.embed.BlockWriter` (in any process), and ``finish`` checks that every block
    committed, adds the totals and only then sets ``complete``.
    """

    def __init__(self, url: str, group, meta: StoreMeta, repaired: int = 0):
        self.url, self.group, self.meta = url, group, meta
        self.done = read_chunk_stats(group)[:, 0] >= 0
        self.resumed = int(self.done.sum())
        self.repaired = repaired

    @classmethod
    def open(cls, url: str, meta: StoreMeta, *, overwrite: bool = False,
             repair: list[int] | None = None) -> StoreWriter:
        """Resume the incomplete store at ``url`` if it was started with the same job
        (:meth:`StoreMeta.job`), else create it (replacing a complete one only on ``overwrite``).

        ``repair``: the damaged blocks of the complete store at ``url`` (found by
        :func:`embcache.cache.verifier.verify_store`); they are marked not done and the store is
        resumed, so that only they are rewritten.

        Raises:
            StoreError: see :func:`check_target`; an incomplete (or, to repair, a complete) store
                written with other settings; a remote store that cannot be opened (it is never
                deleted for that).
        """
        state = check_target(url, overwrite, complete_ok=bool(repair))
        if state == "complete" and repair and not overwrite:
            # _resume checked that the store was written by this same job: `meta`'s layout is
            # the store's, so the damaged blocks are marked through it.
            group = _resume(url, meta, what="a complete store with damaged blocks")
            mark_for_rewrite(Store(url, group, meta), repair)
            return cls(url, group, meta, repaired=len(repair))
        group = None
        if state == "incomplete" and not overwrite:
            group = _resume(url, meta)
        elif state in ("incomplete", "complete"):
            remove_store(url)
        if group is None:
            try:
                if is_local(url):
                    Path(url.removeprefix("file://")).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"Cannot create output folder for {url}: {e.strerror}") from None
            group = create_store(url, meta)
        return cls(url, group, meta)

    def finish(self, seconds: float) -> StoreMeta:
        """Check every block committed, record the totals and mark the store complete.

        Raises:
            StoreError: a block has no commit marker (the store stays incomplete).
        """
        stats = read_chunk_stats(self.group)
        missing = int((stats[:, 0] < 0).sum())
        if missing:
            raise StoreError(f"Store {self.url}: {missing} chunks were not written")
        totals = stats.sum(axis=0)
        split = Store(self.url, self.group, self.meta).read("split")  # 1 B per document
        counts = np.bincount(split, minlength=len(SPLIT_NAMES))
        from datetime import datetime, timezone

        self.meta = self.meta.finished(StoreTotals(
            num_tokens=int(totals[1]), oov_tokens=int(totals[2]), kept_tokens=int(totals[3]),
            split_counts={n: int(c) for n, c in zip(SPLIT_NAMES, counts)},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            seconds=round(seconds, 3), chunks=chunk_counts(self.group)))
        # `complete` turns true here, last, in one write of zarr.json with the totals.
        self.group = self.group.update_attributes(self.meta.to_attrs())
        return self.meta


def _resume(url: str, meta: StoreMeta, what: str = "an incomplete run"):
    """The incomplete store's group if it can be resumed with ``meta``; ``None`` when it holds
    nothing worth keeping (killed while being created) and was removed."""
    import zarr

    try:
        group = zarr.open_group(store=url, mode="r+")
        attrs = dict(group.attrs)
    except Exception as e:  # noqa: BLE001
        # An open error (a network or credentials problem, a file that cannot be read) says
        # nothing about the store: only one whose attributes were read and lack the layout
        # tag is removed below.
        raise StoreError(f"Cannot open {url} to resume it: {type(e).__name__}: {e}; the store "
                         "was left as it is") from None
    if "embcache_layout" not in attrs:  # killed before its attributes were written
        remove_store(url)
        return None
    if attrs["embcache_layout"] != LAYOUT_VERSION:
        raise layout_error(url, attrs["embcache_layout"])
    try:
        previous = StoreMeta.from_attrs(attrs, f"Store {url}")
    except StoreError as e:
        if not _committed(group):  # cut while its metadata was written: nothing to keep
            remove_store(url)
            return None
        raise StoreError(f"{e}; pass `overwrite=True` to start again") from None
    changed = previous.job_differences(meta)
    if changed:
        raise StoreError(f"Store {url} is {what} with different settings "
                         f"({', '.join(changed)} differ); rerun the command that wrote it, or "
                         "pass `overwrite=True` to start again")
    if is_local(url):
        # zarr's local store writes each chunk to `<chunk>.<uuid>.partial` and renames it: a kill
        # mid-write leaves that temporary file behind. The block is rewritten on resume, so the
        # leftover is garbage that would stay in the store for good.
        for stale in Path(url.removeprefix("file://")).rglob("*.partial"):
            stale.unlink(missing_ok=True)
    return group


def _committed(group) -> bool:
    """Whether any block of a store has its commit marker (attributes come first, so a store
    with a committed block once had whole attributes)."""
    try:
        return "chunk_stats" in group and bool((read_chunk_stats(group)[:, 0] >= 0).any())
    except Exception:  # noqa: BLE001 - unreadable: treat as holding work, refuse to delete it
        return True


