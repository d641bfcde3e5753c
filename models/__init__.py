"""Embedding-free Keras models: their input is ``(T, dim)`` vectors plus each document's length.

Public surface:

- :func:`register`: make a builder known by name (``@embcache.models.register("my_net")``).
- :func:`inputs`: the two inputs every model takes, ``{"embedded": (None, dim), "lengths": ()}``.
- :func:`names`, :func:`build`, :func:`hyperparameters`, :func:`resolve`: look models up by spec:
  a built-in or registered name, an installed plugin (entry-point group ``embcache.models``) or an
  import string ``package.module:function``.
- :class:`LengthMask`, :class:`MaskedMean`: masking layers a custom model may reuse.

Each built-in model lives in its own module exposing ``build(*, max_len, dim, num_classes,
padding, **hp)``. Every model takes batches of any length ``T`` up to the store's ``max_len``
(each batch is padded to its own length bucket) and masks or pads as it needs. Importing this
package loads no Keras: the layers and built-in models load on first use.
"""

from __future__ import annotations

from embcache.models.registry import (
    ENTRY_POINT_GROUP,
    ModelSource,
    build,
    get,
    hyperparameters,
    names,
    register,
    resolve,
)

__all__ = ["ENTRY_POINT_GROUP", "LengthMask", "MaskedMean", "ModelSource", "build", "get",
           "hyperparameters", "inputs", "names", "register", "resolve"]


def __getattr__(name: str):
    if name in ("inputs", "LengthMask", "MaskedMean"):  # Keras loads only when these are used
        from embcache.models import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
