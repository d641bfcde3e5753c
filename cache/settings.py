"""The settings that decide a store's embedded values (a leaf module: the store's metadata, the
block embedder and the jobs all read these types, and it imports none of them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from embcache.cache.errors import EmbcacheError
from embcache.cache.rows import DTYPES
from embcache.cache.tokenize import TokenizerSettings

PADDINGS = ("pre", "post")
OOV_POLICIES = ("zero", "unk", "mean")
# An encoder's defaults differ from EmbedSettings' (one home; embed_corpus, the CLI and the
# encoder read them): 256 of its own tokens, and a long document keeps its start.
ENCODER_MAX_LEN, ENCODER_TRUNCATING = 256, "post"
# Documents per forward pass of an encoder (embed-corpus --encoder-batch).
ENCODER_BATCH = 16
__all__ = ["DTYPES", "ENCODER_BATCH", "ENCODER_MAX_LEN", "ENCODER_TRUNCATING", "OOV_POLICIES", "PADDINGS",
           "EmbedSettings", "default_settings"]


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides the embedded values; recorded in the store's attributes.
    ``embed_corpus(settings=...)`` takes one, or a dict of these fields.

    Attributes:
        max_len: most tokens kept per document (an encoder's default: 256 of its own tokens).
        padding: ``"pre"`` or ``"post"``: which side of a short document the padding goes
            (as Keras ``pad_sequences``); models read ``lengths``, so it never reaches a result.
        truncating: ``"pre"`` (keep the end of a long document) or ``"post"`` (keep its start).
        oov: the vector of a word without one (word vectors only): ``"zero"``, ``"unk"``
            (one random vector, drawn with ``seed``) or ``"mean"`` (the mean vector).
        dtype: the stored vectors: ``"float16"`` (default), ``"float32"`` or ``"int8"``
            (per-row scaled; a quarter of float32's bytes).
        seed: seeds the ``"unk"`` vector.
        tokenizer: how text becomes words (:class:`TokenizerSettings`: lowercasing, the
            pattern, stripping); a subword table or an encoder brings its own.
    """

    max_len: int = 1000
    padding: str = "pre"
    truncating: str = "pre"
    oov: str = "zero"
    dtype: str = "float16"
    seed: int = 0
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)

    def __post_init__(self) -> None:
        """Each field checked where it is given: one line naming it (as TrainConfig's)."""
        def bad(name: str, expected: str) -> EmbcacheError:
            return EmbcacheError(f"Invalid value for `{name}`. Expected {expected}. "
                                 f"Received: {name}={getattr(self, name)!r}")

        for name in ("max_len", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (name == "max_len"
                                                                         and value < 1):
                raise bad(name, "a positive integer" if name == "max_len" else "an integer")
        for name, choices in (("padding", PADDINGS), ("truncating", PADDINGS),
                              ("oov", OOV_POLICIES), ("dtype", DTYPES)):
            if getattr(self, name) not in choices:
                raise bad(name, f"one of {choices}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokenizer"] = self.tokenizer.to_dict()
        return d


def default_settings(encoder: bool, **given: Any) -> EmbedSettings:
    """:class:`EmbedSettings` with the fields ``given`` (``None``: the default), and an
    encoder's own defaults (:data:`ENCODER_MAX_LEN`, :data:`ENCODER_TRUNCATING`) for an encoder."""
    base: dict[str, Any] = ({"max_len": ENCODER_MAX_LEN, "truncating": ENCODER_TRUNCATING}
                            if encoder else {})
    return EmbedSettings(**{**base, **{k: v for k, v in given.items() if v is not None}})
