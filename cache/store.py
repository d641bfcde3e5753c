"""Opening a store to read it: its URL and state, the :class:`Store` reader and
:func:`open_store`, which checks the attributes (the single source of truth), the layout
version, the arrays' shapes and, for a complete store, its manifest. The layout itself is
:mod:`embcache.cache.layout`; writing and resuming, :mod:`embcache.cache.writer`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embcache.cache.errors import StoreError, StrPath, install_hint, path_arg
from embcache.cache.integrity import (
    check_manifest,
    read_chunk_stats,
    reading_chunks,
)
from embcache.cache.integrity import (
    read as read_checked,
)
from embcache.cache.layout import check_shapes
from embcache.cache.meta import (
    LAYOUT_VERSION,
    StoreMeta,
)

if TYPE_CHECKING:
    import pandas as pd
    import zarr


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
    from zarr.errors import ContainsArrayError

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
    except ContainsArrayError:  # one of a store's arrays (news20.zarr/tokens), not a store
        return "foreign"
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
    # False: rows carry the ids alone, for readers whose every model takes only the lexical
    # channel (``tokens`` is then never read, nor decoded, nor held).
    vectors: bool = True

    def reading_ids(self, vectors: bool = True) -> Store:
        """This store, its rows read with their token ids (and without the vectors where
        ``vectors`` is False: the batches' ``embedded`` is then ``(b, T, 0)``).

        Raises:
            StoreError: the store has no lexical channel (written before it existed).
        """
        if not self.meta.has_token_ids:
            raise StoreError(f"Store {self.url} has no token ids (it was written by embcache "
                             f"{self.meta.embcache_version or 'before 0.1'}, before the lexical "
                             "channel); a model that takes token_ids needs them: rebuild it by "
                             "running its embed-corpus job again with `overwrite=True`")
        return Store(self.url, self.group, self.meta, with_ids=True, vectors=vectors)

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
        token id's columns when reading ids; those alone without the vectors)."""
        from embcache.cache.rows import id_columns

        ids = id_columns(self.meta.dtype) if self.with_ids else 0
        return self.meta.row_width + ids if self.vectors else ids

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
        labels = f"{len(m.label_names or ())} labels" if m.labelled else "unlabelled"
        state = "complete" if m.complete else "incomplete"
        return (f"Store({self.url!r}: {m.num_docs:,} documents of up to {m.max_len} tokens x "
                f"{m.dim} {m.dtype}, {labels}, {state})")

    @property
    def split_counts(self) -> dict[str, int]:
        """Documents per split (``{}`` for an incomplete store)."""
        return dict(self.meta.totals.split_counts) if self.meta.totals else {}

    def split_doc_ids(self, split: str | None, first: int = 0,
                      stop: int | None = None) -> Iterator[int | str]:
        """The split's document ids in store order (the order of an unshuffled pass), read chunk
        by chunk (memory: one chunk's ids); ``first``/``stop``: of the documents at those
        positions only."""
        from embcache.cache.meta import SPLIT_NAMES

        c, stop = self.chunk_docs, self.num_docs if stop is None else min(stop, self.num_docs)
        for start in range(first, stop, c):
            end = min(start + c, stop)
            ids = self.read("doc_ids", start, end)
            if split is not None:
                ids = ids[self.read("split", start, end) == SPLIT_NAMES.index(split)]
            yield from self.doc_id_values(ids)

    def doc_id_values(self, raw: np.ndarray) -> list[int] | list[str]:
        """Document ids as read from ``doc_ids`` -> the corpus's own type: ints where every id
        of the corpus was an integer (the store's ``doc_ids`` attribute), else strings."""
        if self.meta.doc_ids == "int":
            return [int(d) for d in raw]
        return [str(d) for d in raw]

    def documents(self, split: str | None = None) -> pd.DataFrame:
        """A ``pandas.DataFrame`` of the store's documents in store order: ``doc_id``, ``label``
        (labelled stores), ``split`` (its name) and ``length`` (kept tokens); with ``split``,
        that split's rows only. Memory: four columns of the whole store (the result itself),
        read from the small per-document arrays; no vectors are read.

        Raises:
            StoreError: an unknown split name.
        """
        import pandas as pd

        from embcache.cache.meta import SPLIT_NAMES

        if split is not None and split not in SPLIT_NAMES:
            raise StoreError(f"Invalid value for `split`: {split!r}; one of "
                             f"{', '.join(SPLIT_NAMES)}, or None for every document")
        codes = self.read("split")
        frame: dict[str, Any] = {"doc_id": self.doc_id_values(self.read("doc_ids"))}
        names = self.label_names
        if names is not None:
            frame["label"] = np.asarray(names, dtype=object)[self.read("labels").astype(np.int64)]
        frame["split"] = np.asarray(SPLIT_NAMES, dtype=object)[codes.astype(np.int64)]
        frame["length"] = self.read("lengths").astype(np.int64)
        table = pd.DataFrame(frame)
        if split is not None:
            table = table[codes == SPLIT_NAMES.index(split)].reset_index(drop=True)
        return table

    def array(self, name: str) -> zarr.Array:
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
        if self.meta.sharded:
            reader = self._shard_reader(name)
            if reader is not None:  # one ranged read per shard (embcache.cache.shards)
                with reading_chunks(self.url, self.meta, name, array, start, stop):
                    rows: np.ndarray = reader.read(start, stop)
                    return rows
        return read_checked(self.url, self.meta, name, array, start, stop)

    def _shard_reader(self, name: str):
        """The array's :class:`~embcache.cache.shards.ShardReader` (kept: it caches the shard
        indexes), or ``None`` where zarr reads it (``doc_ids``' strings)."""
        readers = self.__dict__.setdefault("_shard_readers", {})
        if name not in readers:
            from embcache.cache.shards import ShardReader

            array = self.array(name)
            readers[name] = ShardReader(array) if ShardReader.fits(array) else None
        return readers[name]


def layout_error(url: str, layout) -> StoreError:
    what = " (every document padded to max_len)" if layout == 1 else ""
    return StoreError(f"Store {url} has layout version {layout}{what}; this embcache reads "
                      f"version {LAYOUT_VERSION} (ragged: kept tokens only). Rebuild it: rerun "
                      "its embed-corpus command with `overwrite=True`")


def open_store(url: StrPath, *, require_complete: bool = True, require_labels: bool = False,
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

    url = path_arg(url, "url")
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
        raise layout_error(url, layout)
    if require_complete and not attrs.get("complete"):
        done = total = "?"
        if "chunk_stats" in group:
            stats = read_chunk_stats(group)
            done, total = str(int((stats[:, 0] >= 0).sum())), str(stats.shape[0])
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


def bytes_on_disk(url: str) -> int | None:
    """Total size of a local store's files (``None`` for remote stores)."""
    if not is_local(url):
        return None
    total = 0
    for dirpath, _dirs, files in os.walk(str(url).removeprefix("file://")):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total
