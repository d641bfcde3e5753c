"""Layers shared by the models: inputs, the length mask and masked pooling (all serializable)."""

from __future__ import annotations

import keras
from keras import ops

# Importing the optimizers module registers the optimizer runs are saved with.
from embcache.models.optimizers import sparse_rows


def inputs(dim: int, token_ids: bool = False):
    """The model inputs: the embedded sequence, of any length (each batch comes padded to its
    own length bucket), and each document's true length; with ``token_ids``, also each token's
    id (the lexical channel, ``(T,)`` int32, padded as the vectors are: see
    :mod:`embcache.cache.lexical`). A model that takes ``token_ids`` is fed them by every job;
    it needs a store written with them."""
    ins = {"embedded": keras.Input(shape=(None, dim), name="embedded"),
           "lengths": keras.Input(shape=(), dtype="int32", name="lengths")}
    if token_ids:
        ins["token_ids"] = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    return ins


@keras.saving.register_keras_serializable(package="embcache")
class LengthMask(keras.layers.Layer):
    """``(lengths (batch,), embedded (batch, T, dim))`` -> ``(batch, T)`` mask of real tokens.

    ``T`` is the batch's own length. With ``padding="pre"`` the tokens sit at the end of the
    sequence (Keras pad_sequences).
    """

    def __init__(self, padding: str = "pre", **kwargs):
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, lengths, embedded):
        steps = ops.shape(embedded)[1]
        positions = ops.arange(steps)[None, :]
        lengths = ops.cast(lengths, "int32")[:, None]
        if self.padding == "pre":
            return positions >= (steps - lengths)
        return positions < lengths

    def compute_output_shape(self, lengths_shape, embedded_shape):
        return (lengths_shape[0], embedded_shape[1])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="embcache")
