"""Where model builders come from: the built-in registry, ``register`` for code that imports
embcache, installed plugins (the ``embcache.models`` entry-point group), and import strings
(``my_pkg.my_models:build_net``, as uvicorn and gunicorn take them).

A builder is a function ``build(*, max_len, dim, num_classes, padding="pre", **hyperparameters)``
returning a Keras model whose inputs are ``{"embedded": (None, dim), "lengths": ()}`` (see
:func:`embcache.models.layers.inputs`). Its keyword arguments with defaults, apart from the four
given by the store, are its hyperparameters: ``--param`` is checked against them by name.

:func:`resolve` turns a model spec into a :class:`ModelSource`, whose ``record()`` the model card
keeps; :func:`reimport_source` imports what a card names again, so its custom layers are
registered before Keras loads the model (in safe mode). Importing a module runs its code: the
scorer calls it only after the card's checksum has been verified.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from embcache.cache.errors import ModelError

if TYPE_CHECKING:
    import keras

ENTRY_POINT_GROUP = "embcache.models"
STORE_ARGS = ("max_len", "dim", "num_classes", "padding")
BUILTINS = ("cnn", "kim_cnn", "bilstm", "gru", "fasttext", "transformer", "tfidf", "nb")
_REGISTRY: dict[str, Callable] = {}
_loaded = False


Builder = TypeVar("Builder", bound=Callable[..., Any])


@overload
def register(name: Builder) -> Builder: ...


@overload
def register(name: str | None = None) -> Callable[[Builder], Builder]: ...


def register(name: str | Callable | None = None) -> Any:
    """Register a builder under ``name`` (default: the function's name).

    Use as ``@register("my_net")``, ``@register()`` or ``@register``; the name is then accepted by
    ``embcache train --model`` in the process that imported the module (a plugin's entry point
    or an import string reaches other processes).
    """

    if callable(name):  # bare @register
        return register()(name)

    def deco(fn: Builder) -> Builder:
        if not callable(fn):
            raise ModelError(f"register() takes a model builder function. Received: {fn!r}")
        _REGISTRY[name or fn.__name__] = fn
        return fn

    return deco


def load_builtins() -> None:
    """Import every built-in model's module (once): registers their names and, with Keras,
    their layers."""
    global _loaded
    if not _loaded:
        for mod in BUILTINS:  # imported on demand: importing the registry loads no Keras
            importlib.import_module(f"embcache.models.{mod}")
        _loaded = True


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every model name ``--model`` accepts: built-in, registered and installed plugins."""
    load_builtins()
    return sorted(set(_REGISTRY) | set(_entry_points()))


@dataclass(frozen=True)
class ModelSource:
    """A resolved model spec: the builder and where it came from (recorded in the card)."""

    name: str  # the run's default name: registry name, or the import string's function name
    build: Callable = field(repr=False)
    kind: str  # "builtin", "registered", "entry_point" or "import"
    ref: str  # the name or import string as given
    module: str  # the module to import again before loading a saved model

    def record(self) -> dict[str, Any]:
        dist, version = _distribution(self.module)
        return {"kind": self.kind, "ref": self.ref, "module": self.module,
                "distribution": dist, "version": version}

    def hyperparameters(self) -> dict[str, Any]:
        """The builder's hyperparameters and their defaults (recorded in the model card)."""
        sig = inspect.signature(self.build)
        return {k: p.default for k, p in sig.parameters.items()
                if p.default is not inspect.Parameter.empty and k not in STORE_ARGS}

    def check_hparams(self, hparams: dict[str, Any]) -> None:
        """Refuse hyperparameters the builder does not take, by name."""
        known = self.hyperparameters()
        unknown = sorted(set(hparams) - set(known))
        if unknown:
            raise ModelError(f"Model {self.ref!r} has no hyperparameter {unknown[0]!r}; it takes: "
                             f"{', '.join(f'{k}={v}' for k, v in known.items()) or 'none'}")

    def make(self, *, max_len: int, dim: int, num_classes: int, padding: str = "pre",
             **hparams):
        """Build the model, rejecting unknown hyperparameters by name and checking its inputs."""
        self.check_hparams(hparams)
        params = inspect.signature(self.build).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        given = {"max_len": max_len, "dim": dim, "num_classes": num_classes, "padding": padding}
        args = {k: v for k, v in given.items() if takes_any or k in params}
        try:
            model = self.build(**args, **hparams)
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - a user's builder: name it and what it raised
            raise ModelError(f"Model {self.ref!r} failed to build: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from e
        _check_inputs(model, self.ref, dim)
        _check_outputs(model, self.ref, num_classes)
        return model


def _check_outputs(model, ref: str, num_classes: int) -> None:
    """One probability per label: anything else would train (sparse cross-entropy accepts a wider
    output) and be refused only by ``score``, after the run was published."""
    try:
        shape = tuple(model.output_shape)
    except (AttributeError, ValueError):
        shape = ((),)
    if shape and isinstance(shape[0], (tuple, list)):  # several outputs
        raise ModelError(f"Model {ref!r} has several outputs; it must have one, of "
                         f"{num_classes} class probabilities")
    if len(shape) != 2 or shape[-1] != num_classes:
        raise ModelError(f"Model {ref!r} outputs shape {shape[1:]} per document but the store has "
                         f"{num_classes} labels: its last layer must be "
                         f"Dense(num_classes={num_classes}, activation='softmax')")


def _check_inputs(model, ref: str, dim: int) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise ModelError(f"Model {ref!r}: its builder returned {type(model).__name__}, not a "
                         "keras.Model")
    names = input_names(model)
    if "embedded" not in names and "token_ids" in names:  # a lexical model: ids only
        return
    embedded = next((i for i in model.inputs if i.name == "embedded"), None)
    if embedded is None:
        raise ModelError(f"Model {ref!r} has no input named 'embedded'; build its inputs with "
                         "embcache.models.inputs(dim)")
    shape = tuple(embedded.shape[1:])
    if len(shape) != 2 or shape[-1] != dim:
        raise ModelError(f"Model {ref!r}: input 'embedded' has shape {shape}; it must take "
                         f"(any length, dim={dim}) vectors")


def input_names(model) -> tuple[str, ...]:
    """The names of a model's inputs (``embedded``, ``lengths``, ``token_ids``)."""
    return tuple(getattr(i, "name", "") for i in model.inputs)


def takes_token_ids(model) -> bool:
    """Whether a model reads the lexical channel (its inputs include ``token_ids``)."""
    return "token_ids" in input_names(model)


def takes_vectors(model) -> bool:
    """Whether a model reads the vectors (its inputs include ``embedded``)."""
    return "embedded" in input_names(model)


def model_features(model, features: dict) -> dict:
    """The entries of a batch's ``features`` that ``model`` takes: a batch made for a group
    carries ``token_ids`` when any member reads them, and the others are fed without them."""
    names = input_names(model)
    return {k: v for k, v in features.items() if k in names}


def resolve(spec: str | Callable) -> ModelSource:
    """A model spec (a registered or built-in name, an installed plugin's name, or
    ``package.module:function``, or the builder function itself) -> its :class:`ModelSource`.

    Raises:
        ModelError: an unknown name (listing the known ones), a module that cannot be imported,
            or an attribute that is not a function.
    """
    fn: Any
    if callable(spec):  # a builder function given directly (Python API): its import string
        fn = spec
        ref = f"{fn.__module__}:{fn.__qualname__}"
        return ModelSource(name=fn.__name__, build=fn, kind="import", ref=ref, module=fn.__module__)
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"Invalid model {spec!r}. Expected a model name or package.module:function")
    if ":" in spec:
        module, _, attr = spec.partition(":")
        if not module or not attr:
            raise ModelError(f"Invalid model {spec!r}. Expected an import string "
                             "package.module:function")
        mod = import_module(module, f"model {spec!r}")
        fn = mod
        for part in attr.split("."):
            fn = getattr(fn, part, None)
            if fn is None:
                raise ModelError(f"Module {module!r} has no attribute {attr!r} (for `model={spec}`)")
        if not callable(fn):
            raise ModelError(f"{spec} is not a function (a model builder)")
        return ModelSource(name=attr.split(".")[-1], build=fn, kind="import", ref=spec,
                           module=module)
    load_builtins()
    if spec in _REGISTRY:
        fn = _REGISTRY[spec]
        builtin = spec in BUILTINS and fn.__module__ == f"embcache.models.{spec}"
        return ModelSource(name=spec, build=fn, kind="builtin" if builtin else "registered",
                           ref=spec, module=fn.__module__)
    eps = _entry_points()
    if spec in eps:
        ep = eps[spec]
        try:
            fn = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin: one line naming it
            raise ModelError(f"Model plugin {spec!r} ({ep.value}) cannot be loaded: "
                             f"{type(e).__name__}: {e}") from None
        return ModelSource(name=spec, build=fn, kind="entry_point", ref=spec, module=ep.module)
    raise ModelError(f"Unknown model {spec!r}. Known models: {', '.join(names())} (or give an "
                     "import string package.module:function)")


def import_module(module: str, what: str):
    """Import ``module`` or raise one :class:`ModelError` line naming it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ModelError(f"Cannot import module {module!r} for {what}: {e}; install it or put "
                         "its folder on PYTHONPATH") from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed
        raise ModelError(f"Importing module {module!r} for {what} failed: "
                         f"{type(e).__name__}: {e}") from None


def reimport_source(record: dict[str, Any] | None, where: str) -> None:
    """Import the module a model card names (registering its custom layers); built-in models
    need only the built-in modules. Call only on a verified card: the import runs its code."""
    load_builtins()
    if not record or record.get("kind") == "builtin":
        return
    if record.get("kind") == "user" and record.get("module") is None:  # save_run, Keras layers only
        return
    module = record.get("module")
    if not isinstance(module, str) or not module:
        raise ModelError(f"{where}: `model_source.module` is missing or malformed")
    import_module(module, where)


def _distribution(module: str) -> tuple[str | None, str | None]:
    """The installed distribution providing ``module`` and its version (``None`` for a module
    on the path that no distribution installed)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    top = module.split(".")[0]
    dists = packages_distributions().get(top) or []
    if not dists:
        return None, None
    try:
        return dists[0], version(dists[0])
    except PackageNotFoundError:
        return dists[0], None


# The registry's old functional surface, over resolve():
def get(name: str) -> Callable:
    return resolve(name).build


def hyperparameters(name: str) -> dict:
    return resolve(name).hyperparameters()


def build(name: str, *, max_len: int, dim: int, num_classes: int, padding: str = "pre",
          **hparams: Any) -> keras.Model:
    """Build a model by spec, rejecting unknown hyperparameters by name."""
    return resolve(name).make(max_len=max_len, dim=dim, num_classes=num_classes,
                              padding=padding, **hparams)
