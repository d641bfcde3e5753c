"""Corpus readers: stream ``Document(doc_id, text, label)`` from folders, archives, CSV, JSON Lines.

Every reader is a generator: one document is in memory at a time (a CSV row, an archive member),
so reading is bounded by the largest document, never the corpus. :func:`scan_corpus` is a cheap
first pass (ids and labels, no tokenizing) that counts documents, collects label names and rejects
bad input before a store is created.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from embcache.cache.corpus_spec import FORMATS, CorpusSpec
from embcache.cache.errors import CorpusError

__all__ = ["FORMATS", "CorpusScan", "CorpusSpec", "Document", "decode_text", "iter_documents",
           "label_mapper", "scan_corpus", "strip_usenet_header"]

@dataclass
class Document:
    doc_id: str
    text: str
    label: str | None = None


@dataclass
class CorpusScan:
    """What the first pass learnt: document count and label names (``None``: unlabelled)."""

    num_docs: int
    label_names: list[str] | None
    format: str
    # Every document id an integer written canonically ("7", not "07" or "7.0"; within int64):
    # the store then records them as ints, and predictions give them back as ints.
    int_ids: bool = False


def decode_text(data: bytes) -> str:
    """UTF-8, falling back to Latin-1 (which decodes any byte string)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def strip_usenet_header(text: str) -> str:
    """The Keras example's rule: drop everything before the first blank line, if there is one."""
    i = text.find("\n\n")
    return text[i:] if i > 0 else text


_INT_ID = re.compile(r"0|-?[1-9][0-9]{0,17}")


def scan_corpus(spec: CorpusSpec) -> CorpusScan:
    """Count documents and collect labels without tokenizing; raise on bad input.

    Raises:
        CorpusError: missing path, unreadable or corrupt file, empty corpus, empty label folder,
            missing column or field.
    """
    fmt = spec.resolved_format()
    counts: dict[str, int] = {}
    n = 0
    int_ids = True
    for doc_id, label in _iter_ids(spec, fmt):
        n += 1
        int_ids = int_ids and _INT_ID.fullmatch(str(doc_id)) is not None
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if n == 0:
        raise CorpusError(f"Corpus {spec.path} holds no documents")
    label_names = _label_names(spec, counts) if counts else None
    return CorpusScan(num_docs=n, label_names=label_names, format=fmt, int_ids=int_ids)


def iter_documents(spec: CorpusSpec) -> Iterator[Document]:
    """Yield every document in a fixed order (sorted for folders, archive order for archives)."""
    fmt = spec.resolved_format()
    if fmt == "folder":
        docs = _iter_folder(spec, with_text=True)
    elif fmt == "tar":
        docs = _iter_tar(spec, with_text=True)
    elif fmt in ("csv", "tsv"):
        docs = _iter_csv(spec, fmt)
    elif fmt == "jsonl":
        docs = _iter_jsonl(spec)
    else:
        docs = _iter_lines(spec)
    for doc in docs:
        if spec.strip_headers:
            doc.text = strip_usenet_header(doc.text)
        yield doc


def _iter_ids(spec: CorpusSpec, fmt: str) -> Iterator[tuple[str, str | None]]:
    if fmt == "folder":
        docs = _iter_folder(spec, with_text=False)
    elif fmt == "tar":
        docs = _iter_tar(spec, with_text=False)
    else:
        docs = iter_documents(spec)
    for d in docs:
        yield d.doc_id, d.label


def _label_names(spec: CorpusSpec, counts: dict[str, int]) -> list[str]:
    values = list(counts)
    if spec.label_names_file:
        try:
            names = [ln.strip() for ln in Path(spec.label_names_file).read_text().splitlines()
                     if ln.strip()]
        except OSError as e:
            raise CorpusError(f"Cannot read label names file {spec.label_names_file}: "
                              f"{e.strerror}") from None
        bad = [v for v in values if not (v.isdigit() and 1 <= int(v) <= len(names))]
        if bad:
            raise CorpusError(f"Label {bad[0]!r} has no name in {spec.label_names_file} "
                              f"(it names labels 1 to {len(names)})")
        return names
    if all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def label_mapper(spec: CorpusSpec, label_names: list[str]):
    """A function ``raw label value -> label index`` consistent with :func:`scan_corpus`."""
    if spec.label_names_file:
        return lambda v: int(v) - 1
    index = {name: i for i, name in enumerate(label_names)}
    return index.__getitem__


