"""The store layout (version 2, ragged): one Zarr v3 group, its arrays and its attributes (the
single source of truth).

    tokens       (chunks * block_rows, dim)  float16|float32|int8  the kept tokens' vectors, flat;
                                                     zstd
    scales       (chunks * block_rows,)      float16 int8 stores only: each token vector's scale
                                                     (see :mod:`embcache.cache.rows`)
    token_ids    (chunks * block_rows,)      int32   the lexical channel: each kept token's id
                                                     (:mod:`embcache.cache.lexical`), row for row
                                                     with ``tokens``; zstd. Stores with the
                                                     ``lexical`` attribute only
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

from embcache.cache.errors import StoreError, install_hint
from embcache.cache.integrity import (
    check_manifest,
    checksum_codec,
    chunk_counts,
    mark_for_rewrite,
    read_chunk_stats,
)
from embcache.cache.integrity import (
    read as read_checked,
)
from embcache.cache.meta import (
    LAYOUT_VERSION,
    SPLIT_NAMES,
    SplitSettings,
    StoreMeta,
    StoreTotals,
    VectorsInfo,
)

STATS_COLUMNS = ("docs", "tokens", "oov_tokens", "kept_tokens")
DOC_ARRAYS = ("offsets", "lengths", "labels", "doc_ids", "split")


# New stores end every array's codecs with crc32c (embcache.cache.integrity). False only to
# measure what the checksums cost (make bench-integrity).
CHECKSUM_CHUNKS = True


def _codecs(compressor) -> dict[str, Any]:
    """``create_array`` keywords: the compressor, then the checksum of the compressed bytes, and
    every chunk stored even when it holds only the fill value, so that a complete store's chunks
    are exactly what its layout says (a missing one is damage, never "all fill")."""
    chain = [compressor] + ([checksum_codec()] if CHECKSUM_CHUNKS else [])
    return {"compressors": chain, "config": {"write_empty_chunks": True}}


def default_compressor():
    """Zstandard level 1. Measured on 20 Newsgroups (float16, 41-doc chunks; BENCHMARKS.md) it
    writes faster, reads faster and is 2.4x smaller than Blosc-zstd with bit-shuffle: padding
    and repeated tokens are long runs that zstd's matcher takes whole."""
    import zarr

    return zarr.codecs.ZstdCodec(level=1)


def ids_compressor():
    """``token_ids``' codec: Zstandard level 9. Word ids are 31-bit hashes, which level 1 keeps
    at 58% of their bytes; measured on 20 Newsgroups' ids (BENCHMARKS.md), level 5 and above
    store 31% less than level 1 at the same write and read speed (Blosc's byte shuffle makes
    them larger: a hash's bytes are independent)."""
    import zarr

    return zarr.codecs.ZstdCodec(level=9)


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


def new_meta(*, settings, vectors: VectorsInfo, split: SplitSettings, corpus: dict[str, Any],
             label_names: list[str] | None, num_docs: int, chunk_docs: int | None = None,
             encoder: dict[str, Any] | None = None,
             subword: dict[str, Any] | None = None,
             lexical: dict[str, Any] | None = None) -> StoreMeta:
    """The metadata of a store about to be written, its physical layout decided here:
    ``chunk_docs`` (default :func:`auto_chunk_docs`), ``token_chunk`` and ``block_rows``."""
    from embcache.cache import __version__

    itemsize = np.dtype(settings.dtype).itemsize
    chunk = chunk_docs or auto_chunk_docs(settings.max_len, vectors.dim, itemsize)
    token_chunk = token_chunk_rows(vectors.dim, itemsize)
    return StoreMeta(settings=settings, vectors=vectors, split=split, corpus=corpus,
                     label_names=tuple(label_names) if label_names is not None else None,
                     num_docs=num_docs, chunk_docs=chunk, token_chunk=token_chunk,
                     block_rows=block_rows(chunk, settings.max_len, token_chunk),
                     embcache_version=__version__, encoder=encoder, subword=subword,
                     lexical=lexical)


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


# URL schemes served by an optional extra: (module to find, extra to install).
_REMOTE_EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3")}


