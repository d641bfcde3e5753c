"""The store's metadata as one frozen, typed object: :class:`StoreMeta`.

It is the single source of truth for what a store holds. The writer builds it once and writes it
as the group's attributes (``to_attrs``); readers, the model card and the scorer read it back with
``from_attrs``, which checks every field and names the first one that is missing or malformed.
A model card embeds the store's ``to_attrs()`` whole, so a card and a store are compared field by
field through the same object (:meth:`StoreMeta.contract`), never mapped by hand.

The attribute names are the layout-2 names (``max_len``, ``vectors``, ``tokenizer``, ...): stores
written before this module existed read unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from embcache.cache.errors import StoreError
from embcache.cache.settings import DTYPES, OOV_POLICIES, PADDINGS, EmbedSettings
from embcache.cache.tokenize import TokenizerSettings

LAYOUT_VERSION = 2
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSettings:
    """How documents are assigned to train/val/test (a hash of each document id)."""

    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class VectorsInfo:
    """The word vectors a store was embedded with (``VectorTable.describe()``)."""

    fingerprint: str
    dim: int
    vocab_size: int
    source: str
    duplicates: int = 0


@dataclass(frozen=True)
class StoreTotals:
    """What only a finished store knows (``None`` on ``StoreMeta`` until then)."""

    num_tokens: int
    oov_tokens: int
    kept_tokens: int
    split_counts: dict[str, int]
    created: str
    seconds: float
    # The manifest: chunks stored per array (embcache.cache.integrity); None for stores written
    # before it existed.
    chunks: dict[str, int] | None = None

    @property
    def oov_rate(self) -> float:
        return self.oov_tokens / self.num_tokens if self.num_tokens else 0.0


@dataclass(frozen=True)
class StoreMeta:
    """Everything a store records about itself.

    ``settings`` and ``vectors`` decide the embedded values; ``corpus`` identifies the input
    (its options, resolved path, size and modification time, for resuming); ``chunk_docs``,
    ``token_chunk`` and ``block_rows`` fix the physical layout (see :mod:`embcache.cache.store`).
    """

    settings: EmbedSettings
    vectors: VectorsInfo
    split: SplitSettings
    corpus: dict[str, Any]
    label_names: tuple[str, ...] | None
    num_docs: int
    chunk_docs: int
    token_chunk: int
    block_rows: int
    embcache_version: str
    complete: bool = False
    totals: StoreTotals | None = None
    layout: int = LAYOUT_VERSION
    # A frozen transformer encoder's identity (embcache.cache.encoder.Encoder.identity) when the
    # vectors are its token vectors; ``vectors.fingerprint`` is then the encoder's fingerprint.
    encoder: dict[str, Any] | None = None
    # A static subword table's identity (embcache.cache.subword.SubwordTable.identity): its
    # layout, tokenizer file's sha256 and fingerprint (= ``vectors.fingerprint``).
    subword: dict[str, Any] | None = None
    # The lexical channel (``token_ids``, :mod:`embcache.cache.lexical`): ``{"ids": what the ids
    # are}``; ``None`` for stores written before it existed (they have no ``token_ids`` array).
    lexical: dict[str, Any] | None = None
    # What the documents' ids are: "int" when every corpus id is a canonical integer (stored as
    # text, given back as ints by predictions and tables), else "str" (and for older stores).
    doc_ids: str = "str"
    # Blocks per shard (Zarr v3's sharding codec, :mod:`embcache.cache.shards`): every array's
    # chunks of ``shard_blocks`` consecutive blocks packed into one object; 0: one object per
    # chunk (stores written before sharding existed, or ``--shard-blocks 0``).
    shard_blocks: int = 0

    # -- derived facts -------------------------------------------------------------------------
    @property
    def max_len(self) -> int:
        return self.settings.max_len

    @property
    def dim(self) -> int:
        return self.vectors.dim

    @property
    def dtype(self) -> str:
        return self.settings.dtype

    @property
    def padding(self) -> str:
        return self.settings.padding

    @property
    def row_width(self) -> int:
        """Columns of a packed row (:mod:`embcache.cache.rows`): ``dim``, plus 2 for int8."""
        from embcache.cache.rows import row_width

        return row_width(self.dim, self.dtype)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_docs // self.chunk_docs)

    @property
    def labelled(self) -> bool:
        return self.label_names is not None

    @property
    def sharded(self) -> bool:
        return self.shard_blocks > 0

    @property
    def num_shards(self) -> int:
        """Shards per array (0 when unsharded)."""
        return -(-self.num_chunks // self.shard_blocks) if self.sharded else 0

    @property
    def quantized(self) -> bool:
        """Whether token vectors are int8 with a scale each (the ``scales`` array)."""
        return self.dtype == "int8"

    @property
    def has_token_ids(self) -> bool:
        """Whether the store holds the lexical channel (its ``token_ids`` array)."""
        return self.lexical is not None

    @property
    def strip_headers(self) -> bool:
        return bool(self.corpus.get("strip_headers", False))

    def finished(self, totals: StoreTotals) -> StoreMeta:
        return replace(self, complete=True, totals=totals)

    # -- comparisons ---------------------------------------------------------------------------
    def contract(self) -> dict[str, Any]:
        """What decides the embedded values a model sees: scoring input must match all of it
        (``dtype`` aside: a model reads float16 and float32 stores alike)."""
        s = self.settings
        return {"vectors.fingerprint": self.vectors.fingerprint, "tokenizer": s.tokenizer,
                "max_len": s.max_len, "dim": self.dim, "padding": s.padding,
                "truncating": s.truncating, "oov": (s.oov, s.seed),
                "strip_headers": self.strip_headers}

    def contract_differences(self, other: StoreMeta) -> list[str]:
        """``["max_len 1000 vs 200", ...]``: where ``other`` embeds differently."""
        a, b = self.contract(), other.contract()
        out = []
        for key in a:
            if a[key] != b[key]:
                va, vb = a[key], b[key]
                if key == "vectors.fingerprint":
                    va, vb = va[:12], vb[:12]
                out.append(f"{key} {va!r} vs {vb!r}")
        return out

    def job(self) -> dict[str, Any]:
        """What a resumed run must share with the run that started the store."""
        return {"layout": self.layout, "corpus": self.corpus,
                "vectors": self.vectors.fingerprint, "settings": self.settings,
                "split": self.split, "chunk_docs": self.chunk_docs, "lexical": self.lexical,
                "shard_blocks": self.shard_blocks}

    def job_differences(self, other: StoreMeta) -> list[str]:
        a, b = self.job(), other.job()
        return sorted(k for k in a if a[k] != b[k])

    # -- attributes ----------------------------------------------------------------------------
    def to_attrs(self) -> dict[str, Any]:
        """The group attributes (plain JSON). Each fact once: what follows from others
        (``num_chunks``, ``labelled``, ``strip_headers``) is a property, not an attribute."""
        s = self.settings
        attrs: dict[str, Any] = {
            "embcache_layout": self.layout,
            "complete": self.complete,
            "num_docs": self.num_docs,
            "max_len": s.max_len,
            "dim": self.dim,
            "dtype": s.dtype,
            "chunk_docs": self.chunk_docs,
            "token_chunk": self.token_chunk,
            "block_rows": self.block_rows,
            "label_names": list(self.label_names or ()) if self.labelled else None,
            "vectors": asdict(self.vectors),
            "tokenizer": s.tokenizer.to_dict(),
            "padding": s.padding,
            "truncating": s.truncating,
            "oov": {"policy": s.oov, "seed": s.seed},
            "split": {"names": list(SPLIT_NAMES), **asdict(self.split)},
            "corpus": dict(self.corpus),
            "embcache_version": self.embcache_version,
        }
        if self.encoder is not None:
            attrs["encoder"] = dict(self.encoder)
        if self.subword is not None:
            attrs["subword"] = dict(self.subword)
        if self.lexical is not None:
            attrs["lexical"] = dict(self.lexical)
        attrs["doc_ids"] = self.doc_ids
        if self.sharded:
            attrs["shard_blocks"] = self.shard_blocks
        if self.totals is not None:
            t = self.totals
            attrs.update({**asdict(t), "oov_rate": t.oov_rate})
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], where: str, error: type[Exception] = StoreError
                   ) -> StoreMeta:
        """Parse and check attributes; ``where`` names the store or card in the error.

        Raises:
            ``error`` (a :class:`StoreError` by default): a field is missing or malformed.
        """
        r = _Reader(attrs, where, error)
        layout = r.get("embcache_layout", int)
        if layout != LAYOUT_VERSION:
            raise error(f"{where} has layout version {layout}; this embcache reads version "
                        f"{LAYOUT_VERSION}")
        settings = _read_settings(r)
        vec = r.get("vectors", dict)
        vectors = VectorsInfo(fingerprint=r.check("vectors.fingerprint", vec.get("fingerprint"), str),
                              dim=r.check("vectors.dim", vec.get("dim"), int),
                              vocab_size=r.check("vectors.vocab_size", vec.get("vocab_size"), int),
                              source=r.check("vectors.source", vec.get("source"), str),
                              duplicates=int(vec.get("duplicates") or 0))
        if r.get("dim", int) != vectors.dim:
            raise error(f"{where}: dim {attrs['dim']} does not match vectors.dim {vectors.dim}")
        sp = r.get("split", dict)
        split = SplitSettings(val_frac=r.check("split.val_frac", sp.get("val_frac"), float),
                              test_frac=r.check("split.test_frac", sp.get("test_frac"), float),
                              seed=r.check("split.seed", sp.get("seed"), int))
        labels = attrs.get("label_names")
        if labels is not None and not (isinstance(labels, list) and labels
                                       and all(isinstance(x, str) for x in labels)):
            raise error(f"{where}: label_names must be a non-empty list of strings or null")
        corpus = r.get("corpus", dict)
        encoder, subword = attrs.get("encoder"), attrs.get("subword")
        for name, value in (("encoder", encoder), ("subword", subword)):
            if value is not None and not (isinstance(value, dict)
                                          and value.get("fingerprint") == vectors.fingerprint):
                raise error(f"{where} has a malformed attribute `{name}` (not an object whose "
                            "fingerprint is vectors.fingerprint); it was not written by this "
                            "embcache or has been edited")
        lexical = attrs.get("lexical")
        if lexical is not None and not (isinstance(lexical, dict)
                                        and isinstance(lexical.get("ids"), str)):
            raise error(f"{where} has a malformed attribute `lexical` (not an object naming its "
                        "ids); it was not written by this embcache or has been edited")
        totals = None
        complete = bool(attrs.get("complete", False))
        if complete:
            totals = StoreTotals(
                num_tokens=r.get("num_tokens", int), oov_tokens=r.get("oov_tokens", int),
                kept_tokens=r.get("kept_tokens", int), split_counts=r.get("split_counts", dict),
                created=str(attrs.get("created", "")), seconds=float(attrs.get("seconds", 0.0)),
                chunks=_chunk_counts(attrs.get("chunks"), where, error))
        return cls(settings=settings, vectors=vectors, split=split, corpus=corpus,
                   label_names=tuple(labels) if labels is not None else None,
                   num_docs=r.get("num_docs", int, positive=True),
                   chunk_docs=r.get("chunk_docs", int, positive=True),
                   token_chunk=r.get("token_chunk", int, positive=True),
                   block_rows=r.get("block_rows", int, positive=True),
                   embcache_version=str(attrs.get("embcache_version", "")),
                   complete=complete, totals=totals, layout=layout, encoder=encoder,
                   subword=subword, lexical=lexical,
                   doc_ids=r.choice("doc_ids", ("str", "int"), attrs.get("doc_ids") or "str"),
                   shard_blocks=r.check("shard_blocks", attrs["shard_blocks"], int, positive=True)
                   if "shard_blocks" in attrs else 0)


def _read_settings(r: _Reader) -> EmbedSettings:
    """The settings that decided the store's values, each field checked."""
    oov = r.get("oov", dict)
    tok = r.get("tokenizer", dict)
    return EmbedSettings(
        max_len=r.get("max_len", int, positive=True),
        padding=r.choice("padding", PADDINGS), truncating=r.choice("truncating", PADDINGS),
        oov=r.choice("oov.policy", OOV_POLICIES, oov.get("policy")),
        seed=r.check("oov.seed", oov.get("seed"), int),
        dtype=r.choice("dtype", DTYPES),
        tokenizer=TokenizerSettings(**{k: r.check(f"tokenizer.{k}", tok.get(k), t)
                                       for k, t in (("filters", str), ("lower", bool),
                                                    ("split", str), ("name", str))}))


