"""Where a corpus is and how to read it (:class:`CorpusSpec`): the options of ``embed-corpus``
and ``score`` for raw input, recorded in a store's ``corpus`` attribute."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import cast

from embcache.cache.errors import CorpusError

FORMATS = ("auto", "folder", "tar", "csv", "tsv", "jsonl", "lines")


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus is and how to read it.

    Attributes:
        path: a folder, ``.tar``/``.tar.gz``/``.tgz``, ``.csv``, ``.tsv``, ``.jsonl`` or ``.txt``.
        format: one of :data:`FORMATS`; ``auto`` decides by the path.
        text_columns: CSV/TSV columns (names, or 0-based indices) or JSON fields joined as the text.
        label_column: CSV/TSV column or JSON field holding the label (``None``: unlabelled).
        id_column: CSV/TSV column or JSON field holding a document id (default: row number).
        header: whether a CSV/TSV file starts with a header row.
        strip_headers: drop everything before the first blank line (Usenet headers), as the
            original Keras 20 Newsgroups example does.
        label_names_file: a file naming labels, one per line; label value ``i`` (1-based, as in
            the Zhang et al. CSV datasets such as AG News) gets the name on line ``i``.
    """

    path: str
    format: str = "auto"
    # Given as names or 0-based indices; held as a tuple of strings (``__post_init__``).
    text_columns: Sequence[str | int] | str | int = ()
    label_column: str | int | None = None
    id_column: str | int | None = None
    header: bool = True
    strip_headers: bool = False
    label_names_file: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """``text_columns`` as checked: names, or indices as their digits."""
        return tuple(str(c) for c in cast(Sequence, self.text_columns))

    def __post_init__(self) -> None:
        """Columns as given from Python: indices as ints (``[1, 2]``), one name as a string."""
        def column(name: str, value):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise CorpusError(f"Invalid value for `{name}`. Expected a column name or a "
                                  f"0-based index. Received: {name}={value!r}")
            if isinstance(value, int) and value < 0:
                raise CorpusError(f"Invalid value for `{name}`: a column index is 0 or more. "
                                  f"Received: {name}={value!r}")
            return str(value)

        cols = self.text_columns
        cols = [cols] if isinstance(cols, (str, int)) else list(cols)
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "text_columns", tuple(column("text_columns", c) for c in cols))
        for name in ("label_column", "id_column"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, column(name, getattr(self, name)))

    def resolved_format(self) -> str:
        if self.format not in FORMATS:
            raise CorpusError(f"Invalid value for `corpus_format`. Expected one of {FORMATS}. "
                              f"Received: corpus_format={self.format!r}")
        if self.format != "auto":
            return self.format
        p = Path(self.path)
        name = p.name.lower()
        if p.is_dir():
            return "folder"
        if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            return "tar"
        for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"),
                         (".ndjson", "jsonl"), (".txt", "lines")):
            if name.endswith(ext) or name.endswith(ext + ".gz"):
                return fmt
        raise CorpusError(f"Cannot tell the format of corpus {self.path}; "
                          "pass `corpus_format=` (folder, tar, csv, tsv, jsonl, lines)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["text_columns"] = list(self.columns)
        d["format"] = self.resolved_format()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CorpusSpec:
        """The inverse of ``to_dict`` (extra keys, such as a store's file size, are ignored)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["text_columns"] = tuple(kwargs.get("text_columns", ()))
        return cls(**kwargs)
