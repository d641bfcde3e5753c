"""Embedding sources: what turns text into a store's token vectors.

One class per representation, all answering the same questions:

- **identity**: :attr:`~EmbeddingSource.info` (a :class:`VectorsInfo`: fingerprint, dimension,
  vocabulary, file name) and :meth:`~EmbeddingSource.record` (what the store's attributes, and so
  every model card, keep besides it);
- **how to tokenize**: :attr:`~EmbeddingSource.settings`, the embedding settings as they apply to
  this source (a subword table brings its own tokenizer, an encoder caps ``max_len``);
- **how to embed a block**: :meth:`~EmbeddingSource.embedder`, loaded once per process.

:func:`open_source` loads the source a user names, to write a store (``embed-corpus``,
``verify --repair``). :func:`source_for` loads the one a store's metadata names and checks it by
fingerprint, to embed raw input for models trained on that store (``score``, the ``Scorer``).
A source is small and picklable (a cache path or a reference): worker processes receive it and
load what it names themselves; the loaded part never travels. Adding a representation means
writing one subclass here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from embcache.cache.errors import EmbcacheError, ModelError, VectorsError
from embcache.cache.lexical import TOKENIZER_IDS, WORD_HASH
from embcache.cache.meta import StoreMeta, VectorsInfo
from embcache.cache.settings import ENCODER_BATCH, EmbedSettings
from embcache.cache.tokenize import TokenizerSettings

__all__ = ["SOURCES", "EmbeddingSource", "EncoderSource", "SourceArgs", "SubwordSource",
           "WordVectorsSource", "open_source", "require_arguments", "source_for"]


@dataclass(frozen=True)
class SourceArgs:
    """What a caller names for a source (``embed_corpus``'s and ``score``'s arguments)."""

    vectors: str | None = None
    encoder: str | None = None
    tokenizer: str | None = None
    vectors_member: str | None = None
    vectors_format: str = "auto"
    encoder_batch: int = ENCODER_BATCH
    cache_dir: str | None = None
    precision: str = "float32"  # an encoder's forward pass: "float32" or "bfloat16" (resolved)


# Every representation, in the order they are asked whether arguments or a store are theirs:
# each subclass adds itself at the front, so one defined later (a user's) is asked before the
# built-in ones, and word vectors, which take any other file, are asked last.
SOURCES: list[type[EmbeddingSource]] = []


@dataclass(eq=False)
class EmbeddingSource:
    """What embeds a store's tokens (see the module docstring); two sources are equal when they
    embed identically. A subclass is a representation: it says which arguments
    (:meth:`claims`) and which stores (:meth:`wrote`) are its own, loads itself to write a store
    (:meth:`open`) or to embed raw input for one (:meth:`reopen`), and makes its block embedder
    (:meth:`_load`). Defining it registers it in :data:`SOURCES`."""

    kind: ClassVar[str]
    argument: ClassVar[str] = "vectors"  # the argument that names it
    info: VectorsInfo
    settings: EmbedSettings
    _loaded: Any = field(default=None, init=False, repr=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SOURCES.insert(0, cls)

    @classmethod
    def claims(cls, args: SourceArgs) -> bool:
        """Whether ``args`` name a source of this kind."""
        raise NotImplementedError

    @classmethod
    def wrote(cls, meta: StoreMeta) -> bool:
        """Whether the store ``meta`` describes was embedded by a source of this kind."""
        raise NotImplementedError

    @classmethod
    def open(cls, args: SourceArgs, settings: EmbedSettings) -> EmbeddingSource:
        """Load it to write a store with ``settings``, refusing options that do not apply."""
        raise NotImplementedError

    @classmethod
    def reopen(cls, meta: StoreMeta, args: SourceArgs) -> EmbeddingSource:
        """Load it, with the store's own settings, to embed raw input for that store's models
        (the fingerprint is checked by :func:`source_for`)."""
        raise NotImplementedError

    @property
    def ids_kind(self) -> str:
        """What the store's ``token_ids`` hold (:mod:`embcache.cache.lexical`): the tokenizer's
        ids, or for word vectors a hash of each word."""
        return TOKENIZER_IDS

    def record(self) -> dict[str, dict | None]:
        """The store's ``encoder`` and ``subword`` attributes for this source."""
        return {"encoder": None, "subword": None}

    def embedder(self):
        """The block embedder (:mod:`embcache.cache.embed`), loaded on first use in this process:
        a memory-mapped table, or an encoder's weights (seconds to load, so loaded once)."""
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def _load(self):
        raise NotImplementedError

    def _key(self) -> tuple:
        return (self.kind, self.info.fingerprint, self.settings)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmbeddingSource) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __getstate__(self) -> dict:  # a worker gets the reference, never the loaded weights
        return {**self.__dict__, "_loaded": None}