def _chunk_counts(value: Any, where: str, error: type[Exception]) -> dict[str, int] | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, int)
                                            and not isinstance(v, bool) and v >= 0
                                            for k, v in value.items())):
        raise error(f"{where} has a malformed attribute `chunks` (not an object of chunk counts); "
                    "it was not written by this embcache or has been edited")
    return dict(value)


@dataclass
class _Reader:
    attrs: dict[str, Any]
    where: str
    error: type[Exception]

    def check(self, name: str, value: Any, kind: type, positive: bool = False) -> Any:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if ok and positive and value < 1:
            ok = False
        if not ok:
            what = ("missing" if value is None
                    else f"{value!r} is not a {'positive ' if positive else ''}{kind.__name__}")
            raise self.error(f"{self.where} has a malformed attribute `{name}` ({what}); it was "
                             "not written by this embcache or has been edited")
        return value

    def get(self, name: str, kind: type, positive: bool = False) -> Any:
        return self.check(name, self.attrs.get(name), kind, positive)

    def choice(self, name: str, options: tuple[str, ...], value: Any = None) -> str:
        value = self.attrs.get(name) if value is None else value
        if value not in options:
            raise self.error(f"{self.where} has a malformed attribute `{name}` ({value!r} is not "
                             f"one of {options}); it was not written by this embcache or has "
                             "been edited")
        return str(value)