def check_remote(url: str) -> None:
    """Refuse an object-storage URL whose filesystem package is not installed, naming the
    ``pip install`` that adds it (other schemes: fsspec's own ImportError names the package)."""
    import importlib.util

    scheme = str(url).partition("://")[0] if "://" in str(url) else ""
    if scheme in _REMOTE_EXTRAS:
        module, extra = _REMOTE_EXTRAS[scheme]
        if importlib.util.find_spec(module) is None:
            raise StoreError(f"Store {url} needs the {extra!r} extra ({module} is not installed): "
                             f"{install_hint(extra)}")


def store_state(url: str) -> str:
    """``missing``, ``file`` (a plain file is in the way), ``foreign`` (not an embcache store),
    ``incomplete`` or ``complete``."""
    import zarr

    check_remote(url)
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
        _read_local_metadata(p / "zarr.json")
    try:
        group = zarr.open_group(store=url, mode="r")
    except FileNotFoundError:
        return "missing"
    except ImportError as e:  # e.g. gs:// without gcsfs: fsspec says which package to install
        raise StoreError(f"Cannot open {url}: {e}") from e
    except Exception as e:  # noqa: BLE001
        if is_local(url):  # zarr.json was read above, so it is not JSON zarr can use
            raise StoreError(f"Cannot open {url}: {type(e).__name__}: {e}; the store was left "
                             "as it is (pass `overwrite=True` to replace it)") from None
        # Object storage: no credentials, no such bucket, no network. Say so rather than guess.
        raise StoreError(f"Cannot open {url}: {type(e).__name__}: {e}") from e
    attrs = dict(group.attrs)
    if "embcache_layout" not in attrs:
        return "foreign" if attrs else "incomplete"
    return "complete" if attrs.get("complete") else "incomplete"


def _read_local_metadata(path: Path) -> None:
    """Read a local store's ``zarr.json`` before anything decides the store's fate from it.

    zarr writes it whole (to a temporary file, then renamed), so a store killed while being
    created has one that opens or none at all. One that cannot be *read* (its permissions, a
    folder in its place, an I/O error of a network file system) says nothing about the store
    behind it: the job refuses, and the store is kept, never taken for incomplete and deleted.

    Raises:
        StoreError: naming the file and the OS error.
    """
    try:
        with open(path, "rb") as f:
            f.read()
    except OSError as e:
        raise StoreError(f"Cannot read {path}: {e.strerror or e}; the store was left as it is: "
                         "make the file readable and rerun") from None


def remove_store(url: str) -> None:
    """Delete a store (only called for stores embcache itself recognises)."""
    if is_local(url):
        shutil.rmtree(str(url).removeprefix("file://"))
    else:
        import zarr

        zarr.open_group(store=url, mode="w")  # mode "w" clears the prefix


def create_store(url: str, meta: StoreMeta):
    """Create an empty store (``complete`` false) with all arrays; its attributes go last.

    Returns:
        The ``zarr.Group``.
    """
    import zarr

    group = zarr.open_group(store=url, mode="w")
    n, chunk, dim = meta.num_docs, meta.chunk_docs, meta.dim
    # write_empty_chunks also skips zarr's all-zero scan of every chunk written (measured: half
    # the write time of layout 1); rows a block does not fill are still never written.
    token = _codecs(default_compressor())
    small = _codecs(zarr.codecs.ZstdCodec(level=0))  # zarr's own default for these arrays
    group.create_array("tokens", shape=(meta.num_chunks * meta.block_rows, dim),
                       chunks=(meta.token_chunk, dim), dtype=meta.dtype, fill_value=0, **token)
    if meta.dtype == "int8":  # one scale per token vector, chunked as `tokens`' rows
        group.create_array("scales", shape=(meta.num_chunks * meta.block_rows,),
                           chunks=(meta.token_chunk,), dtype="float16", fill_value=0, **token)
    if meta.has_token_ids:  # the lexical channel: one id per token row, chunked as its rows
        group.create_array("token_ids", shape=(meta.num_chunks * meta.block_rows,),
                           chunks=(meta.token_chunk,), dtype="int32", fill_value=0,
                           **_codecs(ids_compressor()))
    group.create_array("offsets", shape=(n,), chunks=(chunk,), dtype="int64", fill_value=0,
                       **small)
    group.create_array("lengths", shape=(n,), chunks=(chunk,), dtype="int32", fill_value=0,
                       **small)
    if meta.labelled:
        group.create_array("labels", shape=(n,), chunks=(chunk,), dtype="int32", fill_value=-1,
                           **small)
    group.create_array("doc_ids", shape=(n,), chunks=(chunk,), dtype=str, **small)
    group.create_array("split", shape=(n,), chunks=(chunk,), dtype="int8", fill_value=0, **small)
    group.create_array("chunk_stats", shape=(meta.num_chunks, len(STATS_COLUMNS)),
                       chunks=(1, len(STATS_COLUMNS)), dtype="int64", fill_value=-1, **small)
    # Attributes last: a store killed before this line has no layout tag and reads as incomplete.
    # One write of zarr.json (zarr's `attrs.update` writes the document once per key, so a kill
    # or a full disk between two keys would leave a half-set record).
    group = group.update_attributes(meta.to_attrs())
    return group


