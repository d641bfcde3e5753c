"""Kim (2014): parallel convolutions of several widths, global max pooling, dropout."""

import keras

from embcache.models.layers import MinLength, WindowMaxPool, head, inputs
from embcache.models.registry import register


@register("kim_cnn")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", filters: int = 100,
          widths: tuple = (3, 4, 5), dropout: float = 0.5, wide: bool = False):
    ins = inputs(dim, token_ids=wide)
    widest = max(int(w) for w in widths)
    # Every document gets widest - 1 zero steps beside it, and the max skips windows of padding
    # alone: its features are the same whatever its batch's length.
    x = MinLength(widest, padding, extra=widest - 1)(ins["embedded"])
    pooled = [WindowMaxPool(1, int(w), padding)(
        keras.layers.Conv1D(filters, int(w), activation="relu")(x), ins["lengths"], x)
        for w in widths]
    x = keras.layers.Concatenate()(pooled) if len(pooled) > 1 else pooled[0]
    probs = head(x, num_classes, dropout, wide=ins if wide else None, padding=padding)
    return keras.Model(ins, probs, name="kim_cnn")
