"""Bidirectional LSTM masked by the stored lengths (padding never enters the state)."""

import keras

from embcache.models.layers import LengthMask, head, inputs
from embcache.models.registry import register


@register("bilstm")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", units: int = 64,
          dropout: float = 0.3):
    ins = inputs(dim)
    mask = LengthMask(padding)(ins["lengths"], ins["embedded"])
    x = keras.layers.Bidirectional(keras.layers.LSTM(units))(ins["embedded"], mask=mask)
    return keras.Model(ins, head(x, num_classes, dropout), name="bilstm")
