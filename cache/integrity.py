"""Chunk integrity: checksums checked on every read, missing chunks found by listing, ``verify``
and the marking that lets ``embed-corpus`` repair a damaged store through its resume machinery.

Three layers, cheapest first:

* **Checksums.** New stores end every array's codec chain with Zarr v3's ``crc32c`` codec: a
  chunk whose bytes changed (rot, a cut copy, garbage) fails to decode. Every read of a store
  goes through :meth:`embcache.cache.store.Store.read`, which turns that failure (or any other
  decode error, as on older stores without checksums) into one :class:`ChunkError` line that
  names the store, the chunk, the documents it holds and what to do.
* **The manifest.** A finished store records how many chunks each array holds (``chunks`` in its
  attributes, see :class:`embcache.cache.meta.StoreTotals`). Zarr reads a deleted chunk as its fill
  value, by design, so nothing else would notice one: :func:`check_manifest` lists the chunk keys
  (a directory listing, or one LIST request per 1,000 keys on object storage; no chunk is read)
  and compares. Train, score, the Scorer and ``dataset()`` run it when they open a store.
* **verify** (:func:`embcache.cache.verifier.verify_store`) reads and decodes every chunk and
  compares the listing with the chunks each block must hold (derived from ``chunk_stats``), so
  it finds damaged and missing chunks alike, and names the documents in them.

Every chunk of every array belongs to exactly one block (a block is ``chunk_docs`` documents:
chunk *b* of the per-document arrays, row *b* of ``chunk_stats``, and the ``tokens``/``scales``
chunks inside rows ``[b * block_rows, (b + 1) * block_rows)``). Repair therefore works per block:
:func:`mark_for_rewrite` clears the store's ``complete`` flag, deletes each damaged block's commit
marker and chunks, and the resume machinery of ``embed-corpus`` rewrites exactly those blocks. The
writer is deterministic, so the repaired arrays are byte-identical to an undamaged store's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from embcache.cache.errors import StoreError
from embcache.cache.layout import ARRAY_NAMES, PER_DOC, ROW_ARRAYS, SPECS

CHECKSUM = "crc32c"
# The data arrays, in the order verify reads them (the layout's one table).
ARRAYS = ARRAY_NAMES


def is_checksummed(array) -> bool:
    """Whether the array's chunks end with crc32c (inside the shards of a sharded array)."""
    from zarr.codecs import Crc32cCodec, ShardingCodec

    codecs = list(array.metadata.codecs)
    for codec in array.metadata.codecs:
        if isinstance(codec, ShardingCodec):
            codecs += list(codec.codecs)
    return any(isinstance(c, Crc32cCodec) for c in codecs)


def store_arrays(group) -> list[str]:
    """The data arrays the group holds, in :data:`ARRAYS` order."""
    return [n for n in ARRAYS if n in group]


# -- where a chunk lives -----------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """One damaged or missing chunk, with the block (documents) it belongs to."""

    array: str
    chunk: tuple[int, ...]
    problem: str  # "missing" or "damaged"
    detail: str
    block: int
    docs: tuple[int, int]  # [first, stop)
    # A sharded store's chunk lives inside a shard: ``chunk`` is then the inner chunk's
    # coordinates and ``shard`` the stored object's.
    shard: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        """The stored object's key (a sharded chunk's shard)."""
        return f"{self.array}/c/{'/'.join(map(str, self.shard or self.chunk))}"

    def line(self) -> str:
        first, stop = self.docs
        where = (f"inner chunk {'/'.join(map(str, self.chunk))} of shard {self.key}"
                 if self.shard is not None else f"chunk {self.key}")
        return (f"{where} is {self.problem}{f' ({self.detail})' if self.detail else ''}:"
                f" block {self.block}, documents {first:,}-{stop - 1:,}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chunk": list(self.chunk), "docs": list(self.docs), "key": self.key,
                "shard": None if self.shard is None else list(self.shard)}