def writable_arrays(group) -> dict[str, Any]:
    """Every array of a store opened for writing blocks: with ``write_empty_chunks`` (a runtime
    setting, not stored in the metadata), so a chunk that holds only the fill value (a block's
    ``split`` chunk when all its documents are in train) is written like any other and the
    manifest's chunk counts follow from the layout."""
    return {name: group[name].with_config({"write_empty_chunks": True})
            for name in group.array_keys()}


@dataclass
class Store:
    """An opened store: its group and its metadata (the facts later jobs need)."""

    url: str
    group: Any
    meta: StoreMeta
    # Rows carry each token's id after its vector (:func:`embcache.cache.rows.attach_ids`): set
    # by :meth:`reading_ids` for readers that feed a model taking the lexical channel; others
    # never read ``token_ids``.
    with_ids: bool = False

    def reading_ids(self) -> Store:
        """This store, its rows read with their token ids.

        Raises:
            StoreError: the store has no lexical channel (written before it existed).
        """
        if not self.meta.has_token_ids:
            raise StoreError(f"Store {self.url} has no token ids (it was written by embcache "
                             f"{self.meta.embcache_version or 'before 0.1'}, before the lexical "
                             "channel); a model that takes token_ids needs them: rebuild it with "
                             "its embed-corpus command and --overwrite")
        return Store(self.url, self.group, self.meta, with_ids=True)

    @property
    def num_docs(self) -> int:
        return self.meta.num_docs

    @property
    def max_len(self) -> int:
        return self.meta.max_len

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def dtype(self) -> str:
        return self.meta.dtype

    @property
    def chunk_docs(self) -> int:
        return self.meta.chunk_docs

    @property
    def row_width(self) -> int:
        """Columns of the packed rows batches carry (``dim``; ``dim + 2`` for int8; and the
        token id's columns when reading ids)."""
        from embcache.cache.rows import id_columns

        return self.meta.row_width + (id_columns(self.meta.dtype) if self.with_ids else 0)

    @property
    def row_dtype(self) -> np.dtype:
        """NumPy dtype of the packed rows (the store's dtype; int8 carries its scales inside)."""
        from embcache.cache.rows import row_dtype

        return row_dtype(self.meta.dtype)

    @property
    def padding(self) -> str:
        return self.meta.padding

    @property
    def num_chunks(self) -> int:
        return self.meta.num_chunks

    @property
    def label_names(self) -> list[str] | None:
        names = self.meta.label_names
        return list(names) if names is not None else None

    @property
    def labelled(self) -> bool:
        return self.meta.labelled

    def __repr__(self) -> str:
        m = self.meta
        labels = f"{len(m.label_names)} labels" if m.labelled else "unlabelled"
        state = "complete" if m.complete else "incomplete"
        return (f"Store({self.url!r}: {m.num_docs:,} documents of up to {m.max_len} tokens x "
                f"{m.dim} {m.dtype}, {labels}, {state})")

    @property
    def split_counts(self) -> dict[str, int]:
        """Documents per split (``{}`` for an incomplete store)."""
        return dict(self.meta.totals.split_counts) if self.meta.totals else {}

    def array(self, name: str):
        """The array ``name``, opened once (looking one up re-reads its metadata document)."""
        arrays = self.__dict__.setdefault("_arrays", {})
        if name not in arrays:
            arrays[name] = self.group[name]
        return arrays[name]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """``array(name)[start:stop]`` (first axis); a chunk that fails to decode (damaged, cut,
        a checksum mismatch) raises one :class:`~embcache.cache.integrity.ChunkError` line."""
        array = self.array(name)
        stop = array.shape[0] if stop is None else stop
        return read_checked(self.url, self.meta, name, array, start, stop)


