"""The store layout (version 2, ragged): one Zarr v3 group, its arrays and its attributes (the
single source of truth).

    tokens       (chunks * block_rows, dim)  float16|float32  the kept tokens' vectors, flat; zstd
    offsets      (docs,)                     int64   first row of each document in ``tokens``
    lengths      (docs,)                     int32   tokens kept per document (after truncation)
    labels       (docs,)                     int32   label index (labelled corpora only)
    doc_ids      (docs,)                     string  source path, CSV row or JSON id
    split        (docs,)                     int8    0 train, 1 val, 2 test (hash of doc id)
    chunk_stats  (chunks, 4)                 int64   per chunk: docs, tokens, oov tokens, kept
                                                     tokens; -1 until the chunk is written

Document *d* is ``tokens[offsets[d] : offsets[d] + lengths[d]]``, its kept tokens in text order:
padding is not stored. ``max_len``, ``padding`` and ``truncating`` stay recorded; truncation was
applied when the store was written, padding is applied by the reader (to the batch's length).

Every per-document array shares the document chunking (``chunk_docs``). Block *i* (documents
``i * chunk_docs ...``) owns the rows ``[i * block_rows, (i + 1) * block_rows)`` of ``tokens``,
where ``block_rows`` is ``chunk_docs * max_len`` rounded up to whole ``tokens`` chunks: a block
writes only whole chunks of its own, so it is still written by exactly one task, in any order.
It fills its rows from the start and leaves the rest unwritten; Zarr stores no unwritten chunk,
so the disk holds the kept tokens (plus at most one part-filled chunk per block) and the shape is
an address space, not a size: never read ``tokens[:]`` whole.

``chunk_stats`` row *i* is written last for block *i*: it is the commit marker that makes resume
possible. ``attrs["complete"]`` turns true only after every chunk is in; readers refuse a store
without it. Layout 1 (every document padded to ``max_len`` in ``embedded``) is refused with a
request to rebuild.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache.errors import StoreError

LAYOUT_VERSION = 2
SPLIT_NAMES = ("train", "val", "test")
STATS_COLUMNS = ("docs", "tokens", "oov_tokens", "kept_tokens")
DOC_ARRAYS = ("offsets", "lengths", "labels", "doc_ids", "split")


def default_compressor():
    """Zstandard level 1. Measured on 20 Newsgroups (float16, 41-doc chunks; BENCHMARKS.md) it
    writes faster, reads faster and is 2.4x smaller than Blosc-zstd with bit-shuffle: padding
    and repeated tokens are long runs that zstd's matcher takes whole."""
    import zarr

    return zarr.codecs.ZstdCodec(level=1)


