"""The Keras way's own data: texts read again from the corpus, a word index, token-id sequences
and a frozen-embedding matrix, built the way the original Keras example builds them."""

from __future__ import annotations

import numpy as np

from embcache.cache.embed import BlockEmbedder
from embcache.cache.settings import EmbedSettings


def corpus_texts(store, doc_ids: set[str]) -> dict[str, str]:
    """The original texts of ``doc_ids``, read again from the corpus recorded in the store."""
    from embcache.cache.corpus import CorpusSpec, iter_documents

    spec = CorpusSpec.from_dict(store.meta.corpus)
    return {d.doc_id: d.text for d in iter_documents(spec) if d.doc_id in doc_ids}


def token_rows(store, table, texts: list[str]) -> list[np.ndarray]:
    """Vector-table rows of each text's tokens (-2 for out-of-vocabulary), before truncation."""
    emb = BlockEmbedder(table, EmbedSettings(max_len=store.max_len), None)
    return [emb.token_ids(t) for t in texts]


def word_index(rows: list[np.ndarray]) -> dict[int, int]:
    """Table row -> model id (1..V; 0 is padding and out-of-vocabulary, a zero row)."""
    index: dict[int, int] = {}
    for r in rows:
        for x in np.unique(r[r >= 0]).tolist():
            index.setdefault(x, len(index) + 1)
    return index


def id_sequences(store, rows: list[np.ndarray], index: dict[int, int]) -> np.ndarray:
    """Keras ``pad_sequences`` of the ids with the store's padding and truncation."""
    L = store.max_len
    out = np.zeros((len(rows), L), dtype=np.int32)
    for i, r in enumerate(rows):
        r = r[-L:] if store.meta.settings.truncating == "pre" else r[:L]
        ids = np.fromiter((index.get(int(x), 0) for x in r), dtype=np.int32, count=len(r))
        if len(ids):
            if store.padding == "pre":
                out[i, L - len(ids):] = ids
            else:
                out[i, :len(ids)] = ids
    return out


def embedding_matrix(table, index: dict[int, int]) -> np.ndarray:
    matrix = np.zeros((len(index) + 1, table.dim), dtype=np.float32)
    for row, j in index.items():
        matrix[j] = table.vectors[row]
    return matrix


def with_frozen_embedding(body, max_len: int, matrix: np.ndarray):
    """``body`` (an embedding-free model) fed by a frozen ``Embedding(matrix)`` over token ids:
    the baseline embcache replaces. Inputs: ``{"ids": (max_len,) int32, "lengths": () int32}``."""
    import keras

    ids = keras.Input(shape=(max_len,), dtype="int32", name="ids")
    lengths = keras.Input(shape=(), dtype="int32", name="lengths")
    layer = keras.layers.Embedding(matrix.shape[0], matrix.shape[1], trainable=False)
    emb = layer(ids)
    # Set the weights rather than use a Constant initializer: that one would also write the whole
    # matrix into the saved config as JSON text.
    layer.set_weights([matrix])
    return keras.Model({"ids": ids, "lengths": lengths}, body({"embedded": emb, "lengths": lengths}))