# ---------------------------------------------------------------------------------------------
# folder per label, one file per document


def _require_exists(spec: CorpusSpec) -> Path:
    p = Path(spec.path)
    if not p.exists():
        raise CorpusError(f"Corpus not found: {spec.path}")
    return p


def _folder_files(root: Path) -> list[tuple[str, str | None, Path]]:
    """``(doc_id, label, path)`` for every file, sorted; checks the folder-per-label layout."""
    files: list[tuple[str, str | None, Path]] = []
    empty_dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = sorted(f for f in filenames if not f.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        if not names and not dirnames and rel_dir != ".":
            empty_dirs.append(rel_dir)
        for name in names:
            label = None if rel_dir == "." else os.path.basename(dirpath)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            files.append((rel, label, Path(dirpath) / name))
    _check_layout(str(root), [(f[0], f[1]) for f in files], empty_dirs)
    return files


def _check_layout(where: str, files: list[tuple[str, str | None]], empty_dirs: list[str]) -> None:
    at_root = sum(1 for _, label in files if label is None)
    if at_root and at_root != len(files):
        raise CorpusError(f"Corpus {where} mixes documents at its top level with label folders; "
                          "put every document in a label folder, or none")
    if files and not at_root and empty_dirs:
        raise CorpusError(f"Label folder {empty_dirs[0]!r} in {where} has no documents")


def _iter_folder(spec: CorpusSpec, with_text: bool) -> Iterator[Document]:
    root = _require_exists(spec)
    if not root.is_dir():
        raise CorpusError(f"Corpus {spec.path} is not a folder")
    for doc_id, label, path in _folder_files(root):
        text = ""
        if with_text:
            try:
                text = decode_text(path.read_bytes())
            except OSError as e:
                raise CorpusError(f"Cannot read document {path}: {e.strerror}") from None
        yield Document(doc_id, text, label)


# ---------------------------------------------------------------------------------------------
# the same layout inside a tar archive


def _iter_tar(spec: CorpusSpec, with_text: bool) -> Iterator[Document]:
    path = _require_exists(spec)
    dirs: set[str] = set()
    parents: set[str] = set()
    seen: list[tuple[str, str | None]] = []
    try:
        # Streaming mode: members are read in archive order and never all held at once. A .gz is
        # decompressed by the gzip module, which raises on a truncated stream; tarfile's own
        # stream reader can take a cut at a member boundary for the end of the archive.
        gz = path.name.endswith((".gz", ".tgz"))
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as raw, \
                tarfile.open(fileobj=raw, mode="r|" if gz else "r|*") as tf:
            for member in tf:
                name = member.name.lstrip("./")
                if member.isdir():
                    dirs.add(name.rstrip("/"))
                    continue
                if not member.isfile() or os.path.basename(name).startswith("."):
                    continue
                parent = os.path.dirname(name)
                parents.add(parent)
                label = os.path.basename(parent) if parent else None
                if not with_text:
                    seen.append((name, label))
                    yield Document(name, "", label)
                    continue
                f = tf.extractfile(member)
                data = f.read() if f is not None else b""
                yield Document(name, decode_text(data), label)
            while raw.read(1 << 20):  # to the end of the stream: a truncated .gz raises here
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise CorpusError(f"Cannot read archive {spec.path}: {e or type(e).__name__}") from None
    if not with_text:
        label_level = {os.path.dirname(p) for p in parents}
        empty = sorted(d for d in dirs if d not in parents and os.path.dirname(d) in label_level
                       and not any(p.startswith(d + "/") for p in parents))
        _check_layout(spec.path, seen, empty)


# ---------------------------------------------------------------------------------------------
# CSV / TSV, JSON Lines, one document per line


def _open_lines(path: Path) -> Iterator[str]:
    """Decoded lines (UTF-8, Latin-1 fallback per line), newlines kept for the csv module."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f):
                if n == 0 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (Excel, Windows)
                    raw = raw[3:]
                yield decode_text(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise CorpusError(f"Cannot read {path}: {e}") from None


def _resolve_column(spec_value: str, header: list[str] | None, path: str, what: str) -> int:
    if header is not None and spec_value in header:
        return header.index(spec_value)
    if spec_value.isdigit():
        return int(spec_value)
    known = f"; its columns are: {', '.join(header)}" if header else ""
    raise CorpusError(f"{what} {spec_value!r} does not exist in {path}{known}")


def _iter_csv(spec: CorpusSpec, fmt: str) -> Iterator[Document]:
    path = _require_exists(spec)
    if not spec.text_columns:
        raise CorpusError(f"Corpus {spec.path} is {fmt.upper()}: name its text column(s) with "
                          "`text_columns=`")
    reader = csv.reader(_open_lines(path), delimiter="\t" if fmt == "tsv" else ",")
    header = None
    try:
        if spec.header:
            header = next(reader, None)
            if header is None:
                raise CorpusError(f"Corpus {spec.path} is empty")
        text_idx = [_resolve_column(c, header, spec.path, "Text column") for c in spec.columns]
        label_idx = (_resolve_column(str(spec.label_column), header, spec.path, "Label column")
                     if spec.label_column is not None else None)
        id_idx = (_resolve_column(str(spec.id_column), header, spec.path, "Id column")
                  if spec.id_column is not None else None)
        needed = max(text_idx + [i for i in (label_idx, id_idx) if i is not None])
        for row_no, row in enumerate(reader):
            if not row:
                continue
            if len(row) <= needed:
                raise CorpusError(f"{spec.path}, line {reader.line_num}: {len(row)} columns, "
                                  f"column {needed} does not exist")
            text = " ".join(row[i] for i in text_idx)
            label = row[label_idx] if label_idx is not None else None
            doc_id = row[id_idx] if id_idx is not None else str(row_no)
            yield Document(doc_id, text, label)
    except csv.Error as e:
        raise CorpusError(f"{spec.path}, line {reader.line_num}: {e}") from None


def _iter_jsonl(spec: CorpusSpec) -> Iterator[Document]:
    path = _require_exists(spec)
    fields = spec.columns or ("text",)
    for line_no, line in enumerate(_open_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{spec.path}, line {line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{spec.path}, line {line_no}: expected a JSON object")
        for f in (*fields, spec.label_column, spec.id_column):
            if f is not None and f not in obj:
                raise CorpusError(f"{spec.path}, line {line_no}: field {f!r} is missing")
        where = f"{spec.path}, line {line_no}"
        text = " ".join(_json_value(obj, f, where, (str,), "text") for f in fields)
        label = (_json_value(obj, str(spec.label_column), where, (str, int), "label")
                 if spec.label_column is not None else None)
        doc_id = (_json_value(obj, str(spec.id_column), where, (str, int), "id")
                  if spec.id_column is not None else str(line_no))
        yield Document(doc_id, text, label)


_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
               list: "a list", dict: "an object", str: "a string"}


def _json_value(obj: dict, field: str, where: str, kinds: tuple[type, ...], what: str) -> str:
    """A JSON field as text; a value of another kind (``null``, a list ...) is an error naming
    the line and field, never the text of Python's ``str()`` of it."""
    value = obj[field]
    if isinstance(value, kinds) and not isinstance(value, bool):
        return str(value)
    allowed = " or ".join(_JSON_TYPES[k] for k in kinds)
    got = _JSON_TYPES.get(type(value), "a value")
    if value is not None:
        got += f" ({json.dumps(value)[:40]})"
    raise CorpusError(f"{where}: field {field!r} ({what}) is {got}; expected {allowed}")


def _iter_lines(spec: CorpusSpec) -> Iterator[Document]:
    path = _require_exists(spec)
    for line_no, line in enumerate(_open_lines(path), start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield Document(str(line_no), text, None)
