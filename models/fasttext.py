"""fastText-style baseline: masked mean of the word vectors and a small dense head."""

import keras

from embcache.models.layers import LengthMask, MaskedMean, head, inputs
from embcache.models.registry import register


@register("fasttext")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", hidden: int = 64,
          dropout: float = 0.0, wide: bool = False):
    ins = inputs(dim, token_ids=wide)
    mask = LengthMask(padding)(ins["lengths"], ins["embedded"])
    x = MaskedMean()(ins["embedded"], mask)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu")(x)
    probs = head(x, num_classes, dropout, wide=ins if wide else None, padding=padding)
    return keras.Model(ins, probs, name="fasttext")