class MinLength(keras.layers.Layer):
    """Pads a batch with zero steps, on the padding side, up to ``min_len`` (a network's receptive
    field), and by at least ``extra`` steps (so every document has that much padding beside it,
    whatever its batch's length). The padding is what a longer batch would hold there.

    ``align``: pad further so that ``length - min_len`` is a multiple of ``align`` (a stack of
    poolings' total stride). Valid poolings drop the remainder steps at the end of the grid;
    with ``pre`` padding those are the document's last tokens, and how many depends on the
    batch's length. Aligned, the grid ends on the last step, so every token is read and a
    document's features do not depend on its batch's length.
    """

    def __init__(self, min_len: int, padding: str = "pre", extra: int = 0, align: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        self.min_len, self.padding, self.extra = int(min_len), padding, int(extra)
        self.align = max(1, int(align))

    def _target(self, steps):
        grown = ops.maximum(steps + self.extra, self.min_len)
        return self.min_len + (grown - self.min_len + self.align - 1) // self.align * self.align

    def call(self, x):
        missing = self._target(ops.shape(x)[1]) - ops.shape(x)[1]
        side = [missing, 0] if self.padding == "pre" else [0, missing]
        return ops.pad(x, [[0, 0], side, [0, 0]])

    def compute_output_shape(self, input_shape):
        steps = input_shape[1]
        return (input_shape[0], None if steps is None else int(self._target(steps)),
                input_shape[2])

    def get_config(self):
        return {**super().get_config(), "min_len": self.min_len, "padding": self.padding,
                "extra": self.extra, "align": self.align}


@keras.saving.register_keras_serializable(package="embcache")
class MaskedMean(keras.layers.Layer):
    """Mean over the real (unmasked) time steps; an empty document gives zeros."""

    def call(self, x, mask):
        m = ops.cast(mask, x.dtype)[:, :, None]
        total = ops.sum(x * m, axis=1)
        return total / ops.maximum(ops.sum(m, axis=1), 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def head(x, num_classes: int, dropout: float = 0.0, *, wide: dict | None = None,
         padding: str = "pre"):
    """The class probabilities of features ``x``. ``wide``: the model's inputs (built with
    ``token_ids=True``): the lexical model's logits (:class:`HashedTfidf`) are added to the
    dense ones before the softmax, and both train jointly (wide and deep)."""
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    # The softmax (and the wide models' sum of logits) in float32 under any policy: a bfloat16
    # model's probabilities and loss stay float32 (embcache.models.precision).
    if wide is None:
        return keras.layers.Dense(num_classes, activation="softmax", name="probabilities",
                                  dtype="float32")(x)
    deep = keras.layers.Dense(num_classes, name="deep_logits")(x)
    lexical = HashedTfidf(num_classes, padding=padding, name="lexical")(wide["token_ids"],
                                                                       wide["lengths"])
    summed = keras.layers.Add(name="logits", dtype="float32")([deep, lexical])
    return keras.layers.Softmax(name="probabilities", dtype="float32")(summed)


@keras.saving.register_keras_serializable(package="embcache")
class WindowMaxPool(keras.layers.Layer):
    """Global max pooling over the output steps whose window of the input holds at least one
    token: ``(features (batch, K, F), lengths (batch,), padded (batch, T, dim)) -> (batch, F)``,
    where ``padded`` is the convolutions' input.

    Output step ``k`` of a stack of valid convolutions and poolings reads input steps
    ``[k * stride, k * stride + field)``. Steps that read padding alone hold the same value for
    every document and appear only when a batch is padded far enough, so pooling them would make
    a document's features depend on its batch's length. ``features`` must be non-negative (after
    a ReLU): excluded steps count as 0, and a document without tokens pools to zeros.
    """

    def __init__(self, stride: int, field: int, padding: str = "pre", **kwargs):
        super().__init__(**kwargs)
        self.stride, self.field, self.padding = int(stride), int(field), padding

    def call(self, features, lengths, padded):
        steps = ops.shape(padded)[1]  # the input of the convolutions, after any MinLength
        start = ops.arange(ops.shape(features)[1])[None, :] * self.stride
        lengths = ops.cast(lengths, "int32")[:, None]
        if self.padding == "pre":  # tokens fill [steps - length, steps)
            keep = start + self.field > steps - lengths
        else:  # tokens fill [0, length)
            keep = start < lengths
        return ops.max(features * ops.cast(keep, features.dtype)[:, :, None], axis=1)

    def compute_output_shape(self, features_shape, lengths_shape, padded_shape):
        return (features_shape[0], features_shape[2])

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "field": self.field,
                "padding": self.padding}


@keras.saving.register_keras_serializable(package="embcache")
class HashedTfidf(keras.layers.Layer):
    """The lexical channel's linear model: ``(token_ids (batch, T), lengths (batch,))`` ->
    ``(batch, num_classes)`` logits of sublinear TF-IDF over hashed unigrams and bigrams.

    Each document's features (:mod:`embcache.cache.lexical`: the same integer hashing as the
    NumPy count) are counted in the graph; a feature kept by :meth:`adapt` weighs
    ``(1 + ln tf) * idf``, the document's vector is L2-normalised, and its logits are the kept
    features' rows of ``kernel``, weighted and summed (a sparse product: only the rows a batch
    touches are read, and their gradient is sparse). Features :meth:`adapt` did not keep weigh
    nothing. ``scale`` multiplies the logits: it is the lexical channel's learning-rate factor
    under Adam (a linear model on L2-normalised features needs weights of ~10, which Adam at
    1e-3 would take thousands of steps to reach).

    ``vocab``, ``idf`` (the training split's document frequencies) are non-trainable weights,
    saved with the model: a run scores new text with the statistics it was trained with. The
    train job sets them (:meth:`adapt`) from one counting pass over the split before the first
    epoch; ``min_df`` and ``max_features`` say which features that pass keeps, as scikit-learn's
    ``TfidfVectorizer`` options of those names do.
    """

    embcache_float32 = True  # float32 under any policy (embcache.models.precision)
    learned = True  # kernel and bias trained by gradient (HashedNaiveBayes: counted instead)

    def __init__(self, num_classes: int, max_features: int = 1 << 19, ngrams: int = 2,
                 padding: str = "pre", scale: float = 10.0, min_df: int = 2, **kwargs):
        kwargs.setdefault("dtype", "float32")  # log, idf and the L2 norm want float32's range
        super().__init__(**kwargs)
        self.num_classes, self.max_features = int(num_classes), int(max_features)
        self.ngrams, self.padding, self.scale = int(ngrams), padding, float(scale)
        self.min_df = int(min_df)

    def build(self, ids_shape, lengths_shape=None):
        from embcache.cache.lexical import BUCKETS

        self.vocab = self.add_weight(shape=(self.max_features,), dtype="int64", trainable=False,
                                     initializer=keras.initializers.Constant(BUCKETS),
                                     name="vocab")
        self.idf = self.add_weight(shape=(self.max_features,), trainable=False,
                                   initializer="zeros", name="idf")
        self.kernel = self.add_weight(shape=(self.max_features, self.num_classes),
                                      initializer="zeros", name="kernel", trainable=self.learned)
        self.bias = self.add_weight(shape=(self.num_classes,), initializer="zeros", name="bias",
                                    trainable=self.learned)
        self.refresh()

    def refresh(self) -> None:
        """(Re)build the hash table from kept feature to its row of ``kernel`` and ``idf``, from
        ``vocab``: :meth:`adapt` and loading call it; call it after assigning ``vocab`` any
        other way (``set_weights``). A table lookup measured 3.0 ms against 11.0 ms for
        ``tf.searchsorted`` over the sorted ``vocab`` (31k features of a batch, 2^19 rows); it
        holds the kept features only (tens of MB at most)."""
        import tensorflow as tf

        from embcache.cache.lexical import BUCKETS

        with tf.init_scope():  # made eagerly, never inside a traced function
            vocab = tf.convert_to_tensor(self.vocab)
            kept = vocab < BUCKETS
            rows = tf.boolean_mask(tf.range(self.max_features, dtype=tf.int64), kept)
            none = tf.constant([-1], tf.int64)  # a table may not be empty; no feature is -1
            self._rows = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.concat([none, tf.boolean_mask(vocab, kept)], 0), tf.concat([none, rows], 0)), -1)

    def load_own_variables(self, store) -> None:
        super().load_own_variables(store)
        self.refresh()

    def adapt(self, vocab, idf) -> None:
        """Set the kept features (sorted bucket ids) and their idf, from
        :meth:`embcache.cache.lexical.DocumentFrequencies.vocabulary`."""
        import numpy as np

        from embcache.cache.lexical import BUCKETS

        n = len(vocab)
        if n > self.max_features:
            raise ValueError(f"{n} features given; this layer holds {self.max_features}")
        v = np.full(self.max_features, BUCKETS, dtype=np.int64)
        w = np.zeros(self.max_features, dtype=np.float32)
        v[:n], w[:n] = vocab, idf
        self.vocab.assign(v)
        self.idf.assign(w)
        self.refresh()

    def call(self, ids, lengths):
        import tensorflow as tf

        from embcache.cache.lexical import _PAIR_MULT, _PAIR_PRIME, BIGRAM_BASE, BUCKETS

        ids = tf.cast(ids, tf.int64)
        batch, steps = tf.shape(ids)[0], tf.shape(ids)[1]
        positions = tf.range(steps)[None, :]
        n = tf.cast(lengths, tf.int32)[:, None]
        real = positions >= steps - n if self.padding == "pre" else positions < n
        doc = tf.broadcast_to(tf.range(batch, dtype=tf.int64)[:, None], tf.shape(ids))
        keys, docs = [tf.boolean_mask(ids % BUCKETS, real)], [tf.boolean_mask(doc, real)]
        if self.ngrams >= 2:
            pair = real[:, 1:] & real[:, :-1]
            key = (BIGRAM_BASE + (ids[:, :-1] * _PAIR_MULT + ids[:, 1:]) % _PAIR_PRIME) % BUCKETS
            keys.append(tf.boolean_mask(key, pair))
            docs.append(tf.boolean_mask(doc[:, 1:], pair))
        combined = tf.concat(docs, 0) * BUCKETS + tf.concat(keys, 0)
        unique, index = tf.unique(combined)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(index, tf.float32), index,
                                              tf.shape(unique)[0])
        row = self._rows.lookup(unique % BUCKETS)  # -1: a feature adapt() did not keep
        kept = row >= 0  # only kept features' rows are read, so only theirs are updated
        row = tf.cast(tf.boolean_mask(row, kept), tf.int32)
        owner = tf.cast(tf.boolean_mask(unique, kept) // BUCKETS, tf.int32)
        weight = (1.0 + tf.math.log(tf.boolean_mask(counts, kept))) * sparse_rows(self.idf, row)
        norm = tf.math.unsorted_segment_sum(weight * weight, owner, batch)
        weight = weight * tf.gather(tf.math.rsqrt(tf.maximum(norm, 1e-12)), owner)
        logits = tf.math.unsorted_segment_sum(
            weight[:, None] * sparse_rows(self.kernel, row), owner, batch)
        return self.scale * (logits + self.bias)

    def compute_output_shape(self, ids_shape, lengths_shape=None):
        return (ids_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "max_features": self.max_features, "ngrams": self.ngrams,
                "padding": self.padding, "scale": self.scale, "min_df": self.min_df}


@keras.saving.register_keras_serializable(package="embcache")
class HashedNaiveBayes(HashedTfidf):
    """Multinomial naive Bayes over :class:`HashedTfidf`'s features (the same hashed n-grams and
    L2-normalised sublinear TF-IDF weights): ``kernel`` holds ``log P(feature | class)``, each
    class's summed weights smoothed by ``alpha`` (scikit-learn's ``MultinomialNB``), and ``bias``
    the log prior of the classes.

    Fitted by counting, not by gradient: it has no trainable weights. The train job sets them
    (:meth:`fit_counts`) from one pass over the training split after :meth:`adapt`
    (:func:`embcache.cache.lexical.class_sums`); its epochs only validate it. Its errors differ
    from a discriminative model's on the same features, which is what an ensemble wants.
    """

    learned = False

    def __init__(self, num_classes: int, alpha: float = 0.01, **kwargs):
        kwargs.setdefault("scale", 1.0)
        super().__init__(num_classes, **kwargs)
        self.alpha = float(alpha)

    def fit_counts(self, sums, class_docs) -> None:
        """Set ``kernel`` and ``bias`` from each kept feature's summed weights per class
        ``(features, classes)`` (rows in :meth:`adapt`'s order) and each class's documents."""
        import numpy as np

        sums = np.asarray(sums, dtype=np.float64)
        kernel = np.zeros((self.max_features, self.num_classes), dtype=np.float32)
        smoothed = sums + self.alpha
        kernel[:len(sums)] = np.log(smoothed) - np.log(smoothed.sum(axis=0))
        docs = np.asarray(class_docs, dtype=np.float64)
        total = max(docs.sum(), 1.0)
        # A class without training documents gets a prior of 1e-9, not log(0) = -inf.
        prior = np.maximum(docs / total, 1e-9)
        self.kernel.assign(kernel)
        self.bias.assign(np.log(prior).astype(np.float32))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}

# Every built-in model (and the layers and optimizer they register with Keras) loads with the
# layers: the first import of Keras may have come from here (embcache's hook on Keras's import
# then leaves the built-ins to this line, see embcache._register_with_keras).
from embcache.models.registry import load_builtins  # noqa: E402 - after the layers it imports

load_builtins()