@dataclass(eq=False)
class WordVectorsSource(EmbeddingSource):
    """A word-vectors file (GloVe, word2vec, fastText), parsed once into the vectors cache."""

    kind: ClassVar[str] = "words"
    cache_path: str = ""
    oov: np.ndarray | None = None  # the out-of-vocabulary vector; None: zeros

    @classmethod
    def claims(cls, args: SourceArgs) -> bool:
        from embcache.cache.subword import is_subword

        return args.encoder is None and not is_subword(str(args.vectors), args.tokenizer)

    @classmethod
    def wrote(cls, meta: StoreMeta) -> bool:
        return meta.encoder is None and meta.subword is None

    @classmethod
    def open(cls, args: SourceArgs, settings: EmbedSettings) -> WordVectorsSource:
        return cls.load(str(args.vectors), settings, member=args.vectors_member,
                        fmt=args.vectors_format, cache_dir=args.cache_dir)

    @classmethod
    def reopen(cls, meta: StoreMeta, args: SourceArgs) -> WordVectorsSource:
        from embcache.cache.vectors import load_vectors

        return cls._of(load_vectors(str(args.vectors), cache_dir=args.cache_dir), meta.settings)

    @classmethod
    def load(cls, path: str, settings: EmbedSettings, *, member: str | None = None,
             fmt: str = "auto", cache_dir: str | None = None) -> WordVectorsSource:
        from embcache.cache.vectors import load_vectors

        return cls._of(load_vectors(path, member=member, fmt=fmt, cache_dir=cache_dir), settings)

    @classmethod
    def _of(cls, table, settings: EmbedSettings) -> WordVectorsSource:
        from embcache.cache.embed import oov_vector

        return cls(VectorsInfo(**table.describe()), settings, table.cache_path,
                   oov_vector(table, settings))

    @property
    def ids_kind(self) -> str:
        return WORD_HASH

    def _load(self):
        from embcache.cache.embed import BlockEmbedder
        from embcache.cache.vectors import open_cached_table

        return BlockEmbedder(open_cached_table(self.cache_path), self.settings, self.oov)


@dataclass(eq=False)
class SubwordSource(EmbeddingSource):
    """A static subword table with its Hugging Face tokenizer (:mod:`embcache.cache.subword`)."""

    kind: ClassVar[str] = "subword"
    entry: str = ""
    identity: dict = field(default_factory=dict)

    @classmethod
    def claims(cls, args: SourceArgs) -> bool:
        from embcache.cache.subword import is_subword

        return args.encoder is None and is_subword(str(args.vectors), args.tokenizer)

    @classmethod
    def wrote(cls, meta: StoreMeta) -> bool:
        return meta.subword is not None

    @classmethod
    def open(cls, args: SourceArgs, settings: EmbedSettings) -> SubwordSource:
        _no_word_options(args, settings, f"a static subword table ({args.vectors})")
        return cls.load(str(args.vectors), args.tokenizer, settings, cache_dir=args.cache_dir)

    @classmethod
    def reopen(cls, meta: StoreMeta, args: SourceArgs) -> SubwordSource:
        from embcache.cache.subword import load_subword

        table = load_subword(str(args.vectors), args.tokenizer, cache_dir=args.cache_dir)
        return cls(VectorsInfo(**table.describe()), meta.settings, str(table.entry),
                   table.identity())

    @classmethod
    def load(cls, path: str, tokenizer: str | None, settings: EmbedSettings, *,
             cache_dir: str | None = None) -> SubwordSource:
        from embcache.cache.subword import TOKENIZER_NAME, load_subword

        table = load_subword(path, tokenizer, cache_dir=cache_dir)
        own = TokenizerSettings(filters="", lower=False, split="", name=TOKENIZER_NAME)
        return cls(VectorsInfo(**table.describe()), replace(settings, tokenizer=own),
                   str(table.entry), table.identity())

    def record(self) -> dict[str, dict | None]:
        return {"encoder": None, "subword": self.identity}

    def _load(self):
        from embcache.cache.embed import SubwordEmbedder
        from embcache.cache.subword import SubwordTable

        return SubwordEmbedder(SubwordTable(self.entry), self.settings)


