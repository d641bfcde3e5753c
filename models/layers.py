"""Layers shared by the models: inputs, the length mask and masked pooling (all serializable)."""

from __future__ import annotations

import keras
from keras import ops


def inputs(dim: int):
    """The two model inputs every model takes: the embedded sequence, of any length (each batch
    comes padded to its own length bucket), and each document's true length."""
    return {"embedded": keras.Input(shape=(None, dim), name="embedded"),
            "lengths": keras.Input(shape=(), dtype="int32", name="lengths")}


@keras.saving.register_keras_serializable(package="embcache")
class LengthMask(keras.layers.Layer):
    """``(lengths (batch,), embedded (batch, T, dim))`` -> ``(batch, T)`` mask of real tokens.

    ``T`` is the batch's own length. With ``padding="pre"`` the tokens sit at the end of the
    sequence (Keras pad_sequences).
    """

    def __init__(self, padding: str = "pre", **kwargs):
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, lengths, embedded):
        steps = ops.shape(embedded)[1]
        positions = ops.arange(steps)[None, :]
        lengths = ops.cast(lengths, "int32")[:, None]
        if self.padding == "pre":
            return positions >= (steps - lengths)
        return positions < lengths

    def compute_output_shape(self, lengths_shape, embedded_shape):
        return (lengths_shape[0], embedded_shape[1])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="embcache")
class MinLength(keras.layers.Layer):
    """Pads a batch with zero steps, on the padding side, up to ``min_len`` (a network's receptive
    field), and by at least ``extra`` steps (so every document has that much padding beside it,
    whatever its batch's length). The padding is what a longer batch would hold there.

    ``align``: pad further so that ``length - min_len`` is a multiple of ``align`` (a stack of
    poolings' total stride). Valid poolings drop the remainder steps at the end of the grid;
    with ``pre`` padding those are the document's last tokens, and how many depends on the
    batch's length. Aligned, the grid ends on the last step, so every token is read and a
    document's features do not depend on its batch's length.
    """

    def __init__(self, min_len: int, padding: str = "pre", extra: int = 0, align: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        self.min_len, self.padding, self.extra = int(min_len), padding, int(extra)
        self.align = max(1, int(align))

    def _target(self, steps):
        grown = ops.maximum(steps + self.extra, self.min_len)
        return self.min_len + (grown - self.min_len + self.align - 1) // self.align * self.align

    def call(self, x):
        missing = self._target(ops.shape(x)[1]) - ops.shape(x)[1]
        side = [missing, 0] if self.padding == "pre" else [0, missing]
        return ops.pad(x, [[0, 0], side, [0, 0]])

    def compute_output_shape(self, input_shape):
        steps = input_shape[1]
        return (input_shape[0], None if steps is None else int(self._target(steps)),
                input_shape[2])

    def get_config(self):
        return {**super().get_config(), "min_len": self.min_len, "padding": self.padding,
                "extra": self.extra, "align": self.align}


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


@keras.saving.register_keras_serializable(package="embcache")
class WindowMaxPool(keras.layers.Layer):
    """Global max pooling over the output steps whose window of the input holds at least one
    token: ``(features (batch, K, F), lengths (batch,), padded (batch, T, dim)) -> (batch, F)``,
    where ``padded`` is the convolutions' input.

    Output step ``k`` of a stack of valid convolutions and poolings reads input steps
    ``[k * stride, k * stride + field)``. Steps that read padding alone hold the same value for
    every document and appear only when a batch is padded far enough, so pooling them would make
    a document's features depend on its batch's length. ``features`` must be non-negative (after
    a ReLU): excluded steps count as 0, and a document without tokens pools to zeros.
    """

    def __init__(self, stride: int, field: int, padding: str = "pre", **kwargs):
        super().__init__(**kwargs)
        self.stride, self.field, self.padding = int(stride), int(field), padding

    def call(self, features, lengths, padded):
        steps = ops.shape(padded)[1]  # the input of the convolutions, after any MinLength
        start = ops.arange(ops.shape(features)[1])[None, :] * self.stride
        lengths = ops.cast(lengths, "int32")[:, None]
        if self.padding == "pre":  # tokens fill [steps - length, steps)
            keep = start + self.field > steps - lengths
        else:  # tokens fill [0, length)
            keep = start < lengths
        return ops.max(features * ops.cast(keep, features.dtype)[:, :, None], axis=1)

    def compute_output_shape(self, features_shape, lengths_shape, padded_shape):
        return (features_shape[0], features_shape[2])

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "field": self.field,
                "padding": self.padding}
