"""A small Transformer encoder: projection, sinusoidal positions, padding-masked self-attention."""

import keras
import numpy as np
from keras import ops

from models import register
from models.layers import LengthMask, MaskedMean, head, inputs


@keras.saving.register_keras_serializable(package="embcache")
class PositionalEncoding(keras.layers.Layer):
    """Adds the fixed sinusoidal encoding of Vaswani et al. (2017)."""

    def build(self, input_shape):
        length, d = int(input_shape[1]), int(input_shape[2])
        pos = np.arange(length)[:, None]
        i = np.arange(d)[None, :]
        angle = pos / np.power(10000.0, (2 * (i // 2)) / d)
        table = np.where(i % 2 == 0, np.sin(angle), np.cos(angle)).astype("float32")
        self.table = ops.convert_to_tensor(table[None])

    def call(self, x):
        return x + ops.cast(self.table, x.dtype)


@keras.saving.register_keras_serializable(package="embcache")
class PairMask(keras.layers.Layer):
    """``(batch, T)`` token mask -> ``(batch, T, T)`` attention mask."""

    def call(self, mask):
        return ops.logical_and(mask[:, :, None], mask[:, None, :])


@register("transformer")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", d_model: int = 64,
          heads: int = 2, ff: int = 128, layers: int = 1, dropout: float = 0.1):
    ins = inputs(max_len, dim)
    mask = LengthMask(max_len, padding)(ins["lengths"])
    attention_mask = PairMask()(mask)
    x = PositionalEncoding()(keras.layers.Dense(d_model)(ins["embedded"]))
    for _ in range(layers):
        att = keras.layers.MultiHeadAttention(heads, d_model // heads, dropout=dropout)(
            x, x, attention_mask=attention_mask)
        x = keras.layers.LayerNormalization()(x + att)
        f = keras.layers.Dense(ff, activation="relu")(x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dense(d_model)(f))
    x = MaskedMean()(x, mask)
    return keras.Model(ins, head(x, num_classes, dropout), name="transformer")