@dataclass(eq=False)
class EncoderSource(EmbeddingSource):
    """A frozen transformer encoder through keras-hub (:mod:`embcache.cache.encoder`). Loading
    it reads the weights (its identity needs them); the process that loaded it keeps it."""

    kind: ClassVar[str] = "encoder"
    argument: ClassVar[str] = "encoder"
    ref: Any = None  # embcache.cache.encoder.EncoderRef
    identity: dict = field(default_factory=dict)

    @classmethod
    def claims(cls, args: SourceArgs) -> bool:
        return args.encoder is not None

    @classmethod
    def wrote(cls, meta: StoreMeta) -> bool:
        return meta.encoder is not None

    @classmethod
    def open(cls, args: SourceArgs, settings: EmbedSettings) -> EncoderSource:
        _no_word_options(args, settings, "a transformer encoder")
        if args.tokenizer is not None:
            raise VectorsError("`tokenizer=` is for a static subword table file; an encoder uses "
                               "its own tokenizer")
        return cls.load(str(args.encoder), settings, batch=args.encoder_batch,
                        cache_dir=args.cache_dir, precision=args.precision)

    @classmethod
    def reopen(cls, meta: StoreMeta, args: SourceArgs) -> EncoderSource:
        # At the precision that encoded the store (older stores: float32), whatever runs here.
        precision = str((meta.encoder or {}).get("precision", "float32"))
        return cls.load(str(args.encoder), meta.settings, cache_dir=args.cache_dir,
                        precision=precision)

    @classmethod
    def load(cls, spec: str, settings: EmbedSettings, *, batch: int = ENCODER_BATCH,
             cache_dir: str | None = None, precision: str = "float32") -> EncoderSource:
        from embcache.cache.encoder import Encoder, require_keras_hub, resolve

        require_keras_hub()
        ref = resolve(spec, max_len=settings.max_len, batch_size=batch, cache_dir=cache_dir,
                      truncating=settings.truncating, precision=precision)
        enc = Encoder(ref)
        identity = enc.identity()
        info = VectorsInfo(fingerprint=identity["fingerprint"], dim=enc.dim,
                           vocab_size=enc.vocab_size, source=Path(spec).name or spec)
        source = cls(info, replace(settings, max_len=identity["max_len"]), ref, identity)
        source._loaded = source._embedder(enc)
        return source

    def record(self) -> dict[str, dict | None]:
        return {"encoder": self.identity, "subword": None}

    def _load(self):
        from embcache.cache.encoder import Encoder

        return self._embedder(Encoder(self.ref))

    def _embedder(self, enc):
        from embcache.cache.embed import EncoderEmbedder

        return EncoderEmbedder(enc, self.settings)


def _no_word_options(args: SourceArgs, settings: EmbedSettings, what: str) -> None:
    """Refuse the options that only word vectors have, for a source without them."""
    if settings.oov != "zero":
        raise VectorsError(f"`oov={settings.oov}` applies to word vectors; {what} has no "
                           "out-of-vocabulary words to fill (its tokenizer splits every word "
                           "into known pieces or an unknown token): leave `oov=` out")
    if args.vectors_member is not None or args.vectors_format != "auto":
        raise VectorsError(f"`vectors_member=` and `vectors_format=` apply to word-vectors "
                           f"files, not to {what}")


