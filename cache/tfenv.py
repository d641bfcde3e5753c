"""TensorFlow's environment: imported once, without its start-up noise (every job and the Python
API go through :func:`quiet_tensorflow` before their first TensorFlow import)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys

_LOUD = False


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow without its C++ and absl start-up logs ("failed call to cuInit",
    oneDNN and CUDA-driver notices on a CPU machine) unless ``verbose``.

    TensorFlow writes them to file descriptor 2 while it loads and first lists its devices, some
    before ``TF_CPP_MIN_LOG_LEVEL`` is read; so both happen here with that descriptor pointed at
    /dev/null, and later errors still reach the terminal.
    """
    global _LOUD
    _LOUD = _LOUD or verbose  # the CLI's --verbose holds for the later calls of the job
    if _LOUD:
        return
    # Its Python warnings too: "N out of the last N calls ... triggered tf.function retracing"
    # is expected where a group's members change (embcache tune), and says nothing to fix.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()


def is_verbose() -> bool:
    """Whether the job asked for TensorFlow's own logs (the CLI's ``--verbose``)."""
    return _LOUD


@contextlib.contextmanager
def stderr_to_devnull(on: bool = True):
    """File descriptor 2 pointed at /dev/null in the block (``on``): processes started in it
    (a local Dask cluster's workers, which import TensorFlow while they start) keep it so."""
    if not on:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def released_custom_gradients():
    """Run a call that may trace a training step, then drop the gradient functions its trace
    registered globally, which TensorFlow never drops.

    Every trace of a Keras ``train_step`` goes through the optimizer's ``all_reduce``, a
    ``tf.custom_gradient``: in graph mode it registers its gradient function in TensorFlow's
    process-wide gradient registry under a fresh ``CustomGradient-N`` name, and that function
    holds the traced graph (measured: every group of trials in ``embcache tune`` left its graphs
    alive, about 5 MB per fasttext trial). The function is looked up only while the gradient is
    taken, inside the trace, so once the call returns it is not needed again. Training runs in
    one thread, so no other trace can be in flight here. Without TensorFlow's registry (another
    version's internals), this does nothing.
    """
    try:
        from tensorflow.python.framework import ops

        registry = ops._gradient_registry._registry
    except (ImportError, AttributeError):
        yield
        return
    # TensorFlow only adds to the registry (a dict: insertion-ordered), so what a call added is
    # its last entries; a call that traced nothing costs two len() calls.
    before = len(registry)
    try:
        yield
    finally:
        added = list(itertools.islice(reversed(registry), max(len(registry) - before, 0)))
        for key in added:
            if key.startswith("CustomGradient-"):
                registry.pop(key, None)
