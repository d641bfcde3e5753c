"""Models in bfloat16: Keras' ``mixed_bfloat16`` policy where it pays, float32 where it does not.

Under the mixed policy a layer keeps float32 variables and computes in bfloat16. The built-in
models compute their softmax in float32 (their ``probabilities`` layer, and the wide models'
sum of logits and the lexical layer, are float32 whatever the policy), so the loss is float32
too; a model of your own whose output is not float32 gets a float32 ``Activation`` appended.

Per layer kind, from measurements (``make bench-precision``, BENCHMARKS.md), ``auto`` keeps a
model in float32 when it holds a layer kind that runs no faster in bfloat16: recurrent layers
(``LSTM``, ``GRU``, any ``RNN``, ``Bidirectional``; the issue's AMX probe 1.00x, 0.48-0.75x in
an AVX-512 BF16 session's rounds, 0.48x with AMX). On a CPU, only models with a convolution run
mixed (``cnn`` 1.27-1.97x, ``kim_cnn`` 1.10-3.53x with AMX, GloVe to WordLlama): a model whose
work is attention (``transformer``: 0.79x on GloVe, 0.98x on WordLlama with AMX; 0.80x and
1.53x with AVX-512 BF16) or pooling (``fasttext``: 0.91x and 0.89x with AMX, medians of 4
interleaved rounds) stays float32, as its elementwise work, normalisations and reductions
gain nothing from the matrix units. On a GPU every non-recurrent model runs mixed. An explicit
``bfloat16`` runs any model mixed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

from embcache.cache.precision import Precision, resolve_precision

MIXED = "mixed_bfloat16"
RECURRENT_WHY = "recurrent layers run no faster in bfloat16"
NO_CONVOLUTION_WHY = ("without a convolution, a model runs no faster in bfloat16 on a CPU "
                      "(attention, pooling)")


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Layers made in the block take Keras dtype policy ``name`` (``float32`` or
    ``mixed_bfloat16``); the previous global policy comes back after."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def is_recurrent(model) -> bool:
    import keras

    kinds = (keras.layers.RNN, keras.layers.LSTM, keras.layers.GRU, keras.layers.Bidirectional)
    return any(isinstance(layer, kinds) for layer in model._flatten_layers(include_self=False))


def has_convolution(model) -> bool:
    """A convolution layer: the work the CPU's matrix units speed up most (see the module
    docstring)."""
    import keras

    kinds = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.SeparableConv1D)
    return any(isinstance(layer, kinds) for layer in model._flatten_layers(include_self=False))


def slower_in_bfloat16(model, units: str) -> str:
    """Why ``auto`` keeps ``model`` in float32 on ``units`` (see the module docstring), or
    ``""``."""
    if is_recurrent(model):
        return RECURRENT_WHY
    if units != "gpu" and not has_convolution(model):
        return NO_CONVOLUTION_WHY
    return ""


def precision_of(model) -> str:
    """``bfloat16`` when any layer computes in bfloat16, else ``float32``."""
    import keras

    return ("bfloat16" if any(layer.dtype_policy.compute_dtype == "bfloat16"
                              for layer in model._flatten_layers(include_self=False)
                              if not isinstance(layer, keras.layers.InputLayer))
            else "float32")


def _float32_output(model):
    """The model, with a float32 ``Activation`` after an output that is not float32."""
    import keras

    out = model.outputs[0]
    if out.dtype == "float32":
        return model
    probs = keras.layers.Activation("linear", dtype="float32", name="float32_output")(out)
    return keras.Model(model.inputs if not isinstance(model.input, dict) else model.input, probs,
                       name=model.name)


def build(make: Callable[[], object], precision: Precision, asked: str) -> tuple[object, Precision]:
    """``make()`` under ``precision``'s policy; returns the model and the precision it runs in
    (``auto`` keeps a model with a slower layer kind in float32, saying why)."""
    if not precision.mixed:
        with policy("float32"):
            return make(), precision
    with policy(MIXED):
        model = make()
    if precision_of(model) == "float32":  # every layer pins float32 (tfidf): say so
        return model, Precision("float32", "its layers compute in float32", precision.units)
    slower = slower_in_bfloat16(model, precision.units) if asked == "auto" else ""
    if slower:
        with policy("float32"):
            return make(), Precision("float32", f"auto: {slower}", precision.units)
    return _float32_output(model), precision


def _with_policies(config, target: str, keep_float32: set[str]):
    """A serialized model's config with every layer's dtype policy set to ``target``, but for
    the layers named in ``keep_float32``."""
    if isinstance(config, list):
        return [_with_policies(c, target, keep_float32) for c in config]
    if not isinstance(config, dict):
        return config
    out = {}
    for key, value in config.items():
        if (key == "dtype" and isinstance(value, dict) and value.get("class_name") == "DTypePolicy"
                and config.get("name") not in keep_float32):
            value = {**value, "config": {**value["config"], "name": target}}
        out[key] = _with_policies(value, target, keep_float32)
    return out


def converted(model, name: str):
    """A loaded model, computing in ``name`` (``float32`` or ``bfloat16``): the same layers and
    weights (variables are float32 under either policy, so they carry over exactly), each
    layer's dtype policy changed. Going to bfloat16, the output layer and the layers that pin
    float32 (their policy is float32 in a mixed model: the softmax, the lexical layer) stay
    float32. Returns ``model`` itself when it already computes in ``name``."""
    import keras

    if precision_of(model) == name:
        return model
    target = MIXED if name == "bfloat16" else "float32"
    keep = set()
    if name == "bfloat16":
        keep = {layer.name for layer in model._flatten_layers(include_self=False)
                if getattr(layer, "embcache_float32", False)} | {model.layers[-1].name}
    config = _with_policies(json.loads(json.dumps(keras.saving.serialize_keras_object(model))),
                            target, keep)
    new = keras.saving.deserialize_keras_object(config, safe_mode=True)
    # Layer by layer through Keras's own saving hooks (as loading a file does), so a layer
    # that derives state from its weights (HashedTfidf's table) rebuilds it.
    for old, fresh in zip(model._flatten_layers(include_self=False),
                          new._flatten_layers(include_self=False)):
        held: dict = {}
        old.save_own_variables(held)
        fresh.load_own_variables(held)
    return new


def for_scoring(model, asked: str) -> tuple[object, Precision]:
    """A loaded model at the precision scoring runs in. ``auto`` runs a model as it trained,
    but a bfloat16 model in float32 where bfloat16 is not native (so a float32 model scores
    exactly as ``predict`` runs it); ``float32`` or ``bfloat16`` converts it to that."""
    resolved = resolve_precision(asked)
    if asked == "auto":
        if precision_of(model) == "float32":
            return model, Precision("float32", "auto: it trained in float32", resolved.units)
        if resolved.mixed:
            return model, resolved
    return converted(model, resolved.name), resolved
