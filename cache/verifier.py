"""``verify``: read every chunk of a complete store and compare the listing with the chunks its
layout says it must hold (see :mod:`embcache.cache.integrity` for the three layers of checks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embcache.cache.errors import StoreError
from embcache.cache.integrity import (
    ARRAYS,
    Fault,
    detail_of,
    expected_chunks,
    expected_objects,
    fault,
    is_checksummed,
    list_chunks,
    manifest,
    object_of,
    read_chunk_stats,
    store_arrays,
)


@dataclass
class VerifyReport:
    """What :func:`embcache.verify` found: ``ok`` when every chunk is present and intact.

    Attributes:
        store: the store's path or URL.
        faults: each damaged or missing chunk (:class:`Fault`: array, chunk, documents, why).
        chunks_read: chunks read and decoded.
        bytes_read: their decoded bytes.
        seconds: wall time of the check.
        checksummed: whether the store has crc32c checksums (older stores: decoding checked).
        manifest: whether the chunk listing was checked against the store's manifest.
    """

    store: str
    faults: list[Fault] = field(default_factory=list)
    chunks_read: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    checksummed: bool = False
    manifest: bool = False

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def blocks(self) -> list[int]:
        return sorted({f.block for f in self.faults})

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "faults": [f.to_dict() for f in self.faults],
                "damaged_blocks": self.blocks, "chunks_read": self.chunks_read,
                "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3),
                "checksummed": self.checksummed, "manifest": self.manifest}

    def lines(self) -> list[str]:
        what = ("crc32c checksums checked" if self.checksummed
                else "no checksums (an older store): decoding checked")
        head = (f"{self.store}: {self.chunks_read:,} chunks read ({self.bytes_read / 1e6:,.1f} MB "
                f"decoded) in {self.seconds:.1f} s, {what}")
        if self.ok:
            return [head, "OK: every chunk is present and intact"]
        docs = sum(b - a for a, b in {f.docs for f in self.faults})
        return [head] + [f"  {f.line()}" for f in self.faults] + [
            f"DAMAGED: {len(self.faults)} chunks in {len(self.blocks)} blocks ({docs:,} documents). "
            "Repair: the embed-corpus command that built the store (same corpus and "
            "options) with `repair=True` rewrites only these blocks"]


def _missing(meta, names: list[str], listed: dict, expected: dict) -> dict[tuple[str, tuple], Fault]:
    """The chunks the layout expects whose objects the listing lacks."""
    objects = expected_objects(meta, expected)
    faults: dict[tuple[str, tuple], Fault] = {}
    for name in names:
        for c in sorted(objects.get(name, set()) - listed[name]):
            if meta.sharded:  # a whole shard is gone: each chunk it should hold is missing
                for inner in sorted(i for i in expected[name] if object_of(meta, name, i) == c):
                    faults[(name, inner)] = fault(meta, name, inner, "missing",
                                                  "its shard is missing")
            else:
                faults[(name, c)] = fault(meta, name, c, "missing")
    return faults


def verify_store(store, *, threads: int = 4,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Read and decode every chunk of every array and compare the listing with the chunks the
    store must hold. ``progress(n)`` is called with the number of stored objects once they are
    listed (negative: the total to expect) and then with 1 per object read.

    A sharded store (:mod:`embcache.cache.shards`) is read one shard at a time: its index and
    every inner chunk's crc32c are checked on the stored bytes (no decompression needed: the
    checksum says the bytes are those written), and inner chunks the layout expects but the
    index lacks are reported missing.

    Memory: ``threads`` objects in flight (a ``tokens`` chunk is about 2 MB decoded; a shard is
    its compressed bytes, a few MB per block).

    ``store``: opened with ``open_store(url, require_complete=False, check_chunks=False)``.

    Raises:
        StoreError: the store is incomplete; damage inside it is reported, not raised.
    """
    from embcache.cache.shards import check_shard

    t0 = time.perf_counter()
    url, meta, group = store.url, store.meta, store.group
    if not meta.complete:
        raise StoreError(f"Store {url} is incomplete: its embed-corpus run did not finish; rerun "
                         "it to resume (verify checks complete stores)")
    report = VerifyReport(store=str(url), manifest=manifest(meta) is not None,
                          checksummed=is_checksummed(group["tokens"]))
    names = store_arrays(group)
    listed = {name: list_chunks(group[name]) for name in names}
    stats = read_chunk_stats(group)
    expected = expected_chunks(meta, group, stats)
    faults = _missing(meta, names, listed, expected)
    arrays = {name: group[name] for name in names}  # opened once: a lookup re-reads metadata
    if progress:  # objects: chunks, or a sharded store's shards
        progress(-sum(len(v) for v in listed.values()))

    def check(job):
        name, coords = job
        if meta.sharded:  # one read per shard: its index and each inner chunk's crc32c
            checked, nbytes, problems = check_shard(arrays[name], coords, expected.get(name, set()))
            return job, checked, nbytes, problems
        try:
            return job, 1, arrays[name].get_block_selection(coords).nbytes, []
        except Exception as e:  # noqa: BLE001 - any codec's decode error is damage
            return job, 1, 0, [(coords, "damaged", detail_of(e))]

    jobs = [(name, c) for name in names for c in sorted(listed[name])]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for (name, _coords), checked, nbytes, problems in pool.map(check, jobs):
            report.chunks_read += checked
            report.bytes_read += nbytes
            for inner, problem, detail in problems:
                faults[(name, inner)] = fault(meta, name, inner, problem, detail)
            if progress:
                progress(1)
    if stats.shape[0] and (stats[:, 0] < 0).any():  # a commit marker lost after completion
        for b in np.flatnonzero(stats[:, 0] < 0).tolist():
            faults.setdefault(("chunk_stats", (b, 0)),
                              fault(meta, "chunk_stats", (b, 0), "damaged", "unreadable"))
    report.faults = sorted(faults.values(), key=lambda f: (f.block, ARRAYS.index(f.array), f.chunk))
    report.seconds = time.perf_counter() - t0
    return report
