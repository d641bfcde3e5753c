"""embcache: embed a text corpus once into a Zarr v3 store; train and score many
embedding-free Keras models from it.

The public Python API (everything else is private and may change)::

    import embcache

    store = embcache.open_store("news20.zarr")          # metadata: store.meta, store.label_names
    train_ds = embcache.dataset(store, "train")         # tf.data for your own model.fit
    embcache.embed_corpus("corpus.csv", "glove.txt.gz", "corpus.zarr")
    embcache.train("news20.zarr", "cnn", "runs/cnn")    # or "my_pkg.my_models:build_net"
    scorer = embcache.Scorer(["runs/cnn"], vectors="glove.6B.50d.txt.gz")
    scorer.classify(["a text", "another text"])          # models loaded once, reused
    embcache.predict(my_model, "news20.zarr", "test")    # store order, doc ids, true labels
    embcache.save_run(my_model, "news20.zarr", "runs/mine")  # a run score and Scorer load
    run = embcache.load_run("runs/cnn")                  # verified: run.model, run.card
    embcache.verify("news20.zarr").ok                    # every chunk read and checked
    study = embcache.tune("news20.zarr", "kim_cnn,fasttext",  # an Optuna study (extra: tune)
                          ["dropout=float:0:0.5"], trials=16, out="runs/tune")

Models: :mod:`embcache.models` (``register``, ``inputs``). Errors: every problem a user can fix
raises an :class:`EmbcacheError` subclass with a one-line message.

This package is the ``jobs/api`` folder of the repository (the packaging maps ``cache/``,
``models/`` and ``jobs/`` to ``embcache.cache``, ``embcache.models`` and ``embcache.jobs``).
Importing it loads nothing heavy: each name is imported on first use. It does ask to be told
when Keras is imported (now, if it already is), to register embcache's layers and optimizer
with Keras then: ``keras.saving.load_model("runs/cnn/model.keras")`` works after ``import
embcache`` alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from embcache.cache import __version__

_EXPORTS = {
    "open_store": "embcache.cache.store",
    "Store": "embcache.cache.store",
    "StoreMeta": "embcache.cache.meta",
    "dataset": "embcache.cache.dataset",
    "CorpusSpec": "embcache.cache.corpus",
    "EmbedSettings": "embcache.cache.settings",
    "SplitSettings": "embcache.cache.meta",
    "embed_corpus": "embcache.jobs.embed_corpus",
    "train": "embcache.jobs.train",
    "TrainConfig": "embcache.jobs.config",
    "score": "embcache.jobs.score",
    "Scorer": "embcache.jobs.score",
    "EmbcacheError": "embcache.cache.errors",
    "CorpusError": "embcache.cache.errors",
    "ModelError": "embcache.cache.errors",
    "StoreError": "embcache.cache.errors",
    "VectorsError": "embcache.cache.errors",
    "ChunkError": "embcache.cache.integrity",
    "pipeline_errors": "embcache.cache.dataset",
    "quiet_tensorflow": "embcache.cache.tfenv",
    "verify": "embcache.jobs.verify",
    "tune": "embcache.jobs.tune",
    "best_run": "embcache.jobs.tune_study",
    "predict": "embcache.jobs.predict",
    "save_run": "embcache.jobs.save_run",
    "load_run": "embcache.jobs.runs",
    "runs": "embcache.jobs.compare",
    "Run": "embcache.jobs.runs",
    "GroupResult": "embcache.jobs.train",
    "TrainSummary": "embcache.jobs.train",
    "ScoreSummary": "embcache.jobs.score",
    "EmbedSummary": "embcache.jobs.embed_corpus",
    "VerifyReport": "embcache.cache.verifier",
}

__all__ = [
    "__version__",
    "best_run",
    "ChunkError",
    "CorpusError",
    "CorpusSpec",
    "EmbedSummary",
    "EmbcacheError",
    "EmbedSettings",
    "GroupResult",
    "ModelError",
    "Run",
    "ScoreSummary",
    "Scorer",
    "SplitSettings",
    "Store",
    "StoreError",
    "StoreMeta",
    "TrainConfig",
    "TrainSummary",
    "VectorsError",
    "VerifyReport",
    "dataset",
    "embed_corpus",
    "load_run",
    "open_store",
    "pipeline_errors",
    "predict",
    "quiet_tensorflow",
    "runs",
    "save_run",
    "score",
    "train",
    "tune",
    "verify",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily (below)
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.dataset import dataset, pipeline_errors
    from embcache.cache.errors import (
        CorpusError,
        EmbcacheError,
        ModelError,
        StoreError,
        VectorsError,
    )
    from embcache.cache.integrity import ChunkError
    from embcache.cache.meta import SplitSettings, StoreMeta
    from embcache.cache.settings import EmbedSettings
    from embcache.cache.store import Store, open_store
    from embcache.cache.tfenv import quiet_tensorflow
    from embcache.cache.verifier import VerifyReport
    from embcache.jobs.compare import runs
    from embcache.jobs.config import TrainConfig
    from embcache.jobs.embed_corpus import EmbedSummary, embed_corpus
    from embcache.jobs.predict import predict
    from embcache.jobs.runs import Run, load_run
    from embcache.jobs.save_run import save_run
    from embcache.jobs.score import Scorer, ScoreSummary, score
    from embcache.jobs.train import GroupResult, TrainSummary, train
    from embcache.jobs.tune import tune
    from embcache.jobs.tune_study import best_run
    from embcache.jobs.verify import verify


_SUBPACKAGES = ("cache", "jobs", "models")


def _register_with_keras(_keras: Any = None) -> None:
    """Import the built-in models' modules, which register every embcache layer (and the
    optimizer runs are saved with) with Keras's serialization.

    Not while a module of ``embcache.models`` is itself being imported (it imported Keras:
    ``from embcache.models import inputs`` before any ``import keras``): importing the built-ins
    now would import that half-loaded module. :mod:`embcache.models.layers`, which every
    built-in imports, loads them when it has finished loading."""
    import sys

    from embcache.models.registry import load_builtins

    for name, module in list(sys.modules.items()):
        if (name.startswith("embcache.models.")
                and getattr(getattr(module, "__spec__", None), "_initializing", False)):
            return
    load_builtins()


def _when_keras_loads() -> None:
    # wrapt (a dependency of TensorFlow's, and of ours) calls the hook after `import keras`
    # finishes, or at once if Keras is already imported: importing embcache imports no Keras.
    import wrapt

    wrapt.register_post_import_hook(_register_with_keras, "keras")


_when_keras_loads()


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:  # `import embcache` then `embcache.models.inputs(...)`
        return importlib.import_module(f"embcache.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
