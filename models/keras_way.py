"""The baseline embcache replaces: the same network behind a frozen in-model Embedding layer.

Used to report what a model file would weigh the Keras way, and by the benchmarks.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


def with_frozen_embedding(body, max_len: int, matrix: np.ndarray):
    """``body`` (an embedding-free model) fed by a frozen ``Embedding(matrix)`` over token ids.

    Inputs: ``{"ids": (max_len,) int32, "lengths": () int32}``.
    """
    import keras

    ids = keras.Input(shape=(max_len,), dtype="int32", name="ids")
    lengths = keras.Input(shape=(), dtype="int32", name="lengths")
    layer = keras.layers.Embedding(matrix.shape[0], matrix.shape[1], trainable=False)
    emb = layer(ids)
    # Set the weights rather than use a Constant initializer: that one would also write the whole
    # matrix into the saved config as JSON text.
    layer.set_weights([matrix])
    return keras.Model({"ids": ids, "lengths": lengths}, body({"embedded": emb, "lengths": lengths}))


def saved_bytes(model) -> int:
    """Size of ``model`` saved as a ``.keras`` file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        return os.path.getsize(path)


def embedding_model_bytes(build, vocab_size: int, dim: int, max_len: int, seed: int = 0) -> int:
    """Saved size of ``build()``'s network with a frozen Embedding of ``vocab_size + 1`` rows
    (random values: real vectors do not compress either)."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(vocab_size + 1, dim)).astype(np.float32)
    return saved_bytes(with_frozen_embedding(build(), max_len, matrix))
