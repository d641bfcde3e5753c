"""Parsing word-vectors files into blocks of ``(words, float32 vectors)``: text formats (GloVe,
word2vec text, fastText ``.vec``) in blocks of whole lines, and word2vec's binary format; every
malformed line is one error naming the file and line. :mod:`embcache.cache.vectors` writes the
blocks into its cache."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import IO

import numpy as np

from embcache.cache.errors import VectorsError

BLOCK_BYTES = 64 << 20  # parse this much text at a time: bounds memory for multi-GB files


def _text_blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """Whole-line blocks of about ``BLOCK_BYTES`` each, normalised to ``\\n`` without trailing spaces."""
    rest = b""
    while True:
        data = stream.read(BLOCK_BYTES)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        rest = data[cut:]
        yield _normalise(data[:cut])
    if rest:
        yield _normalise(rest + b"\n")


def _normalise(block: bytes) -> bytes:
    # fastText writes a space before each newline; Windows files end lines with \r\n.
    if b"\r\n" in block:
        block = block.replace(b"\r\n", b"\n")
    while b" \n" in block:
        block = block.replace(b" \n", b"\n")
    return block


def parse_text(stream: IO[bytes], name: str, fmt: str) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield ``(words, vectors)`` per block; the last ``dim`` fields of a line are its vector."""
    line_no = 0  # lines consumed before the current block
    dim: int | None = None
    declared: int | None = None
    seen = 0
    for block in _text_blocks(stream):
        if dim is None:
            first_end = block.find(b"\n")
            first = block[:first_end].split(b" ")
            has_header = len(first) == 2 and all(f.isdigit() for f in first)
            if fmt == "glove" and has_header:
                raise VectorsError(f"{name}, line 1: a word2vec/fastText header line "
                                   "('count dim') in a file declared as glove")
            if has_header:
                declared, dim = int(first[0]), int(first[1])
                block = block[first_end + 1:]
                line_no = 1
            else:
                if fmt in ("word2vec", "fasttext"):
                    raise VectorsError(f"{name}, line 1: expected a header line 'count dim', "
                                       f"found {block[:first_end][:60]!r}")
                dim = len(first) - 1
            if dim < 1:
                raise VectorsError(f"{name}, line {line_no + 1}: no vector values found")
        words, vectors = _parse_block(block, dim, name, line_no)
        bad = _first_nonfinite(vectors)
        if bad is not None:
            lines = [i for i, ln in enumerate(block.split(b"\n")[:-1]) if ln.strip()]
            raise VectorsError(f"{name}, line {line_no + lines[bad] + 1}: the vector of "
                               f"{words[bad]!r} holds nan or inf (or a value beyond float32); "
                               "every value must be a finite number")
        seen += len(words)
        line_no += block.count(b"\n")
        yield words, vectors
    if dim is None:
        raise VectorsError(f"Vectors file {name} is empty")
    if declared is not None and declared != seen:
        raise VectorsError(f"{name}: the header declares {declared} vectors but the file holds {seen}")


def _parse_block(block: bytes, dim: int, name: str, line_no: int) -> tuple[list[str], np.ndarray]:
    """Fast path: pandas' C parser. Any irregularity falls back to the exact per-line parser."""
    import pandas as pd

    try:
        df = pd.read_csv(
            io.BytesIO(block), sep=" ", header=None, names=list(range(dim + 1)),
            dtype={0: object, **{i: np.float32 for i in range(1, dim + 1)}},
            engine="c", na_filter=False, keep_default_na=False, quoting=csv.QUOTE_NONE,
            lineterminator="\n", encoding="utf-8", encoding_errors="strict")
        vectors = df.iloc[:, 1:].to_numpy(np.float32)
        words = df[0].tolist()
        if len(words) == block.count(b"\n") and all(isinstance(w, str) for w in words):
            return words, vectors
    except Exception:  # noqa: BLE001 - any parser complaint means: take the exact path
        pass
    return _parse_block_exact(block, dim, name, line_no)


def _parse_block_exact(block: bytes, dim: int, name: str,
                       line_no: int) -> tuple[list[str], np.ndarray]:
    """Per-line parse: words may hold spaces or odd bytes; errors name the line."""
    words: list[str] = []
    rows: list[list[float]] = []
    for offset, line in enumerate(block.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        parts = line.rsplit(b" ", dim)
        if len(parts) != dim + 1 or not parts[0]:
            raise VectorsError(f"{name}, line {line_no + offset}: expected a word and {dim} values, "
                               f"found {len(line.split())} fields")
        try:
            rows.append([float(x) for x in parts[1:]])
        except ValueError:
            bad = next(x for x in parts[1:] if not _is_float(x))
            raise VectorsError(f"{name}, line {line_no + offset}: {bad[:30]!r} is not a number") from None
        try:
            words.append(parts[0].decode("utf-8"))
        except UnicodeDecodeError:
            words.append(parts[0].decode("latin-1"))
    return words, np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)


def _first_nonfinite(vectors: np.ndarray) -> int | None:
    """The first row holding nan or inf (a value beyond float32 parses as inf), or ``None``."""
    finite = np.isfinite(vectors).all(axis=1)
    return None if finite.all() else int(np.argmin(finite))


def _is_float(x: bytes) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def parse_binary(stream: IO[bytes], name: str) -> Iterator[tuple[list[str], np.ndarray]]:
    """word2vec binary: a ``count dim`` header, then per word: ``word<space>`` and dim float32."""
    header = stream.readline().split()
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise VectorsError(f"{name}: not a word2vec binary file (expected a 'count dim' header line)")
    count, dim = int(header[0]), int(header[1])
    reader = (stream if hasattr(stream, "peek")
              else io.BufferedReader(stream, buffer_size=1 << 20))  # type: ignore[type-var]
    nbytes = 4 * dim
    block = 50_000
    for start in range(0, count, block):
        n = min(block, count - start)
        words: list[str] = []
        vectors = np.empty((n, dim), dtype=np.float32)
        for i in range(n):
            chars: list[bytes] = []
            while True:
                ch = reader.read(1)
                if not ch:
                    raise VectorsError(f"{name}: file ends after {start + i} of {count} vectors")
                if ch == b" ":
                    break
                if ch != b"\n" or chars:
                    chars.append(ch)
            raw = reader.read(nbytes)
            if len(raw) != nbytes:
                raise VectorsError(f"{name}: file ends inside vector {start + i + 1} of {count}")
            vectors[i] = np.frombuffer(raw, dtype="<f4")
            if not np.isfinite(vectors[i]).all():
                raise VectorsError(f"{name}: vector {start + i + 1} of {count} holds nan or inf; "
                                   "every value must be a finite number")
            word = b"".join(chars)
            try:
                words.append(word.decode("utf-8"))
            except UnicodeDecodeError:
                words.append(word.decode("latin-1"))
        yield words, vectors
