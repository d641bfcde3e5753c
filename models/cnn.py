"""The original Keras "pretrained word embeddings" network, without its Embedding layer."""

import keras

from models import register
from models.layers import head, inputs


@register("cnn")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", filters: int = 128,
          kernel_size: int = 5, pool_size: int = 5, dense: int = 128, dropout: float = 0.0):
    """Three Conv1D(filters, kernel_size) with max pooling, global max pooling, Dense(dense).

    Input ``(max_len, dim)``; needs ``max_len`` >= about 150 for the default kernel/pool sizes.
    """
    ins = inputs(max_len, dim)
    x = ins["embedded"]
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.MaxPooling1D(pool_size)(x)
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.MaxPooling1D(pool_size)(x)
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    return keras.Model(ins, head(x, num_classes, dropout), name="cnn")
