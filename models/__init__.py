"""Registry of embedding-free Keras models: their input is ``(T, dim)`` vectors + lengths.

Each model lives in its own module exposing ``build(*, max_len, dim, num_classes, padding, **hp)``
and registers itself here. Every model takes batches of any length ``T`` up to the store's
``max_len`` (each batch is padded to its own length bucket) and masks or pads as it needs.
``get(name)`` raises :class:`ModelError` listing the known names.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from cache.errors import ModelError

_REGISTRY: dict[str, Callable] = {}
_MODULES = ("cnn", "kim_cnn", "bilstm", "gru", "fasttext", "transformer")


def register(name: str):
    """Decorator: register a ``build`` function under ``name``."""

    def deco(fn: Callable) -> Callable:
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"models.{mod}")


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Callable:
    _load_all()
    if name not in _REGISTRY:
        raise ModelError(f"Unknown model {name!r}. Known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def hyperparameters(name: str) -> dict:
    """The model's hyperparameters and their defaults (recorded in the model card)."""
    sig = inspect.signature(get(name))
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k != "padding"}


def build(name: str, *, max_len: int, dim: int, num_classes: int, padding: str = "pre",
          **hparams):
    """Build a registered model, rejecting unknown hyperparameters by name."""
    fn = get(name)
    known = hyperparameters(name)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ModelError(f"Model {name!r} has no hyperparameter {unknown[0]!r}; it takes: "
                         f"{', '.join(f'{k}={v}' for k, v in known.items())}")
    return fn(max_len=max_len, dim=dim, num_classes=num_classes, padding=padding, **hparams)
