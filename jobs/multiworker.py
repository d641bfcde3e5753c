"""Training across workers: ``tf.distribute.MultiWorkerMirroredStrategy`` over the workers in
``TF_CONFIG``, each reading its own chunks of the store.

Keras 3 (checked on 3.15) cannot yet train a dict-input model under this strategy with public
APIs alone (see :meth:`MultiWorker.build` and :func:`_patch_keras_multi_worker_reduce`), so this
module uses four private names. :func:`check_keras` finds them before any training starts and
fails with one clear line when Keras has moved them; ``tests/test_train.py`` asserts they exist
on the Keras that CI installs, so an upgrade that moves them fails the suite, not a user's run.
Nothing here is imported or patched unless ``--strategy multi-worker`` is asked for, and the
patch only changes how scalar logs are reduced across workers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from embcache.cache.dataset import Batching, streamed_dataset
from embcache.cache.errors import EmbcacheError, StoreError
from embcache.cache.stream import plan_split

STRATEGIES = ("default", "multi-worker")
# The Keras versions whose private names below were read and tested (the patched function's
# behaviour, not only its name, matters): another version still runs if the names exist.
KERAS_CHECKED = "3.15"
PRIVATE_API = (
    "keras.src.backend.tensorflow.trainer.reduce_per_replica",
    "keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker",
    "keras.src.tree.map_structure",
    "keras.Model._symbolic_build",
)


def missing_private_api() -> list[str]:
    """The names in :data:`PRIVATE_API` this Keras lacks (empty when all are there)."""
    import importlib

    missing = []
    for name in PRIVATE_API:
        parts = name.split(".")
        obj = None
        for i in range(len(parts), 0, -1):  # the longest importable module prefix
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            break
        if obj is None:
            missing.append(name)
    return missing


def check_keras() -> None:
    """Raises EmbcacheError when the private Keras names multi-worker training needs are gone."""
    import keras

    missing = missing_private_api()
    if missing:
        raise EmbcacheError(f"`strategy='multi-worker'` needs Keras internals that Keras "
                            f"{keras.__version__} no longer has ({', '.join(missing)}); it was "
                            f"checked with Keras {KERAS_CHECKED}: install keras=={KERAS_CHECKED}.* "
                            "or train with the default strategy")


class MultiWorker:
    """MultiWorkerMirroredStrategy from TF_CONFIG, with explicit sharding by chunk index."""

    def __init__(self, strategy):
        self.strategy = strategy
        resolver = strategy.cluster_resolver
        self.count = int(resolver.cluster_spec().num_tasks("worker"))
        self.index = int(resolver.task_id or 0)
        self.is_chief = self.index == 0

    @classmethod
    def start(cls) -> MultiWorker:
        if "TF_CONFIG" not in os.environ:
            raise EmbcacheError("`strategy='multi-worker'` needs TF_CONFIG describing the workers "
                                "(see the README's 'Training across workers')")
        check_keras()
        import tensorflow as tf

        return cls(tf.distribute.MultiWorkerMirroredStrategy())

    def datasets(self, store, config, read_log: set):
        """This worker's shard of train and val chunks; steps equal on every worker."""
        shards = {s: [plan_split(store, s, (i, self.count)) for i in range(self.count)]
                  for s in ("train", "val")}
        b = config.batch_size
        steps = {s: min(p.num_docs for p in shards[s]) // b for s in shards}
        if min(steps.values()) < 1:
            raise StoreError(f"Store {store.url} is too small for {self.count} workers: each "
                             f"needs at least one batch of {b} train and val documents")
        mine = {s: shards[s][self.index] for s in shards}
        # Each worker feeds global batches of b * workers; the strategy gives it b per step.
        train_ds = streamed_dataset(store, "train", batching=Batching(
            batch_size=b * self.count, shuffle=True, seed=config.seed + self.index,
            shuffle_docs=config.shuffle_docs, repeat=True), plan=mine["train"], read_log=read_log)
        val_ds = streamed_dataset(store, "val", batching=Batching(
            batch_size=b * self.count, repeat=True), plan=mine["val"])
        self.shard_chunks = mine["train"].chunks.tolist()
        return train_ds, val_ds, {"steps_per_epoch": steps["train"],
                                  "validation_steps": steps["val"]}, mine["train"]

    def build(self, model, dataset) -> None:
        """Build the model's state from one local batch before ``fit``.

        Keras 3.x's TF trainer builds a distributed model by ``strategy.reduce``-ing a whole
        input batch, which fails for dict inputs once there are two or more workers ("Attempt to
        convert a value ({'embedded': PerReplica...}) to a Tensor"). Building from a local batch
        first, and skipping that step, gives the same variables without the cross-worker reduce.
        """
        batch = next(iter(dataset.take(1)))
        with self.strategy.scope():
            model._symbolic_build(data_batch=batch)
        if hasattr(model, "_maybe_symbolic_build"):
            model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
        _patch_keras_multi_worker_reduce()

    def record(self, out: Path, read_log: set) -> None:
        """``shards/worker-<i>.json``: the train chunks this worker was given and read."""
        folder = out / "shards"
        folder.mkdir(exist_ok=True)
        (folder / f"worker-{self.index}.json").write_text(json.dumps({
            "worker": self.index, "workers": self.count, "train_chunks": self.shard_chunks,
            "chunks_read": sorted(read_log)}))


def _patch_keras_multi_worker_reduce() -> None:
    """Keras 3.x reduces each step's scalar logs across workers with ``reduce("MEAN", v, axis=0)``,
    which fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions"); its
    train function hard-codes that reduction. Reduce scalars with ``axis=None`` instead: the mean
    of values every worker already shares (metric variables are all-reduced on write)."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_embcache_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._embcache_patched = True  # type: ignore[attr-defined]  # a marker
    tf_trainer.reduce_per_replica = reduce_per_replica
