"""How token vectors are held as rows: the store's dtype (``float16``, ``float32`` or ``int8``).

``float16``/``float32`` rows are the vectors, cast. An ``int8`` row is a vector quantised
symmetrically with its own scale (``scale = max|v| / 127`` as float16, ``q = round(v / scale)``):
the store keeps ``q`` in ``tokens`` and the scale in ``scales``, one per token vector. Between the
store and the model a row travels *packed*: ``dim`` int8 values followed by the scale's two bytes,
so every part of the pipeline that moves rows (block reads, shuffle buffer, length buckets, the
producer's shared memory, the in-memory split) moves one array of ``dim + 2`` bytes per token,
half of float16's. The vectors are dequantised only where the batch is made, in the graph
(:func:`embcache.cache.dataset`), or by :func:`decode_rows` in NumPy: both compute
``float32(q) * float32(scale)``, so the two give identical values.

NumPy only: the store writer, the stream and the scorer share these functions.
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float16", "float32", "int8")
SCALE_BYTES = 2  # a float16 scale, packed after the int8 values
_QMAX = 127


def row_width(dim: int, dtype: str) -> int:
    """Columns of a packed row: ``dim``, plus the scale's bytes for ``int8``."""
    return dim + SCALE_BYTES if dtype == "int8" else dim


def row_dtype(dtype: str) -> np.dtype:
    """NumPy dtype of packed rows (``int8`` rows carry their scale as two int8 columns)."""
    return np.dtype(np.int8 if dtype == "int8" else dtype)


def encode_rows(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """``(n, dim)`` float vectors -> ``(n, row_width)`` packed rows of ``dtype``."""
    if dtype != "int8":
        return np.asarray(vectors, dtype=dtype)
    v = np.asarray(vectors, dtype=np.float32)
    n, dim = v.shape
    scale = (np.abs(v).max(axis=1, initial=0.0) / _QMAX).astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 > 0, s32, 1.0)[:, None]
    out = np.empty((n, dim + SCALE_BYTES), dtype=np.int8)
    # float16 rounding of the scale can push |v| / scale a hair past 127: clip.
    out[:, :dim] = np.clip(np.rint(v / safe), -_QMAX, _QMAX)
    out[:, dim:] = scale.view(np.int8).reshape(n, SCALE_BYTES)
    return out


def split_rows(rows: np.ndarray, dim: int, dtype: str) -> dict[str, np.ndarray]:
    """Packed rows -> the store's arrays: ``{"tokens": ...}`` (and ``"scales"`` for int8)."""
    if dtype != "int8":
        return {"tokens": rows}
    return {"tokens": rows[:, :dim],
            "scales": np.ascontiguousarray(rows[:, dim:]).view(np.float16).reshape(len(rows))}


def join_rows(tokens: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """The store's ``tokens`` (and ``scales``) -> packed rows (a no-op without scales)."""
    if scales is None:
        return tokens
    n, dim = tokens.shape
    out = np.empty((n, dim + SCALE_BYTES), dtype=np.int8)
    out[:, :dim] = tokens
    out[:, dim:] = np.ascontiguousarray(scales, dtype=np.float16).view(np.int8).reshape(n, SCALE_BYTES)
    return out


def id_columns(dtype: str) -> int:
    """Columns an int32 token id takes at the end of a packed row of ``dtype`` (its 4 bytes)."""
    return 4 // row_dtype(dtype).itemsize


def attach_ids(rows: np.ndarray, ids: np.ndarray, dtype: str) -> np.ndarray:
    """Packed rows ``(n, width)`` and their token ids ``(n,)`` -> ``(n, width + id_columns)``:
    each id's int32 bytes appended to its row, so that everything that moves rows (shuffle
    buffer, buckets, the producer's shared memory, the in-memory split) moves the ids with them,
    bit for bit (NumPy and ``tf.gather`` copy bytes; nothing does arithmetic on these columns).
    The dataset splits them off again where the batch is made (:func:`detach_ids`)."""
    k = id_columns(dtype)
    out = np.empty((len(rows), rows.shape[1] + k), dtype=rows.dtype)
    out[:, :rows.shape[1]] = rows
    out[:, rows.shape[1]:] = np.ascontiguousarray(ids, dtype=np.int32).view(rows.dtype).reshape(-1, k)
    return out


def detach_ids(rows: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`attach_ids` for any leading shape: ``(rows, ids int32)``."""
    k = id_columns(dtype)
    ids = np.ascontiguousarray(rows[..., -k:]).view(np.int32)[..., 0]
    return rows[..., :-k], ids


def decode_rows(rows: np.ndarray, dim: int, dtype: str) -> np.ndarray:
    """Packed rows (any leading shape) -> float32 vectors ``(..., dim)``."""
    if dtype != "int8":
        return np.asarray(rows, dtype=np.float32)
    q = rows[..., :dim].astype(np.float32)
    scale = np.ascontiguousarray(rows[..., dim:]).view(np.float16).astype(np.float32)
    return q * scale  # scale: (..., 1)
