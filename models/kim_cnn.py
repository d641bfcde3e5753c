"""Kim (2014): parallel convolutions of several widths, global max pooling, dropout."""

import keras

from models import register
from models.layers import MinLength, head, inputs


@register("kim_cnn")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", filters: int = 100,
          widths: tuple = (3, 4, 5), dropout: float = 0.5):
    ins = inputs(dim)
    x = MinLength(max(int(w) for w in widths), padding)(ins["embedded"])
    pooled = [keras.layers.GlobalMaxPooling1D()(
        keras.layers.Conv1D(filters, int(w), activation="relu")(x))
        for w in widths]
    x = keras.layers.Concatenate()(pooled) if len(pooled) > 1 else pooled[0]
    return keras.Model(ins, head(x, num_classes, dropout), name="kim_cnn")