def auto_chunk_docs(max_len: int, dim: int, itemsize: int, target_bytes: int = 48 << 20,
                    low: int = 64, high: int = 1024) -> int:
    """Documents per block: as many as fill ``target_bytes`` if every one were ``max_len`` long
    (503 for 20 Newsgroups at 1000 x 50 float16), within ``[low, high]``.

    A block is the unit of reading, shuffling and writing. Measured on 20 Newsgroups (BENCHMARKS.md):
    each block costs about 2 ms of zarr calls on top of its decoding, so the training stream ran
    at 23,000 documents/s with 125-document blocks, 31,000 with 250 and 39,000 with 500. Blocks
    stay small enough to shuffle their order (40 for 20 Newsgroups) and to spread over workers;
    a block's memory while it is embedded is its kept tokens, at most ``target_bytes``."""
    return int(min(high, max(low, target_bytes // (max_len * dim * itemsize))))


def token_chunk_rows(dim: int, itemsize: int, target_bytes: int = 2 << 20) -> int:
    """Rows per ``tokens`` chunk: a power of two near ``target_bytes`` uncompressed (16,384 rows
    at 50 float16 dimensions, about 0.4 MB compressed). Small enough that a block's last,
    part-filled chunk wastes little; large enough that zarr's per-chunk cost stays small against
    decoding (measured: a 28,600-row read took 2.65 ms in 4,096-row chunks, 1.82 ms in 16,384)."""
    rows = max(64, target_bytes // (dim * itemsize))
    return 1 << (rows.bit_length() - 1)


def block_rows(chunk_docs: int, max_len: int, token_chunk: int) -> int:
    """``tokens`` rows reserved per block: its worst case, in whole ``tokens`` chunks."""
    return -(-chunk_docs * max_len // token_chunk) * token_chunk


def assign_split(doc_ids: list[str], val_frac: float, test_frac: float, seed: int = 0) -> np.ndarray:
    """Deterministic split codes from the document ids alone (any worker, any order, same result)."""
    key = seed.to_bytes(8, "little", signed=False)
    u = np.fromiter(
        (int.from_bytes(hashlib.blake2b(d.encode("utf-8", "surrogateescape"), digest_size=8,
                                        key=key).digest(), "little") for d in doc_ids),
        dtype=np.uint64, count=len(doc_ids)).astype(np.float64) / 2.0**64
    out = np.zeros(len(doc_ids), dtype=np.int8)
    out[u < test_frac + val_frac] = 1
    out[u < test_frac] = 2
    return out


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def store_state(url: str) -> str:
    """``missing``, ``file`` (a plain file is in the way), ``foreign`` (not an embcache store),
    ``incomplete`` or ``complete``."""
    import zarr

    if is_local(url):
        p = Path(str(url).removeprefix("file://"))
        if not p.exists():
            return "missing"
        if not p.is_dir():
            return "file"
        if not any(p.iterdir()):
            return "missing"
        if not (p / "zarr.json").exists():
            return "foreign"
    try:
        group = zarr.open_group(store=url, mode="r")
    except FileNotFoundError:
        return "missing"
    except ImportError as e:  # e.g. gs:// without gcsfs: fsspec says which package to install
        raise StoreError(f"Cannot open {url}: {e}") from e
    except Exception as e:  # noqa: BLE001
        if is_local(url):  # unreadable metadata: killed mid-create
            return "incomplete"
        # Object storage: no credentials, no such bucket, no network. Say so rather than guess.
        raise StoreError(f"Cannot open {url}: {type(e).__name__}: {e}") from e
    attrs = dict(group.attrs)
    if "embcache_layout" not in attrs:
        return "foreign" if attrs else "incomplete"
    return "complete" if attrs.get("complete") else "incomplete"


def remove_store(url: str) -> None:
    """Delete a store (only called for stores embcache itself recognises)."""
    if is_local(url):
        shutil.rmtree(str(url).removeprefix("file://"))
    else:
        import zarr

        zarr.open_group(store=url, mode="w")  # mode "w" clears the prefix


def create_store(url: str, *, num_docs: int, max_len: int, dim: int, dtype: str,
                 chunk_docs: int, labelled: bool, attrs: dict[str, Any]):
    """Create an empty store (``complete`` false) with all arrays and attributes.

    Returns:
        The ``zarr.Group``.
    """
    import zarr

    group = zarr.open_group(store=url, mode="w")
    n_chunks = -(-num_docs // chunk_docs)
    token_chunk = token_chunk_rows(dim, np.dtype(dtype).itemsize)
    rows = block_rows(chunk_docs, max_len, token_chunk)
    group.create_array("tokens", shape=(n_chunks * rows, dim), chunks=(token_chunk, dim),
                       dtype=dtype, compressors=default_compressor(), fill_value=0,
                       # Skip zarr's all-zero scan of every chunk written (measured: half the
                       # write time of layout 1); unwritten chunks are still never stored.
                       config={"write_empty_chunks": True})
    group.create_array("offsets", shape=(num_docs,), chunks=(chunk_docs,), dtype="int64",
                       fill_value=0)
    group.create_array("lengths", shape=(num_docs,), chunks=(chunk_docs,), dtype="int32",
                       fill_value=0)
    if labelled:
        group.create_array("labels", shape=(num_docs,), chunks=(chunk_docs,), dtype="int32",
                           fill_value=-1)
    group.create_array("doc_ids", shape=(num_docs,), chunks=(chunk_docs,), dtype=str)
    group.create_array("split", shape=(num_docs,), chunks=(chunk_docs,), dtype="int8",
                       fill_value=0)
    group.create_array("chunk_stats", shape=(n_chunks, len(STATS_COLUMNS)),
                       chunks=(1, len(STATS_COLUMNS)), dtype="int64", fill_value=-1)
    # Attributes last: a store killed before this line has no layout tag and reads as incomplete.
    group.attrs.update({**attrs, "embcache_layout": LAYOUT_VERSION, "complete": False,
                        "num_docs": num_docs, "max_len": max_len, "dim": dim, "dtype": dtype,
                        "chunk_docs": chunk_docs, "num_chunks": n_chunks, "labelled": labelled,
                        "token_chunk": token_chunk, "block_rows": rows})
    return group


def read_chunk_stats(group) -> np.ndarray:
    """``(chunks, 4)`` stats; a row of -1 (or an unreadable row, e.g. torn by a kill) is not done."""
    arr = group["chunk_stats"]
    try:
        return arr[:]
    except Exception:  # noqa: BLE001 - fall back row by row to find the torn one
        out = np.full(arr.shape, -1, dtype=np.int64)
        for i in range(arr.shape[0]):
            try:
                out[i] = arr[i]
            except Exception:  # noqa: BLE001
                pass
        return out


@dataclass
class Store:
    """An opened store: its group, its attributes and the facts later jobs need."""

    url: str
    group: Any
    attrs: dict[str, Any]

    @property
    def num_docs(self) -> int:
        return int(self.attrs["num_docs"])

    @property
    def max_len(self) -> int:
        return int(self.attrs["max_len"])

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def chunk_docs(self) -> int:
        return int(self.attrs["chunk_docs"])

    @property
    def padding(self) -> str:
        return str(self.attrs["padding"])

    @property
    def num_chunks(self) -> int:
        return int(self.attrs["num_chunks"])

    @property
    def label_names(self) -> list[str] | None:
        return self.attrs.get("label_names")

    @property
    def labelled(self) -> bool:
        return bool(self.attrs.get("labelled"))

    def array(self, name: str):
        return self.group[name]


def open_store(url: str, *, require_complete: bool = True, require_labels: bool = False) -> Store:
    """Open a store for reading, refusing what later jobs cannot use.

    Raises:
        StoreError: the store is missing, not an embcache store, of another layout version,
            incomplete (when ``require_complete``) or unlabelled (when ``require_labels``).
    """
    import zarr

    state = store_state(url)
    if state == "missing":
        raise StoreError(f"Store not found: {url} (build it with `embcache embed-corpus`)")
    if state in ("file", "foreign"):
        raise StoreError(f"{url} is not an embcache store")
    try:
        group = zarr.open_group(store=url, mode="r")
        attrs = dict(group.attrs)
    except Exception as e:  # noqa: BLE001
        raise StoreError(f"Store {url} cannot be read ({e}); it is incomplete: rerun the "
                         "embed-corpus command that created it, or rebuild it with --overwrite") from None
    layout = attrs.get("embcache_layout")
    if layout is not None and layout != LAYOUT_VERSION:
        what = " (every document padded to max_len)" if layout == 1 else ""
        raise StoreError(f"Store {url} has layout version {layout}{what}; this embcache reads "
                         f"version {LAYOUT_VERSION} (ragged: kept tokens only). Rebuild it: rerun "
                         "its embed-corpus command with --overwrite")
    if require_complete and not attrs.get("complete"):
        done = total = "?"
        if "chunk_stats" in group:
            stats = read_chunk_stats(group)
            done, total = int((stats[:, 0] >= 0).sum()), stats.shape[0]
        raise StoreError(f"Store {url} is incomplete ({done} of {total} chunks written): its "
                         "embed-corpus run did not finish. Rerun the same command to resume it")
    if require_labels and not attrs.get("labelled"):
        raise StoreError(f"Store {url} has no labels; training needs a labelled corpus")
    return Store(url=str(url), group=group, attrs=attrs)


def bytes_on_disk(url: str) -> int | None:
    """Total size of a local store's files (``None`` for remote stores)."""
    if not is_local(url):
        return None
    total = 0
    for dirpath, _dirs, files in os.walk(str(url).removeprefix("file://")):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total