def block_of(meta, array: str, chunk: tuple[int, ...]) -> int:
    """The block a chunk belongs to (see the module docstring)."""
    if array in ROW_ARRAYS:
        return int(chunk[0] * meta.token_chunk // meta.block_rows)
    return chunk[0]


def block_docs(meta, block: int) -> tuple[int, int]:
    return block * meta.chunk_docs, min((block + 1) * meta.chunk_docs, meta.num_docs)


def fault(meta, array: str, chunk: tuple[int, ...], problem: str, detail: str = "") -> Fault:
    """The fault of chunk ``chunk`` (inner-chunk coordinates in a sharded store)."""
    b = block_of(meta, array, chunk)
    shard = SPECS[array].shard_of(meta, b // meta.shard_blocks) if meta.sharded else None
    return Fault(array, tuple(int(c) for c in chunk), problem, detail, b, block_docs(meta, b),
                 shard)


def detail_of(e: Exception) -> str:
    text = str(e)
    if "checksum" in text.lower():
        return "checksum mismatch"
    return f"{type(e).__name__}: {text}"[:120] if text else type(e).__name__


def what_to_do(url: str) -> str:
    return (f"run `embcache verify {url}` for every damaged chunk, then the embed-corpus "
            "command that built the store (same corpus and options) with `repair=True`: it "
            "rewrites only the damaged blocks")


class ChunkError(StoreError):
    """A chunk of a store could not be read back as written (missing, damaged or cut)."""

    def __init__(self, url: str, faults: list[Fault]):
        self.url, self.faults = url, faults
        more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
        super().__init__(f"Store {url} is damaged: {faults[0].line()}{more}; {what_to_do(url)}")

    def __reduce__(self):  # rebuilt with its faults in another process (the producer's pipe)
        return (type(self), (self.url, self.faults))


def read_chunk_stats(group) -> np.ndarray:
    """``(chunks, 4)`` stats; a row of -1 (or an unreadable row, e.g. torn by a kill) is not done."""
    arr = group["chunk_stats"]
    try:
        return np.asarray(arr[:])
    except Exception:  # noqa: BLE001 - fall back row by row to find the torn one
        out = np.full(arr.shape, -1, dtype=np.int64)
        for i in range(arr.shape[0]):
            try:
                out[i] = arr[i]
            except Exception:  # noqa: BLE001
                pass
        return out


# -- listing -----------------------------------------------------------------------------------
def _run(coro):
    from zarr.core.sync import sync

    return sync(coro)


def list_chunks(array) -> set[tuple[int, ...]]:
    """The chunk coordinates an array holds, from a listing of its ``c/`` prefix (no reads)."""
    store, base = array.store_path.store, array.store_path.path
    prefix = f"{base}/c/" if base else "c/"

    async def collect():
        return [k async for k in store.list_prefix(prefix)]

    out = set()
    for key in _run(collect()):
        parts = key[len(prefix):].split("/")
        if all(p.isdigit() for p in parts):  # skips a killed write's `<chunk>.<uuid>.partial`
            out.add(tuple(int(p) for p in parts))
    return out


def chunk_counts(group) -> dict[str, int]:
    """``{array: chunks stored}``: what a finished store records as its manifest."""
    return {name: len(list_chunks(group[name])) for name in store_arrays(group)}


def expected_chunks(meta, group, stats: np.ndarray) -> dict[str, set[tuple[int, ...]]]:
    """The chunks a complete store must hold, from its layout and ``chunk_stats``. For a store
    without a manifest (written before it existed) the per-document arrays may legitimately lack
    all-fill chunks, so only ``chunk_stats``, ``tokens`` and ``scales`` are expected there."""
    blocks = range(meta.num_chunks)
    per_block = meta.block_rows // meta.token_chunk
    out: dict[str, set] = {"chunk_stats": {(b, 0) for b in blocks}}
    rows: set = set()
    for b in blocks:
        kept = int(stats[b, 3])
        if kept < 0:  # the block's own stats row is unreadable: reported on its own
            continue
        rows.update(b * per_block + i for i in range(-(-kept // meta.token_chunk)))
    out["tokens"] = {(r, 0) for r in rows}
    for name in ("scales", "token_ids"):
        if name in group:
            out[name] = {(r,) for r in rows}
    if manifest(meta) is not None:
        for name in PER_DOC:
            if name in group:
                out[name] = {(b,) for b in blocks}
    return out


def expected_objects(meta, expected: dict[str, set[tuple[int, ...]]]
                     ) -> dict[str, set[tuple[int, ...]]]:
    """The stored objects :func:`expected_chunks` implies: the chunks themselves, or in a
    sharded store the shards that hold them."""
    return {name: {object_of(meta, name, c) for c in chunks} for name, chunks in expected.items()}


def manifest(meta) -> dict[str, int] | None:
    return meta.totals.chunks if meta.totals is not None else None


def check_manifest(store) -> None:
    """Refuse a store that lacks a chunk its manifest counts: one listing per array, no reads.
    Stores written before the manifest existed pass unchecked (``embcache verify`` still reads
    them whole).

    Raises:
        ChunkError: naming the first missing chunk (found from ``chunk_stats`` only on that path).
    """
    counts = manifest(store.meta)
    if counts is None:
        return
    short = {}
    for name, n in counts.items():
        if name not in store.group:
            raise ChunkError(store.url, [Fault(name, (0,), "missing", "the whole array", 0,
                                               block_docs(store.meta, 0))])
        have = list_chunks(store.group[name])
        if len(have) < n:
            short[name] = have
    if not short:
        return
    meta = store.meta
    expected = expected_chunks(meta, store.group, read_chunk_stats(store.group))
    faults = [fault(meta, name, c, "missing", "its shard is missing" if meta.sharded else "")
              for name, have in short.items() for c in sorted(expected.get(name, set()))
              if object_of(meta, name, c) not in have]
    if not faults:  # the count says one is gone; the layout cannot say which
        name = next(iter(short))
        faults = [Fault(name, (0,), "missing", f"{counts[name] - len(short[name])} of "
                        f"{counts[name]} chunks", 0, block_docs(store.meta, 0))]
    raise ChunkError(store.url, faults)


def object_of(meta, name: str, chunk: tuple[int, ...]) -> tuple[int, ...]:
    """The stored object that holds a chunk: itself, or its shard."""
    if not meta.sharded:
        return chunk
    return SPECS[name].shard_of(meta, block_of(meta, name, chunk) // meta.shard_blocks)


# -- reading -----------------------------------------------------------------------------------
def locate(meta, name: str, array, start: int, stop: int, error: Exception) -> Fault:
    """The chunk among rows ``start:stop`` (first axis) that fails to decode, read one by one
    (only on the error path; a sharded array's inner chunks)."""
    size = array.chunks[0]  # the inner chunks of a sharded array
    if meta.sharded:  # the shard's own account: its index, then each inner chunk's checksum
        found = _locate_in_shards(meta, name, array, start, stop)
        if found is not None:
            return found
    for c in range(start // size, max(start, stop - 1) // size + 1):
        coords = (c,) + (0,) * (array.ndim - 1)
        try:
            array[c * size:(c + 1) * size]
        except Exception as e:  # noqa: BLE001 - a decode error of any codec
            return fault(meta, name, coords, "damaged", detail_of(e))
    coords = (start // size,) + (0,) * (array.ndim - 1)
    return fault(meta, name, coords, "damaged", detail_of(error))


def _locate_in_shards(meta, name: str, array, start: int, stop: int) -> Fault | None:
    from embcache.cache.shards import check_shard, inner_per_shard

    size, per = array.chunks[0], inner_per_shard(array)
    tail = (0,) * (array.ndim - 1)
    wanted = {(c,) + tail for c in range(start // size, max(start, stop - 1) // size + 1)}
    for shard in sorted({c[0] // per for c in wanted}):
        _, _, problems = check_shard(array, (shard,) + tail, wanted)
        for inner, problem, detail in problems:
            if inner in wanted and problem == "damaged":
                return fault(meta, name, inner, "damaged", detail)
    return None


@contextlib.contextmanager
def reading_chunks(url: str, meta, name: str, array, start: int, stop: int) -> Iterator[None]:
    """``with reading_chunks(...): array[start:stop]``: a chunk that fails to decode becomes one
    :class:`ChunkError` line instead of a codec's traceback."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - numcodecs, crc32c and zarr raise assorted types
        raise ChunkError(url, [locate(meta, name, array, start, stop, e)]) from None


def read(url: str, meta, name: str, array, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` with damaged chunks reported as :class:`ChunkError`."""
    with reading_chunks(url, meta, name, array, start, stop):
        return np.asarray(array[start:stop])


# -- repair ------------------------------------------------------------------------------------
def mark_for_rewrite(store, blocks: list[int]) -> None:
    """Make ``blocks`` not done: clear ``complete`` first (readers refuse the store from here on),
    then delete each block's commit marker, then its chunks in every array. A kill at any point
    leaves an incomplete store that the same embed-corpus command resumes.

    In a sharded store a shard has one writer, so the whole shard group of each damaged block is
    rewritten: its shard of every array is deleted, ``chunk_stats``' (the commit markers) first."""
    meta, group = store.meta, store.group
    group.update_attributes({"complete": False})
    names = ["chunk_stats"] + [n for n in store_arrays(group) if n != "chunk_stats"]
    if meta.sharded:
        groups = sorted({b // meta.shard_blocks for b in blocks})
        doomed = [(name, SPECS[name].shard_of(meta, g)) for name in names for g in groups]
    else:
        per_block = meta.block_rows // meta.token_chunk
        doomed = [("chunk_stats", (b, 0)) for b in blocks]
        for name in names[1:]:
            have = list_chunks(group[name])
            for b in blocks:
                if name in ROW_ARRAYS:
                    doomed += [(name, c) for c in sorted(have)
                               if b * per_block <= c[0] < (b + 1) * per_block]
                elif (b,) in have:
                    doomed.append((name, (b,)))
    from embcache.cache.shards import delete_object

    for name, coords in doomed:
        delete_object(group[name], coords)