def _layout_error(url: str, layout) -> StoreError:
    what = " (every document padded to max_len)" if layout == 1 else ""
    return StoreError(f"Store {url} has layout version {layout}{what}; this embcache reads "
                      f"version {LAYOUT_VERSION} (ragged: kept tokens only). Rebuild it: rerun "
                      "its embed-corpus command with `overwrite=True`")


def open_store(url: str, *, require_complete: bool = True, require_labels: bool = False,
               check_chunks: bool = True) -> Store:
    """Open a store for reading, refusing what later jobs cannot use.

    A complete store's chunks are counted against its manifest (``check_chunks``: a listing, no
    reads; :func:`embcache.cache.integrity.check_manifest`).

    Raises:
        StoreError: the store is missing, not an embcache store, of another layout version,
            incomplete (when ``require_complete``), unlabelled (when ``require_labels``) or has
            malformed attributes; :class:`~embcache.cache.integrity.ChunkError`: a chunk is
            missing.
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
                         "embed-corpus command that created it, or rebuild it with `overwrite=True`") from None
    layout = attrs.get("embcache_layout")
    if layout is None:
        raise StoreError(f"Store {url} is incomplete (its embed-corpus run was stopped while "
                         "creating it): rerun that command")
    if layout != LAYOUT_VERSION:
        raise _layout_error(url, layout)
    if require_complete and not attrs.get("complete"):
        done = total = "?"
        if "chunk_stats" in group:
            stats = read_chunk_stats(group)
            done, total = int((stats[:, 0] >= 0).sum()), stats.shape[0]
        raise StoreError(f"Store {url} is incomplete ({done} of {total} chunks written): its "
                         "embed-corpus run did not finish. Rerun the same command to resume it")
    meta = StoreMeta.from_attrs(attrs, f"Store {url}")
    if require_labels and not meta.labelled:
        raise StoreError(f"Store {url} has no labels; training needs a labelled corpus")
    check_shapes(url, group, meta)
    store = Store(url=str(url), group=group, meta=meta)
    if require_complete and check_chunks:
        check_manifest(store)
    return store


def check_shapes(url: str, group, meta: StoreMeta) -> None:
    """Refuse a store whose attributes disagree with its arrays' shapes (an edited or damaged
    ``zarr.json``): every attribute that sizes an array is compared with that array's metadata
    (no chunk is read), so a reader never indexes past an array's end.

    Raises:
        StoreError: naming the attributes and the array that disagree, in one line.
    """
    rows = meta.num_chunks * meta.block_rows
    docs = ((meta.num_docs,), "`num_docs`")
    expected = {"offsets": docs, "lengths": docs, "labels": docs, "doc_ids": docs, "split": docs,
                "chunk_stats": ((meta.num_chunks, len(STATS_COLUMNS)), "`num_docs` and `chunk_docs`"),
                "tokens": ((rows, meta.dim), "`num_docs`, `chunk_docs`, `block_rows` and `dim`"),
                "scales": ((rows,), "`num_docs`, `chunk_docs` and `block_rows`"),
                "token_ids": ((rows,), "`num_docs`, `chunk_docs` and `block_rows`")}
    for name, (shape, attrs) in expected.items():
        if name not in group:
            continue
        have = tuple(group[name].shape)
        if have != shape:
            raise StoreError(f"Store {url}: its attributes {attrs} give array `{name}` the shape "
                             f"{shape}, but it has {have}: its zarr.json was edited or damaged; "
                             "rebuild the store with `overwrite=True`")


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
        :func:`embcache.cache.integrity.verify_store`); they are marked not done and the store is
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
        raise _layout_error(url, attrs["embcache_layout"])
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


def bytes_on_disk(url: str) -> int | None:
    """Total size of a local store's files (``None`` for remote stores)."""
    if not is_local(url):
        return None
    total = 0
    for dirpath, _dirs, files in os.walk(str(url).removeprefix("file://")):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total
