"""The store layout (version 2, ragged): one Zarr v3 group, its arrays and its attributes (the
single source of truth). :data:`ARRAYS` is the one table of the arrays; creating a store,
checking its shapes and verifying its chunks all read it.

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

**Sharded stores** (``shard_blocks`` K > 0, :mod:`embcache.cache.shards`): every array is written
with Zarr v3's sharding codec, one shard (object) per K consecutive blocks: ``tokens``' shards are
``K * block_rows`` rows, the per-document arrays' ``K * chunk_docs`` documents, ``chunk_stats``' K
rows. The chunks above become the shards' inner chunks, with the same codecs (and crc32c); the
shard index carries its own crc32c. A shard group is written whole by one writer, so the unit of
writing (and of resume and repair) is the group, not the block.

``chunk_stats`` row *i* is written last for block *i*: it is the commit marker that makes resume
possible. ``attrs["complete"]`` turns true only after every chunk is in; readers refuse a store
without it. Layout 1 (every document padded to ``max_len`` in ``embedded``) is refused with a
request to rebuild.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from embcache.cache.meta import SplitSettings, StoreMeta, VectorsInfo

STATS_COLUMNS = ("docs", "tokens", "oov_tokens", "kept_tokens")


@dataclass(frozen=True)
class ArraySpec:
    """One array of the layout: what it is indexed by (``rows``: ``tokens``' rows, block by
    block; ``docs``: one per document, chunked by block; ``blocks``: one row per block), its
    dtype (``None``: the store's), fill value, codec (``tokens``, ``ids`` or ``small``) and
    when a store has it (``None``: always; else the :class:`StoreMeta` property that says)."""

    name: str
    axis: str
    dtype: Any
    fill: Any
    codec: str
    when: str | None = None

    def present(self, meta: StoreMeta) -> bool:
        return self.when is None or bool(getattr(meta, self.when))

    def shape(self, meta: StoreMeta) -> tuple[int, ...]:
        if self.axis == "rows":
            rows = meta.num_chunks * meta.block_rows
            return (rows, meta.dim) if self.name == "tokens" else (rows,)
        if self.axis == "docs":
            return (meta.num_docs,)
        return (meta.num_chunks, len(STATS_COLUMNS))

    def chunks(self, meta: StoreMeta) -> tuple[int, ...]:
        if self.axis == "rows":
            return (meta.token_chunk, meta.dim) if self.name == "tokens" else (meta.token_chunk,)
        if self.axis == "docs":
            return (meta.chunk_docs,)
        return (1, len(STATS_COLUMNS))

    def shards(self, meta: StoreMeta) -> tuple[int, ...] | None:
        """The shard shape (``shard_blocks`` blocks' chunks per object), or ``None`` unsharded."""
        if not meta.sharded:
            return None
        k = meta.shard_blocks
        chunks = self.chunks(meta)
        first = {"rows": k * meta.block_rows, "docs": k * meta.chunk_docs, "blocks": k}[self.axis]
        return (first,) + chunks[1:]

    def shard_of(self, meta: StoreMeta, group: int) -> tuple[int, ...]:
        """The coordinates of shard ``group`` (blocks ``group * shard_blocks ...``)."""
        return (group,) + (0,) * (len(self.chunks(meta)) - 1)

    @property
    def sized_by(self) -> str:
        """The attributes that size the array, for messages."""
        return {"rows": ("`num_docs`, `chunk_docs`, `block_rows` and `dim`" if self.name == "tokens"
                         else "`num_docs`, `chunk_docs` and `block_rows`"),
                "docs": "`num_docs`", "blocks": "`num_docs` and `chunk_docs`"}[self.axis]


# The arrays, in the order verify reads them (the small ones first, `tokens` last).
ARRAYS = (
    ArraySpec("chunk_stats", "blocks", "int64", -1, "small"),  # the commit markers
    ArraySpec("offsets", "docs", "int64", 0, "small"),
    ArraySpec("lengths", "docs", "int32", 0, "small"),
    ArraySpec("labels", "docs", "int32", -1, "small", when="labelled"),
    ArraySpec("doc_ids", "docs", str, None, "small"),
    ArraySpec("split", "docs", "int8", 0, "small"),
    ArraySpec("scales", "rows", "float16", 0, "tokens", when="quantized"),
    ArraySpec("token_ids", "rows", "int32", 0, "ids", when="has_token_ids"),
    ArraySpec("tokens", "rows", None, 0, "tokens"),
)
ARRAY_NAMES = tuple(a.name for a in ARRAYS)
ROW_ARRAYS = tuple(a.name for a in ARRAYS if a.axis == "rows")
SPECS = {a.name: a for a in ARRAYS}
PER_DOC = tuple(a.name for a in ARRAYS if a.axis == "docs")


# New stores end every array's codecs with crc32c (embcache.cache.integrity). False only to
# measure what the checksums cost (make bench-integrity); sharded stores always carry them (their
# verify and reader check them on the stored bytes, embcache.cache.shards).
CHECKSUM_CHUNKS = True


def checksum_codec():
    """The codec that ends every array's chain in new stores (appended after the compressor, so
    it checks the bytes as stored)."""
    from zarr.codecs import Crc32cCodec

    return Crc32cCodec()


def _codecs(compressor, checksum: bool) -> dict[str, Any]:
    """``create_array`` keywords: the compressor, then the checksum of the compressed bytes, and
    every chunk stored even when it holds only the fill value, so that a complete store's chunks
    are exactly what its layout says (a missing one is damage, never "all fill")."""
    chain = [compressor] + ([checksum_codec()] if checksum else [])
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


# Blocks per shard for new stores (``--shard-blocks``; 0: one object per chunk). Measured on 20
# Newsgroups (make bench-shards, BENCHMARKS.md): 8 stores 17x fewer objects than unsharded, embeds
# at the same speed, reads 1.3x faster from local disk and 1.9x from a local S3; 16 gained little
# and its 45 MB shards read slower from moto's S3 server.
SHARD_BLOCKS = 8


def auto_shard_blocks(num_chunks: int, most: int = SHARD_BLOCKS) -> int:
    """Blocks per shard by default: ``most``, fewer for a corpus of fewer than ``4 * most``
    blocks, so that at least 4 shard groups (the unit of writing) share the workers. It depends
    on the corpus alone: any number of workers writes the same store."""
    return max(1, min(most, num_chunks // 4))


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
             lexical: dict[str, Any] | None = None, doc_ids: str = "str",
             shard_blocks: int | None = None) -> StoreMeta:
    """The metadata of a store about to be written, its physical layout decided here:
    ``chunk_docs`` (default :func:`auto_chunk_docs`), ``token_chunk``, ``block_rows`` and
    ``shard_blocks`` (0: unsharded; default :func:`auto_shard_blocks`)."""
    from embcache.cache import __version__

    itemsize = np.dtype(settings.dtype).itemsize
    chunk = chunk_docs or auto_chunk_docs(settings.max_len, vectors.dim, itemsize)
    token_chunk = token_chunk_rows(vectors.dim, itemsize)
    return StoreMeta(settings=settings, vectors=vectors, split=split, corpus=corpus,
                     label_names=tuple(label_names) if label_names is not None else None,
                     num_docs=num_docs, chunk_docs=chunk, token_chunk=token_chunk,
                     block_rows=block_rows(chunk, settings.max_len, token_chunk),
                     embcache_version=__version__, encoder=encoder, subword=subword,
                     lexical=lexical, doc_ids=doc_ids,
                     shard_blocks=(auto_shard_blocks(-(-num_docs // chunk))
                                   if shard_blocks is None else shard_blocks))


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


def create_store(url: Any, meta: StoreMeta):
    """Create an empty store (``complete`` false) with the arrays of :data:`ARRAYS` it has; its
    attributes go last. ``url``: a path, a URL or a zarr store object (the writer's in-memory
    shard buffer, :mod:`embcache.cache.shards`).

    Returns:
        The ``zarr.Group``.
    """
    import zarr

    group = zarr.open_group(store=url, mode="w")
    # write_empty_chunks also skips zarr's all-zero scan of every chunk written (measured: half
    # the write time of layout 1); rows a block does not fill are still never written.
    check = CHECKSUM_CHUNKS or meta.sharded
    codecs = {"tokens": _codecs(default_compressor(), check),
              "ids": _codecs(ids_compressor(), check),
              "small": _codecs(zarr.codecs.ZstdCodec(level=0), check)}  # zarr's own default
    for spec in ARRAYS:
        if spec.present(meta):
            fill = {} if spec.fill is None else {"fill_value": spec.fill}
            group.create_array(spec.name, shape=spec.shape(meta), chunks=spec.chunks(meta),
                               shards=spec.shards(meta), dtype=spec.dtype or meta.dtype, **fill,
                               **codecs[spec.codec])
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


def check_shapes(url: str, group, meta: StoreMeta) -> None:
    """Refuse a store whose attributes disagree with its arrays' shapes (an edited or damaged
    ``zarr.json``): every attribute that sizes an array is compared with that array's metadata
    (no chunk is read), so a reader never indexes past an array's end.

    Raises:
        StoreError: naming the attributes and the array that disagree, in one line.
    """
    from embcache.cache.errors import StoreError

    # Per-document arrays first: an edited `num_docs` is named where it shows most directly.
    for spec in sorted(ARRAYS, key=lambda a: ("docs", "blocks", "rows").index(a.axis)):
        if spec.name not in group:
            continue
        shape, have = spec.shape(meta), tuple(group[spec.name].shape)
        if have != shape:
            raise StoreError(f"Store {url}: its attributes {spec.sized_by} give array "
                             f"`{spec.name}` the shape {shape}, but it has {have}: its zarr.json "
                             "was edited or damaged; rebuild the store with `overwrite=True`")
