"""``embcache.save_run``: a model you fitted yourself (on ``dataset()``) becomes a run folder that
``score``, the Scorer and ``embcache runs`` use like one ``embcache train`` made."""

from __future__ import annotations

import shutil
from pathlib import Path

from embcache.cache.errors import EmbcacheError, ModelError, StrPath
from embcache.cache.store import Store, open_store


def save_run(model, store: Store | StrPath, out: StrPath, *, module: str | None = None,
             overwrite: bool = False) -> Path:
    """Save ``model`` (a Keras model, a run folder or a loaded run, trained on ``store``'s
    vectors: inputs ``embedded`` and ``lengths``, one probability per label) into the run
    folder ``out``, with a card recording the store's metadata, so that scoring embeds new
    text as the store did and checks it.

    The card's metrics are the model's accuracy on the store's val and test splits (measured
    here, one pass each); the Scorer's weighted ensemble uses the val accuracy. ``module``: the
    module that defines the model's custom layers, imported before the model is loaded (built
    from Keras layers alone, it needs none). The folder is written beside ``out`` and moved into
    place whole.

    Raises:
        ModelError: the model's inputs or output width do not fit the store.
        EmbcacheError: ``out`` holds a run and ``overwrite`` is false.
    """
    from embcache.jobs.predict import predict
    from embcache.jobs.runs import (
        CARD_FILE,
        MODEL_FILE,
        as_model,
        publish_run,
        store_card_fields,
        write_card,
    )
    from embcache.models.registry import _check_inputs, _check_outputs

    model = as_model(model)  # a run folder or a loaded Run: its model, saved anew
    if module is not None and not isinstance(module, str):
        raise ModelError(f"Invalid value for `module`. Expected a module name. Received: {module!r}")
    if not isinstance(store, Store):
        store = open_store(store, require_labels=True)
    final = Path(out)
    if not overwrite and ((final / CARD_FILE).exists() or (final / MODEL_FILE).exists()):
        raise EmbcacheError(f"Invalid value for `out`: {final} already holds a run; pass "
                            "overwrite=True to replace it")
    ref = f"user:{model.name}"
    _check_inputs(model, ref, store.dim)
    _check_outputs(model, ref, len(store.label_names or ()))
    metrics = {}
    for split in ("val", "test"):
        frame = predict(model, store, split)
        metrics[f"{split}_accuracy"] = float((frame["true_label"] == frame["predicted_label"]).mean())
    stage = final.parent / f".{final.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        model.save(stage / MODEL_FILE)
        card = {**store_card_fields(store), "model": ref,
                "model_source": {"kind": "user", "module": module},
                "hyperparameters": {}, "training": {"by": "the user (embcache.save_run)"},
                "metrics": metrics, "model_bytes": (stage / MODEL_FILE).stat().st_size,
                "parameter_count": int(model.count_params())}
        write_card(stage, card)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    publish_run(stage, final)
    return final
