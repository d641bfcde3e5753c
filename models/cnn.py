"""The original Keras "pretrained word embeddings" network, without its Embedding layer."""

import keras

from embcache.models.layers import MinLength, WindowMaxPool, head, inputs
from embcache.models.registry import register


def receptive_field(kernel_size: int, pool_size: int) -> int:
    """The shortest input for which the three convolutions and two poolings leave one step."""
    k, p = kernel_size, pool_size
    return p * (k * p + k - 1) + k - 1


@register("cnn")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre", filters: int = 128,
          kernel_size: int = 5, pool_size: int = 5, dense: int = 128, dropout: float = 0.0,
          edge: int = 0, wide: bool = False):
    """Three Conv1D(filters, kernel_size) with max pooling, global max pooling, Dense(dense).

    Input ``(T, dim)`` for any ``T``: a batch shorter than the receptive field (149 steps for
    the default sizes) is padded up to it first. The Keras example's network, whose last
    pooling (MaxPooling1D(35) over the 35 steps left of 1000) is global, except that the global
    pooling skips the steps that see only padding (:class:`WindowMaxPool`): they appear only in
    batches padded far enough, so a document's features jumped with its batch's length. The
    batch is padded so that its length minus the receptive field is a multiple of the poolings'
    stride (``MinLength(align=...)``): the grid then ends on the last token, whatever the
    batch's length, so no final tokens are dropped and the windows over a document are the
    same in every batch; only windows reaching further into the padding before it appear in
    longer batches. ``edge`` zero steps are kept before every document (on the padding side):
    at ``receptive_field - 1`` (148) no window can reach further, so a document's features do
    not depend on its batch's length at all, at the cost of computing over those steps.
    """
    ins = inputs(dim, token_ids=wide)
    field = receptive_field(kernel_size, pool_size)
    # Aligned to the poolings' stride (pool_size ** 2): every token reaches the global pooling.
    x = padded = MinLength(field, padding, extra=edge,
                           align=pool_size * pool_size)(ins["embedded"])
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.MaxPooling1D(pool_size)(x)
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = keras.layers.MaxPooling1D(pool_size)(x)
    x = keras.layers.Conv1D(filters, kernel_size, activation="relu")(x)
    x = WindowMaxPool(pool_size * pool_size, field, padding)(x, ins["lengths"], padded)
    x = keras.layers.Dense(dense, activation="relu")(x)
    probs = head(x, num_classes, dropout, wide=ins if wide else None, padding=padding)
    return keras.Model(ins, probs, name="cnn")
