"""TensorFlow's environment: imported once, without its start-up noise (every job and the Python
API go through :func:`quiet_tensorflow` before their first TensorFlow import)."""

from __future__ import annotations

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
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
