"""The optimizer every embcache model trains with: Keras's Adam, with row-sparse updates for
row-sparse gradients.

A gradient that reaches a variable only through ``tf.gather`` (the lexical model's kernel,
:class:`embcache.models.layers.HashedTfidf`: half a million rows, of which a batch touches a few
thousand) arrives as ``tf.IndexedSlices``. Keras's Adam makes it dense and updates every row and
both moment slots on every step; measured on 20 Newsgroups, that was most of a step (50 s an
epoch at batch 32). Here only the touched rows' moments and values are updated (the "lazy" Adam
of TensorFlow Addons' ``LazyAdam``): rows a batch does not touch keep their moments, instead of
decaying them. Dense gradients (every other variable) take Keras's own update unchanged.
"""

from __future__ import annotations

import keras


def sparse_rows(variable, rows):
    """``variable[rows]`` read as only those rows (TensorFlow's ``ResourceGather``), where the
    backend's variable allows it; its gradient stays row-sparse.

    Not ``tf.gather(variable, rows)``: that reads the whole variable first, and a variable once
    updated by a scatter (the lazy Adam of :mod:`embcache.models.optimizers`) is in TensorFlow's
    copy-on-read mode, so each whole read copies it. For the lexical kernel (half a million rows)
    that copy, with its page faults, was most of a training step (profiled: 55% of the time in
    ``ReadVariableOp``'s copy)."""
    import tensorflow as tf

    value = getattr(variable, "value", variable)
    if hasattr(value, "sparse_read"):
        return value.sparse_read(rows)
    return tf.gather(value, rows)


@keras.saving.register_keras_serializable(package="embcache")
class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with lazy row-sparse updates (see the module docstring)."""

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        rows, index = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), index,
                                              tf.shape(rows)[0])
        lr = tf.cast(learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        m_rows = b1 * sparse_rows(m, rows) + (1 - b1) * values  # only these rows are read
        v_rows = b2 * sparse_rows(v, rows) + (1 - b2) * tf.square(values)
        # Keras's TensorFlow optimizer turns IndexedSlices into scatter updates.
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        self.assign_sub(variable, tf.IndexedSlices(
            alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
