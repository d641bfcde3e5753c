"""The settings that decide a store's embedded values (a leaf module: the store's metadata, the
block embedder and the jobs all read these types, and it imports none of them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from embcache.cache.rows import DTYPES
from embcache.cache.tokenize import TokenizerSettings

PADDINGS = ("pre", "post")
OOV_POLICIES = ("zero", "unk", "mean")
__all__ = ["DTYPES", "OOV_POLICIES", "PADDINGS", "EmbedSettings"]


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides the embedded values; recorded in the store's attributes."""

    max_len: int = 1000
    padding: str = "pre"
    truncating: str = "pre"
    oov: str = "zero"
    dtype: str = "float16"
    seed: int = 0
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokenizer"] = self.tokenizer.to_dict()
        return d
