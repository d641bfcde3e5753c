"""A small Transformer encoder: projection, sinusoidal positions, padding-masked self-attention."""

import keras
import numpy as np
from keras import ops

from embcache.models.layers import LengthMask, MaskedMean, head, inputs
from embcache.models.registry import register


@keras.saving.register_keras_serializable(package="embcache")
class PositionalEncoding(keras.layers.Layer):
    """Adds the fixed sinusoidal encoding of Vaswani et al. (2017), counted from each document's
    first token: the same whatever the batch's padded length (padding before the first token
    with ``pre`` counts negative and is masked anyway)."""

    def __init__(self, padding: str = "pre", **kwargs):
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, x, lengths):
        steps, d = ops.shape(x)[1], x.shape[-1]
        pos = ops.cast(ops.arange(steps), "float32")[None, :]
        if self.padding == "pre":
            pos = pos - ops.cast(steps - ops.cast(lengths, "int32"), "float32")[:, None]
        i = np.arange(d)
        inv_freq = ops.convert_to_tensor((1.0 / np.power(10000.0, (2 * (i // 2)) / d)).astype("float32"))
        angle = pos[:, :, None] * inv_freq[None, None, :]
        even = ops.convert_to_tensor((i % 2 == 0)[None, None, :])
        return x + ops.cast(ops.where(even, ops.sin(angle), ops.cos(angle)), x.dtype)

    def compute_output_shape(self, x_shape, lengths_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="embcache")
class PairMask(keras.layers.Layer):
    """``(batch, T)`` token mask -> ``(batch, T, T)`` attention mask."""

    def call(self, mask):
        return ops.logical_and(mask[:, :, None], mask[:, None, :])


@register("transformer")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", d_model: int = 64,
          heads: int = 2, ff: int = 128, layers: int = 1, dropout: float = 0.1, wide: bool = False):
    ins = inputs(dim, token_ids=wide)
    mask = LengthMask(padding)(ins["lengths"], ins["embedded"])
    attention_mask = PairMask()(mask)
    x = PositionalEncoding(padding)(keras.layers.Dense(d_model)(ins["embedded"]), ins["lengths"])
    for _ in range(layers):
        att = keras.layers.MultiHeadAttention(heads, d_model // heads, dropout=dropout)(
            x, x, attention_mask=attention_mask)
        x = keras.layers.LayerNormalization()(x + att)
        f = keras.layers.Dense(ff, activation="relu")(x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dense(d_model)(f))
    x = MaskedMean()(x, mask)
    probs = head(x, num_classes, dropout, wide=ins if wide else None, padding=padding)
    return keras.Model(ins, probs, name="transformer")
