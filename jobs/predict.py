"""``embcache.predict``: a Keras model's predictions for a store's documents, in store order,
joined to their ids (and true labels): what ``model.predict(dataset(...))`` cannot give, since
batches come bucketed by length."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from embcache.cache.errors import StoreError, StrPath
from embcache.cache.store import Store, open_store

if TYPE_CHECKING:
    import pandas as pd


def predict(model, store: Store | StrPath, split: str | None = "test", *, batch_size: int = 64,
            probabilities: bool = False, precision: str | None = None) -> pd.DataFrame:
    """Run ``model`` (a Keras model taking ``embedded`` and ``lengths``, as ``dataset()`` feeds
    it; or a run folder, or a :class:`~embcache.jobs.runs.Run` from :func:`load_run`) over
    ``split`` of ``store`` (``None``: every document) and return a ``pandas.DataFrame``
    in store order: ``doc_id``, ``true_label`` (labelled stores), ``predicted_label`` and
    ``probability``; with ``probabilities``, one ``prob_<label>`` column per label too.

    Memory: one row per document of the split (its class probabilities only with
    ``probabilities``); batches stream as in training. ``precision``: ``None`` runs the model
    as it is; else see :func:`embcache.models.precision.for_scoring`.

    Raises:
        StoreError: a missing, incomplete or damaged store, or an empty split.
        ModelError: the model's inputs or output width do not fit the store.
    """
    import pandas as pd

    from embcache.cache.dataset import Batching, pipeline_errors, streamed_dataset
    from embcache.cache.stream import plan_split
    from embcache.jobs.runs import as_model
    from embcache.models.registry import _check_inputs, _check_outputs

    model = as_model(model)  # a run folder, a loaded Run, or the Keras model itself
    if not isinstance(store, Store):
        store = open_store(store)
    plan = plan_split(store, split)
    if plan.num_docs == 0:
        raise StoreError(f"Store {store.url} has no documents" + (f" in the {split} split"
                                                                  if split else ""))
    if precision is not None:
        from embcache.models.precision import for_scoring

        model = for_scoring(model, precision)[0]
    names = store.label_names
    width = model.output_shape[-1]
    _check_inputs(model, "model", store.dim)
    if names is not None:
        _check_outputs(model, "model", len(names))
    run = predict_all([model], store.dim)  # one trace whatever the buckets' shapes
    ds = streamed_dataset(store, split, batching=Batching(
        batch_size=batch_size, with_labels=store.labelled, with_seq=True,
        with_ids=any_token_ids([model])), plan=plan)
    probs = np.zeros((plan.num_docs, width), np.float32)
    truth = np.full(plan.num_docs, -1, np.int64)
    with pipeline_errors():
        for batch in ds:
            features, labels = batch if store.labelled else (batch, None)
            seq = features.pop("seq").numpy()
            probs[seq] = run(features)[0].numpy()
            if labels is not None:
                truth[seq] = labels.numpy()
    label_of = names if names is not None else [str(i) for i in range(width)]
    top = probs.argmax(axis=1)
    out: dict[str, Any] = {"doc_id": list(doc_ids_in_order(split, store))}
    if store.labelled:
        out["true_label"] = [label_of[i] for i in truth.tolist()]
    out["predicted_label"] = [label_of[i] for i in top.tolist()]
    out["probability"] = probs[np.arange(len(top)), top]
    if probabilities:
        out.update({f"prob_{n}": probs[:, j] for j, n in enumerate(label_of)})
    return pd.DataFrame(out)


def predict_all(models: list, dim: int):
    """One compiled function running every model on a batch of any size and length: traced once,
    whatever shapes the length buckets give (``predict_on_batch`` would trace per shape). Its
    features carry ``token_ids`` when any model takes them (:func:`any_token_ids`); each model
    gets the features it takes."""
    import tensorflow as tf

    from embcache.models.registry import model_features

    spec = {"embedded": tf.TensorSpec([None, None, dim], tf.float32),
            "lengths": tf.TensorSpec([None], tf.int32)}
    if any_token_ids(models):
        spec["token_ids"] = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec])
    def predict(features):
        return [m(model_features(m, features), training=False) for m in models]

    return predict


def any_token_ids(models: list) -> bool:
    """Whether any of ``models`` reads the lexical channel (then batches must carry it)."""
    from embcache.models.registry import takes_token_ids

    return any(takes_token_ids(m) for m in models)


def doc_ids_in_order(split: str | None, store: Store) -> Iterator[int | str]:
    """Document ids in stream order (the store's order, filtered by split), chunk by chunk."""
    return store.split_doc_ids(split)
