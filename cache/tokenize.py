"""The tokenizer: an exact re-implementation of Keras ``text_to_word_sequence``.

Its settings are a frozen dataclass recorded in every store and model card, so scoring embeds new
text exactly the way the training corpus was embedded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


@dataclass(frozen=True)
class TokenizerSettings:
    """Keras ``text_to_word_sequence`` settings (its defaults)."""

    filters: str = KERAS_FILTERS
    lower: bool = True
    split: str = " "
    name: str = "keras.text_to_word_sequence"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerSettings:
        return cls(**{k: d[k] for k in ("filters", "lower", "split", "name") if k in d})


def make_tokenizer(settings: TokenizerSettings = TokenizerSettings()) -> Callable[[str], list[str]]:
    """A function ``text -> tokens`` equal to Keras ``text_to_word_sequence(text, **settings)``.

    Keras lower-cases, maps every filter character to ``split``, splits on ``split`` and drops
    empty strings. Only ``split`` separates words (``\\r`` or a non-breaking space do not), so this
    uses ``str.split(split)``, not ``str.split()``; all steps run in C.
    """
    table = str.maketrans({c: settings.split for c in settings.filters})
    split, lower = settings.split, settings.lower

    def tokenize(text: str) -> list[str]:
        if lower:
            text = text.lower()
        return list(filter(None, text.translate(table).split(split)))

    return tokenize
