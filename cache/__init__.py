"""The embcache store: vectors, tokenizing, corpus readers, the Zarr layout, writing and streaming.

Importing this package loads nothing heavy; TensorFlow is imported only by :mod:`embcache.cache.dataset`.
"""

__version__ = "0.1.0"
