"""Layers shared by the models: inputs, the length mask and masked pooling (all serializable)."""

from __future__ import annotations

import keras
from keras import ops


def inputs(max_len: int, dim: int):
    """The two model inputs every model takes: the embedded sequence and its true length."""
    return {"embedded": keras.Input(shape=(max_len, dim), name="embedded"),
            "lengths": keras.Input(shape=(), dtype="int32", name="lengths")}


@keras.saving.register_keras_serializable(package="embcache")
class LengthMask(keras.layers.Layer):
    """``(batch,)`` lengths -> ``(batch, max_len)`` boolean mask of real tokens.

    With ``padding="pre"`` the tokens sit at the end of the sequence (Keras pad_sequences).
    """

    def __init__(self, max_len: int, padding: str = "pre", **kwargs):
        super().__init__(**kwargs)
        self.max_len = max_len
        self.padding = padding

    def call(self, lengths):
        positions = ops.arange(self.max_len)[None, :]
        lengths = ops.cast(lengths, "int32")[:, None]
        if self.padding == "pre":
            return positions >= (self.max_len - lengths)
        return positions < lengths

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.max_len)

    def get_config(self):
        return {**super().get_config(), "max_len": self.max_len, "padding": self.padding}


@keras.saving.register_keras_serializable(package="embcache")
class MaskedMean(keras.layers.Layer):
    """Mean over the real (unmasked) time steps; an empty document gives zeros."""

    def call(self, x, mask):
        m = ops.cast(mask, x.dtype)[:, :, None]
        total = ops.sum(x * m, axis=1)
        return total / ops.maximum(ops.sum(m, axis=1), 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def head(x, num_classes: int, dropout: float = 0.0):
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
