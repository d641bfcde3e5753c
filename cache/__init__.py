"""The embcache store: vectors, tokenizing, corpus readers, the Zarr layout, writing and streaming.

Importing this package loads nothing heavy; TensorFlow is imported on first use, quietly
(:mod:`embcache.cache.tfenv`), by the layer that makes ``tf.data`` datasets
(:mod:`embcache.cache.dataset`) and by the encoder (:mod:`embcache.cache.encoder`).
"""

__version__ = "0.1.0"