def open_source(vectors: str | None = None, *, encoder: str | None = None,
                tokenizer: str | None = None, settings: EmbedSettings,
                encoder_batch: int = ENCODER_BATCH, vectors_member: str | None = None,
                vectors_format: str = "auto", cache_dir: str | None = None,
                precision: str = "float32") -> EmbeddingSource:
    """Load word vectors, a static subword table (a folder, or a table file with ``tokenizer``)
    or an encoder, to write a store, and check that ``settings`` mean something for it: the
    first of :data:`SOURCES` that claims the arguments opens them. ``precision``: an encoder's
    forward pass (``"float32"`` or ``"bfloat16"``, resolved by the caller).

    Raises:
        EmbcacheError: neither or both of ``vectors`` and ``encoder``.
        VectorsError: the loader's (a file missing or malformed); ``oov`` other than ``zero``
            for an encoder or subword table (neither has out-of-vocabulary words to fill),
            word-file options for another source.
    """
    if (vectors is None) == (encoder is None):
        raise EmbcacheError("Give either `vectors=` (word vectors or a static subword table) or "
                            "`encoder=` (a transformer encoder), not both and not neither")
    args = SourceArgs(vectors=None if vectors is None else str(vectors), encoder=encoder,
                      tokenizer=tokenizer, vectors_member=vectors_member,
                      vectors_format=vectors_format, encoder_batch=encoder_batch,
                      cache_dir=cache_dir, precision=precision)
    return next(kind for kind in SOURCES if kind.claims(args)).open(args, settings)


def source_for(meta: StoreMeta, *, vectors: str | None = None, encoder: str | None = None,
               tokenizer: str | None = None, cache_dir: str | None = None,
               what: str = "text") -> EmbeddingSource:
    """The source that embedded a store (``meta``: the one of :data:`SOURCES` that wrote it),
    loaded from the file or encoder given and checked by fingerprint, with the store's own
    settings: raw input embedded with it matches what models trained on that store saw.

    Raises:
        EmbcacheError: see :func:`require_arguments`.
        ModelError: the file or encoder given is not the one the store was embedded with.
    """
    require_arguments(meta, vectors=vectors, encoder=encoder, tokenizer=tokenizer, what=what)
    kind = _kind_of(meta)
    source = kind.reopen(meta, SourceArgs(vectors=vectors, encoder=encoder, tokenizer=tokenizer,
                                          cache_dir=cache_dir))
    got, want = source.info.fingerprint, meta.vectors.fingerprint
    if got != want and kind.argument == "encoder":
        raise ModelError(f"Encoder {encoder} (fingerprint {got[:12]}) is not the one the models "
                         f"were trained on ({_trained_on(meta)}, fingerprint {want[:12]})")
    if got != want:
        raise ModelError(f"Vectors {vectors} (fingerprint {got[:12]}) are not the ones the models "
                         f"were trained with ({meta.vectors.source}, fingerprint {want[:12]})")
    return source


def _kind_of(meta: StoreMeta) -> type[EmbeddingSource]:
    return next(kind for kind in SOURCES if kind.wrote(meta))


def _trained_on(meta: StoreMeta) -> str:
    return str(meta.encoder.get("source")) if meta.encoder is not None else meta.vectors.source


def require_arguments(meta: StoreMeta, *, vectors: str | None, encoder: str | None,
                      tokenizer: str | None, what: str = "text") -> None:
    """Whether the arguments name what the store needs, checked before anything loads.

    Raises:
        EmbcacheError: the argument the store needs is missing, or one it cannot use is given.
    """
    kind = _kind_of(meta)
    if kind.argument == "encoder" and encoder is None:
        hint = " (pass `encoder=`, not `vectors=`)" if vectors is not None else ""
        raise EmbcacheError(f"Scoring {what} needs `encoder=`: the encoder the models were "
                            f"trained on ({_trained_on(meta)}){hint}")
    if kind.argument == "vectors" and vectors is None:
        raise EmbcacheError(f"Scoring {what} needs `vectors=`: the file the models were "
                            f"trained with ({meta.vectors.source})")
    if kind is WordVectorsSource and tokenizer is not None:
        raise EmbcacheError("`tokenizer=` is for models trained on a static subword table; these "
                            f"were trained on word vectors ({meta.vectors.source})")
