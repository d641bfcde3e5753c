"""Named pause points, for tests that stop a job at an exact moment (kill -9 after the 20th block,
Ctrl-C while TensorFlow traces) instead of polling for a race they might lose on a fast machine.

Off unless ``EMBCACHE_PAUSE_AT`` is set, as ``<point>`` or ``<point>:<n>`` (the n-th time the job
reaches it; default 1). At that moment the job writes its process id to ``EMBCACHE_PAUSE_FILE``
and waits while the file exists: the test signals or kills it there, or deletes the file to let
it go on. Points: ``embed:block-committed`` (the main process, after a block's commit marker),
``train:tracing-train_step`` and ``train:tracing-test_step`` (inside a compiled step function,
while TensorFlow traces it),
``train:epoch-end`` and ``score:rows-written`` (after a batch of predictions is written).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_SEEN: dict[str, int] = {}


def pause_point(name: str) -> None:
    spec = os.environ.get("EMBCACHE_PAUSE_AT")
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if not nth.isdigit():
        point, nth = spec, "1"
    if point != name:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] != int(nth or 1):
        return
    flag = Path(os.environ.get("EMBCACHE_PAUSE_FILE", "embcache-paused"))
    flag.write_text(str(os.getpid()))
    while flag.exists():
        time.sleep(0.02)
