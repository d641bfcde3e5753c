"""Training settings: :class:`TrainConfig`, the one home of their defaults and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from embcache.cache.dataset import Batching
from embcache.cache.errors import EmbcacheError, settings_arg
from embcache.cache.precision import check_precision
from embcache.cache.stream import SHUFFLE_DOCS


@dataclass(frozen=True)
class TrainConfig:
    """How ``train`` and ``tune`` train: ``train(config=...)`` takes one, or a dict of these
    fields. Each value is checked where it is given (one line naming the field).

    Attributes:
        epochs: most epochs to train; early stopping on validation accuracy may end sooner.
        batch_size: documents per training step.
        learning_rate: Adam's learning rate (a model's card may set its own).
        patience: epochs without a better validation accuracy before stopping; the best
            epoch's weights are kept.
        seed: seeds the weights, the shuffling and anything random in training.
        shuffle_docs: documents mixed in the shuffle buffer across chunks.
        steps_per_execution: training steps per compiled call (light models run faster).
        length_buckets: batch documents of similar length (padded to their bucket, not to
            ``max_len``); ``False`` pads every batch to ``max_len``.
        memory_mb: memory for the train and val splits held in RAM across epochs; a split
            that does not fit streams from the store. ``0``: always stream.
        strategy: ``"default"`` or ``"multi-worker"`` (``tf.distribute``, TF_CONFIG).
        precision: ``"auto"`` (bfloat16 where the device runs it natively, else float32),
            ``"float32"`` or ``"bfloat16"``.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    seed: int = 0
    shuffle_docs: int = SHUFFLE_DOCS
    # Training steps per compiled call: Keras's per-step Python work (about 1 ms) otherwise caps
    # light models (measured: fasttext 8-12k samples/s at 1, 15-20k at 16; BENCHMARKS.md).
    steps_per_execution: int = 16
    length_buckets: bool = True  # False: every batch padded to max_len (for comparison)
    # Memory for the train and val splits decoded once and served from RAM in every epoch
    # (InMemorySplit); a split that does not fit streams from the store instead. 0: always stream.
    memory_mb: int = 1024
    strategy: str = "default"  # or "multi-worker": tf.distribute.MultiWorkerMirroredStrategy
    # "auto": bfloat16 where the device runs it natively (embcache.cache.precision), else float32
    precision: str = "auto"

    def __post_init__(self) -> None:
        """Each value checked where it is given: one line naming the argument."""
        positive = ("epochs", "batch_size", "patience", "shuffle_docs", "steps_per_execution")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EmbcacheError(f"Invalid value for `{name}`. Expected a positive integer. "
                                    f"Received: {name}={value!r}")
        for name in ("seed", "memory_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise EmbcacheError(f"Invalid value for `{name}`. Expected an integer >= 0. "
                                    f"Received: {name}={value!r}")
        check_precision(self.precision)
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise EmbcacheError(f"Invalid value for `learning_rate`. Expected a positive number. "
                                f"Received: learning_rate={lr!r}")

    def batching(self, train: bool = False) -> Batching:
        """A pass's batching under these settings: the train split's (shuffled, seeded) or an
        evaluation pass's (store order)."""
        if train:
            return Batching(batch_size=self.batch_size, buckets=self.length_buckets, shuffle=True,
                            seed=self.seed, shuffle_docs=self.shuffle_docs)
        return Batching(batch_size=self.batch_size, buckets=self.length_buckets)

    @classmethod
    def of(cls, config: TrainConfig | dict | None) -> TrainConfig:
        """A :class:`TrainConfig` from itself, a dict of its fields or ``None`` (the defaults).

        Raises:
            EmbcacheError: an unknown field, or anything else than those three.
        """
        return cls() if config is None else settings_arg(cls, config, "config")
