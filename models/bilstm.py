"""Bidirectional LSTM masked by the stored lengths (padding never enters the state)."""

import keras

from embcache.models.layers import LengthMask, head, inputs
from embcache.models.registry import register


@register("bilstm")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", units: int = 64,
          dropout: float = 0.3, wide: bool = False):
    ins = inputs(dim, token_ids=wide)
    mask = LengthMask(padding)(ins["lengths"], ins["embedded"])
    x = keras.layers.Bidirectional(keras.layers.LSTM(units))(ins["embedded"], mask=mask)
    probs = head(x, num_classes, dropout, wide=ins if wide else None, padding=padding)
    return keras.Model(ins, probs, name="bilstm")
