"""The original Keras "pretrained word embeddings" network, without its Embedding layer."""

import keras

from models import register
from models.layers import MinLength, head, inputs


def receptive_field(kernel_size: int, pool_size: int) -> int:
    """The shortest input for which the three convolutions and two poolings leave one step."""
    k, p = kernel_size, pool_size
    return p * (k * p + k - 1) + k - 1


@register("cnn")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", filters: int = 128,
          kernel_size: int = 5, pool_size: int = 5, dense: int = 128, dropout: float = 0.0):
    """Three Conv1D(filters, kernel_size) with max pooling, global max pooling, Dense(dense).

    Input ``(T, dim)`` for any ``T``: a batch shorter than the receptive field (149 steps for
    the default sizes) is padded up to it first. At ``T = 1000`` this is the Keras example's
    network (its last pooling, MaxPooling1D(35) over 35 steps, is a global max pooling).
    """
    ins = inputs(dim)
    x = MinLength(receptive_field(kernel_size, pool_size), padding)(ins["embedded"])
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.MaxPooling1D(pool_size)(x)
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.MaxPooling1D(pool_size)(x)
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    return keras.Model(ins, head(x, num_classes, dropout), name="cnn")
