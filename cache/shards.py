"""Sharded stores: Zarr v3's sharding codec packs the chunks of ``shard_blocks`` consecutive
blocks into one object per array (``--shard-blocks K``).

Why: object storage bills and throttles per request and prefers objects of several MB (S3's
guidance: byte ranges of 8-16 MB), while an unsharded store holds one ~1 MB object per chunk per
array (843 objects for 20 Newsgroups, about 27,000 per million short documents).

**One writer per shard.** Concurrent partial writes to one shard lose data (zarr-python #3514,
#3682): a partial write reads the shard, merges and writes it back. So the unit of writing is the
*shard group*: one task embeds the group's blocks into a private in-memory copy of the store's
arrays (:class:`ShardBuffer`, the same metadata, so the same codecs and byte layout), then copies
each array's shard object to the store in one ``set`` (a rename on a file system, a PUT on object
storage): a shard is written whole, by one writer, once. ``chunk_stats``' shard goes last: it
holds the group's commit markers, so a killed group is rewritten whole on resume.

Memory per task: the group's shards, compressed (a few MB per block), plus one block's rows.

**Integrity.** Inner chunks keep their crc32c (the codec chain inside the shard ends with it), and
the shard index has its own. :func:`check_shard` reads a shard's bytes once and checks the index
and every inner chunk's checksum, so ``verify`` still names the damaged inner chunk and the
documents in it; an inner chunk the layout expects but the index lacks is reported missing.
Repair rewrites whole shard groups (a shard has one writer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embcache.cache.layout import SPECS, create_store, writable_arrays

EMPTY = np.uint64(2**64 - 1)  # the index's (offset, length) of an absent inner chunk


def group_of(meta, block: int) -> int:
    """The shard group a block belongs to."""
    return int(block // meta.shard_blocks)


def group_blocks(meta, group: int) -> range:
    k = meta.shard_blocks
    return range(group * k, min((group + 1) * k, meta.num_chunks))


def _run(coro):
    from zarr.core.sync import sync

    return sync(coro)


def _key(array, coords: tuple[int, ...]) -> str:
    base, key = array.store_path.path, array.metadata.encode_chunk_key(coords)
    return f"{base}/{key}" if base else key


def get_object(array, coords: tuple[int, ...]) -> bytes | None:
    """The stored bytes of one chunk (a shard, for a sharded array), or ``None`` if absent."""
    from zarr.core.buffer import default_buffer_prototype

    buf = _run(array.store_path.store.get(_key(array, coords), default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def delete_object(array, coords: tuple[int, ...]) -> None:
    _run(array.store_path.store.delete(_key(array, coords)))


class ShardBuffer:
    """A shard group's arrays, built in memory with the store's own layout
    (:func:`~embcache.cache.layout.create_store` on a ``MemoryStore``), then copied to the
    store one whole shard object per array."""

    def __init__(self, meta):
        from zarr.storage import MemoryStore

        self.meta = meta
        self.arrays = writable_arrays(create_store(MemoryStore(), meta))

    def flush(self, dest: dict[str, Any], group: int) -> None:
        """Copy each array's shard ``group`` into ``dest`` (the store's arrays), ``chunk_stats``
        last: the group's commit markers land only after all its data. A shard the group left
        empty (no kept tokens at all) is deleted in the store, so a resumed group leaves no
        stale object behind."""
        from zarr.core.buffer import default_buffer_prototype

        names = [n for n in dest if n != "chunk_stats"] + ["chunk_stats"]
        for name in names:
            coords = SPECS[name].shard_of(self.meta, group)
            data = get_object(self.arrays[name], coords)
            array = dest[name]
            if data is None:
                delete_object(array, coords)
            else:
                buf = default_buffer_prototype().buffer.from_bytes(data)
                _run(array.store_path.store.set(_key(array, coords), buf))


def crc_ok(stored: bytes) -> bool:
    """Whether an inner chunk's stored bytes end with the crc32c of what precedes it (the
    last codec of every chain embcache writes)."""
    import google_crc32c

    return len(stored) >= 4 and google_crc32c.value(stored[:-4]) == int.from_bytes(stored[-4:],
                                                                                   "little")


def inner_per_shard(array) -> int:
    """Inner chunks along the first axis of one shard."""
    return int(array.shards[0] // array.chunks[0])


def shard_index(raw: bytes, n: int) -> np.ndarray | None:
    """The ``(n, 2)`` offsets and lengths of a shard's index (stored at its end, followed by
    its crc32c, as embcache writes it); ``None`` when the object is too short or the index's
    checksum fails."""
    size = 16 * n
    if len(raw) < size + 4 or not crc_ok(raw[-size - 4:]):
        return None
    return np.frombuffer(raw[-size - 4:-4], dtype="<u8").reshape(n, 2)


def check_shard(array, coords: tuple[int, ...], expected: set[tuple[int, ...]]
                ) -> tuple[int, int, list[tuple[tuple[int, ...], str, str]]]:
    """Read shard ``coords`` of ``array`` once and check it: the index's checksum, each present
    inner chunk's crc32c (the last 4 bytes of its stored bytes), and that every inner chunk in
    ``expected`` (global inner-chunk coordinates) is present.

    Returns:
        (inner chunks checked, bytes read, [(inner coords, "damaged"|"missing", detail)]).
    """

    n = inner_per_shard(array)
    first = coords[0] * n
    tail = (0,) * (array.ndim - 1)
    mine = sorted(c for c in expected if first <= c[0] < first + n)
    raw = get_object(array, coords)
    if raw is None:
        return 0, 0, [(c, "missing", "its shard is missing") for c in mine]
    index = shard_index(raw, n)
    if index is None:
        return 0, len(raw), [(c, "damaged", "the shard's index is damaged") for c in mine]
    problems = []
    checked = 0
    for i, (offset, length) in enumerate(index.tolist()):
        inner = (first + i,) + tail
        if offset == EMPTY and length == EMPTY:
            if inner in expected:
                problems.append((inner, "missing", "absent from its shard's index"))
            continue
        checked += 1
        data = raw[offset:offset + length]
        if offset + length > len(raw) or not crc_ok(data):
            problems.append((inner, "damaged", "checksum mismatch"))
    return checked, len(raw), problems


class ShardReader:
    """Rows of a sharded numeric array in one byte range per shard.

    zarr-python (3.1) reads a partial shard as one request for its index and then one request
    per inner chunk, awaited one after another, and it reads the index again on every call:
    from object storage that made a block of 20 Newsgroups 8 sequential GETs. Here the index is
    read once per shard and kept (a complete store's shards never change), and the inner chunks
    that cover the rows, which lie in order in the shard, come in one ranged GET; each is
    checked against its crc32c and decompressed here. Only the codec chain embcache writes
    (bytes, zstd, crc32c; the index at the end with its crc32c) takes this path
    (:meth:`fits`); anything else is read by zarr.

    Memory: the cached indexes (16 bytes per inner chunk: 4 KB per ``tokens`` shard of 8
    20 Newsgroups blocks) and the ranges in flight (at most zarr's ``async.concurrency``)."""

    def __init__(self, array):
        from numcodecs import Zstd

        self.array, self.zstd = array, Zstd()
        self.n, self.rows = inner_per_shard(array), array.chunks[0]
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self._indexes: dict[int, np.ndarray | None] = {}

    @staticmethod
    def fits(array) -> bool:
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return False
        inner, index = codecs[0].codecs, codecs[0].index_codecs
        try:
            numeric = np.dtype(array.dtype).kind in "biuf"
        except (AttributeError, TypeError):
            return False
        return (numeric and codecs[0].index_location.value == "end"
                and [type(c) for c in inner] == [BytesCodec, ZstdCodec, Crc32cCodec]
                and [type(c) for c in index] == [BytesCodec, Crc32cCodec])

    async def _get(self, shard: int, byte_range) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype

        coords = (shard,) + (0,) * (self.array.ndim - 1)
        buf = await self.array.store_path.store.get(_key(self.array, coords),
                                                    default_buffer_prototype(), byte_range)
        return None if buf is None else buf.to_bytes()

    async def _index(self, shard: int) -> np.ndarray | None:
        """The shard's index, read once (``None``: the shard is absent, all fill)."""
        if shard not in self._indexes:
            from zarr.abc.store import SuffixByteRequest

            raw = await self._get(shard, SuffixByteRequest(16 * self.n + 4))
            index = None if raw is None else shard_index(raw, self.n)
            if raw is not None and index is None:
                raise ValueError(f"shard {shard}: the shard's index is damaged")
            self._indexes[shard] = index
        return self._indexes[shard]

    async def _shard_rows(self, shard: int, start: int, stop: int, out: np.ndarray,
                          first_row: int) -> None:
        """Fill ``out`` (rows ``first_row...``) with rows ``start:stop`` of one shard: its index
        (kept), then its inner chunks that cover them in one ranged GET."""
        from zarr.abc.store import RangeByteRequest

        index = await self._index(shard)
        if index is None:
            return
        first = shard * self.n
        i0, i1 = start // self.rows - first, (stop - 1) // self.rows - first + 1
        entries = index[i0:i1]
        present = entries[:, 0] != EMPTY
        if not present.any():
            return
        lo = int(entries[present, 0].min())
        hi = int((entries[present, 0] + entries[present, 1]).max())
        raw = await self._get(shard, RangeByteRequest(lo, hi))  # one GET for the rows' chunks
        assert raw is not None and len(raw) == hi - lo, f"shard {shard} was cut short"
        for i, ((offset, length), here) in enumerate(zip(entries.tolist(), present)):
            if not here:
                continue
            data = raw[offset - lo:offset - lo + length]
            if not crc_ok(data):
                raise ValueError(f"shard {shard}, inner chunk {first + i0 + i}: checksum")
            chunk = np.frombuffer(self.zstd.decode(data[:-4]),
                                  dtype=self.dtype).reshape(self.array.chunks)
            row0 = (first + i0 + i) * self.rows
            a, b = max(start, row0), min(stop, row0 + self.rows)
            out[a - first_row:b - first_row] = chunk[a - row0:b - row0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """``array[start:stop]`` (first axis); the shards it spans are read concurrently (a
        scan of a whole per-document array is one index and one range per shard, all in
        flight at once). Raises on a checksum mismatch or a damaged index (the caller names
        the chunk: :func:`embcache.cache.integrity.reading_chunks`)."""
        import asyncio

        out = np.full((max(stop - start, 0),) + tuple(self.array.shape[1:]),
                      self.array.fill_value, dtype=self.dtype)
        if stop <= start:
            return out
        per_shard = self.n * self.rows

        async def every_shard() -> None:
            import zarr

            # at most zarr's own concurrency in flight (its `async.concurrency`, 10 by default)
            limit = asyncio.Semaphore(int(zarr.config.get("async.concurrency") or 10))

            async def one(s: int) -> None:
                async with limit:
                    await self._shard_rows(s, max(start, s * per_shard),
                                           min(stop, (s + 1) * per_shard), out, start)

            await asyncio.gather(*(one(s) for s in range(start // per_shard,
                                                         (stop - 1) // per_shard + 1)))

        _run(every_shard())
        return out
