"""Word vectors: parse GloVe, word2vec and fastText files once, then load them memory-mapped.

The first parse of a file streams it in blocks of whole lines (memory is bounded by the block size,
not the file size) and writes a cache entry keyed by the file's content hash:

    <cache_dir>/<sha256 of the file>/vectors.f32   float32 rows, C order, one per unique word
                                    /vocab.txt     the words, one per line, in row order
                                    /meta.json     dim, rows, duplicates, fingerprint, source

Later runs find the entry through a small stat memo (path, size, mtime -> content hash), so they
neither parse nor hash the file again, and map the table instead of reading it.

The *fingerprint* identifies the parsed table (words and float32 values), not the container: the
same vectors as ``.txt``, ``.txt.gz`` or a ``.zip`` member share one fingerprint, which is what a
store and a model card record.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from embcache.cache.errors import VectorsError
from embcache.cache.vectors_parse import parse_binary, parse_text

FORMATS = ("auto", "glove", "word2vec", "word2vec-bin", "fasttext")


@dataclass
class VectorTable:
    """A parsed table of word vectors.

    Attributes:
        words: the unique words, in row order (first occurrence wins).
        vectors: ``(len(words), dim)`` float32; memory-mapped when loaded from the cache.
        fingerprint: sha256 over the words and values; identifies the table, not its container.
        source: the file (and zip member) it was parsed from.
        duplicates: how many later repeats of a word were dropped.
    """

    words: list[str]
    vectors: np.ndarray
    fingerprint: str
    source: str
    duplicates: int = 0
    cache_path: str | None = None
    _index: dict[str, int] | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        """Word -> row, built on first use."""
        if self._index is None:
            self._index = dict(zip(self.words, range(len(self.words))))
        return self._index

    def describe(self) -> dict:
        """The fingerprint a store and a model card record."""
        return {
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "vocab_size": self.size,
            "duplicates": self.duplicates,
            "source": self.source,
        }


def default_cache_dir() -> Path:
    """``$EMBCACHE_CACHE_DIR``, else ``$XDG_CACHE_HOME/embcache``, else ``~/.cache/embcache``."""
    env = os.environ.get("EMBCACHE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embcache"


def load_vectors(
    path: str | os.PathLike,
    *,
    member: str | None = None,
    fmt: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> VectorTable:
    """Load a vectors file, parsing it only the first time.

    Args:
        path: GloVe text (``.txt``, ``.txt.gz``), word2vec text or binary (``.bin``), fastText
            ``.vec``, or a ``.zip`` holding one of them.
        member: the file inside a ``.zip`` (needed when it holds more than one vectors file).
        fmt: one of :data:`FORMATS`; ``auto`` decides by extension and by the first line.
        cache_dir: where parsed tables live (:func:`default_cache_dir` when ``None``).

    Returns:
        The table, its vectors memory-mapped from the cache.

    Raises:
        VectorsError: the file is missing, unreadable or malformed (the message names the line).
    """
    if fmt not in FORMATS:
        raise VectorsError(f"Invalid value for `vectors_format`. Expected one of {FORMATS}. "
                           f"Received: vectors_format={fmt!r}")
    path = Path(path)
    if not path.is_file():
        raise VectorsError(f"Vectors file not found: {path}")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = content_key(path, member, cache_root)
    entry = cache_root / "vectors" / key
    if not (entry / "meta.json").is_file():
        _build_cache_entry(path, member, fmt, entry)
    return open_cached_table(entry)


def open_cached_table(entry: str | os.PathLike) -> VectorTable:
    """Map a cache entry written by :func:`load_vectors` (used by worker processes too)."""
    entry = Path(entry)
    meta = json.loads((entry / "meta.json").read_text())
    words = (entry / "vocab.txt").read_bytes().decode("utf-8", "surrogateescape").split("\n")
    words.pop()  # the file ends with a newline
    rows, dim = meta["rows"], meta["dim"]
    vectors = np.memmap(entry / "vectors.f32", dtype=np.float32, mode="r", shape=(rows, dim))
    return VectorTable(words=words, vectors=vectors, fingerprint=meta["fingerprint"],
                       source=meta["source"], duplicates=meta["duplicates"],
                       cache_path=str(entry))


# ---------------------------------------------------------------------------------------------
# cache keys


def content_key(path: Path, member: str | None, cache_root: Path) -> str:
    """sha256 of the file (plus zip member), memoised by (path, size, mtime) to skip re-hashing."""
    st = path.stat()
    stat_id = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{member or ''}"
    memo = cache_root / "stat" / hashlib.sha1(stat_id.encode()).hexdigest()
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as e:
        raise VectorsError(f"Cannot read vectors file {path}: {e.strerror}") from None
    digest.update(f"|member={member or ''}".encode())
    key = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(memo, key.encode())
    except OSError:
        pass  # a read-only cache still works, it just hashes every time
    return key


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# parsing


def _open_source(path: Path, member: str | None) -> tuple[IO[bytes], str]:
    """A binary stream of the vectors text (or binary) and a name for messages."""
    try:
        if zipfile.is_zipfile(path):
            zf = zipfile.ZipFile(path)
            names = [n for n in zf.namelist() if not n.endswith("/")]
            if member is None:
                candidates = [n for n in names if n.endswith((".txt", ".vec", ".bin"))]
                if len(candidates) != 1:
                    raise VectorsError(
                        f"{path} holds {len(candidates)} vectors files "
                        f"({', '.join(candidates[:6])}{' ...' if len(candidates) > 6 else ''}); "
                        "choose one with `vectors_member=`")
                member = candidates[0]
            if member not in names:
                raise VectorsError(f"{path} has no member {member!r}; it holds: {', '.join(names[:8])}")
            return zf.open(member), f"{path}:{member}"
        if member is not None:
            raise VectorsError(f"`vectors_member=` was given but {path} is not a .zip file")
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(path, "rb"), str(path)  # type: ignore[return-value]  # reads bytes
        return open(path, "rb"), str(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise VectorsError(f"Cannot read vectors file {path}: {e}") from None


def _build_cache_entry(path: Path, member: str | None, fmt: str, entry: Path) -> None:
    stream, name = _open_source(path, member)
    is_binary = fmt == "word2vec-bin" or (
        fmt == "auto" and (member or path.name).removesuffix(".gz").endswith(".bin"))
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        stream.close()
        raise VectorsError(f"Cannot write the vectors cache under {entry.parent.parent} "
                           f"({e.strerror}); point `cache_dir=` or EMBCACHE_CACHE_DIR at a "
                           "writable folder") from None
    writer = _TableWriter(tmp)
    try:
        with stream:
            blocks = parse_binary(stream, name) if is_binary else parse_text(stream, name, fmt)
            for words, vectors in blocks:
                writer.add(words, vectors)
        writer.finish(name)
    except (OSError, EOFError, zipfile.BadZipFile, gzip.BadGzipFile) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VectorsError(f"Cannot read vectors file {name}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, entry)
    except OSError:  # another process finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)


class _TableWriter:
    """Appends parsed blocks to a cache entry, dropping repeated words (first one wins)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.index: dict[str, int] = {}
        self.duplicates = 0
        self.dim: int | None = None
        self._vec_file = open(folder / "vectors.f32", "wb")
        self._vocab_file = open(folder / "vocab.txt", "wb")
        self._vec_hash = hashlib.sha256()
        self._vocab_hash = hashlib.sha256()

    def add(self, words: list[str], vectors: np.ndarray) -> None:
        if self.dim is None:
            self.dim = vectors.shape[1]
        index, keep = self.index, []
        for i, w in enumerate(words):
            if w in index:
                self.duplicates += 1
            else:
                index[w] = len(index)
                keep.append(i)
        if len(keep) != len(words):
            words = [words[i] for i in keep]
            vectors = vectors[keep]
        if not words:
            return
        vocab = ("\n".join(words) + "\n").encode("utf-8", "surrogateescape")
        data = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        self._vocab_file.write(vocab)
        self._vec_file.write(data)
        self._vocab_hash.update(vocab)
        self._vec_hash.update(data)

    def finish(self, source: str) -> None:
        self._vec_file.close()
        self._vocab_file.close()
        if not self.index:
            raise VectorsError(f"Vectors file {source} holds no vectors")
        fingerprint = hashlib.sha256(
            f"dim={self.dim}|".encode() + self._vocab_hash.digest() + self._vec_hash.digest()
        ).hexdigest()
        meta = {"rows": len(self.index), "dim": self.dim, "duplicates": self.duplicates,
                "fingerprint": fingerprint, "source": os.path.basename(source)}
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=2))
