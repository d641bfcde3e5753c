"""A split held in memory: peak RSS and training speed, several ways in one run (``make
bench-held``): the rows filled into a TensorFlow variable's buffer and gathered in the graph
(today, :func:`embcache.cache.held_dataset.hold_split`); the same as it was before, loaded with
4 blocks in flight and its batches made ahead as far as ``tf.data`` autotunes (now one block and
2 batches); NumPy rows gathered in Python (the fallback where that buffer
cannot be had); the rows made one ``tf.constant`` and gathered in the graph (before); and
nothing held, the batches streamed from the store (what training costs without a held split).

Each measurement is a child process of its own (``--child``), so its peak RSS is its own:
it opens the store, builds the model, notes its RSS (the baseline), loads the train split into
memory (:class:`InMemorySplit`), makes the dataset either way and trains ``--epochs`` epochs.
It reports the held rows' bytes, peak RSS over the baseline (``ru_maxrss``: the high-water
mark) as a multiple of them, and samples/s (the median epoch after the first). Variants are
interleaved over ``--rounds`` rounds; medians and ranges are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
VARIANTS = ("variable + graph gather (today)", "numpy gather in Python (fallback)",
            "tf.constant + graph gather (before)", "streamed (nothing held)",
            "variable, 4 blocks in flight, batches autotuned (before)")


def say(message: str) -> None:
    print(f"[bench-held {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def tensor_dataset(held, b):
    """The way before: the rows as one ``tf.constant`` (the copy, and its transient third
    copy), each batch gathered in the graph as today's variable is."""
    import tensorflow as tf

    from embcache.cache.held_dataset import _memory_dataset

    return _memory_dataset(held, b, tf.constant(held.rows))


def child(store_url: str, model_name: str, variant: str, epochs: int) -> dict:
    import resource

    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from embcache import models
    from embcache.cache.dataset import streamed_dataset
    from embcache.cache.held import InMemorySplit
    from embcache.cache.held_dataset import _memory_dataset, hold_split, memory_dataset
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split
    from embcache.jobs.config import TrainConfig
    from embcache.jobs.fit import EpochTimer

    store = open_store(store_url, require_labels=True)
    keras.utils.set_random_seed(0)
    model = models.build(model_name, max_len=store.max_len, dim=store.dim,
                         num_classes=len(store.label_names), padding=store.padding)
    config = TrainConfig()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=config.steps_per_execution)
    plan = plan_split(store, "train")
    base = _rss_mb()
    b = config.batching(train=True)
    if variant == VARIANTS[3]:  # what training costs without a held split: the floor
        held = None
        ds = streamed_dataset(store, "train", batching=b, plan=plan)
    else:
        reads = {"parallel_reads": 4} if variant == VARIANTS[4] else {}
        held = (hold_split if variant in (VARIANTS[0], VARIANTS[4]) else InMemorySplit)(
            store, plan, "train", **reads)
        if variant == VARIANTS[2]:
            ds = tensor_dataset(held, b)
        elif variant == VARIANTS[4]:
            ds = _memory_dataset(held, b, held.buffer, in_flight=None)
        else:
            ds = memory_dataset(held, b)
    timer = EpochTimer.make()
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB -> MB
    per_epoch = sorted(timer.seconds[1:])
    return {"held_mb": held.nbytes / 1e6 if held else 0.0, "peak_over_base_mb": peak - base,
            "samples_per_s": plan.num_docs / per_epoch[len(per_epoch) // 2]}


def main(argv=None) -> int:
    from jobs.bench.common import table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", action="append", required=True, help="a labelled store (repeat)")
    p.add_argument("--model", default="fasttext")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", nargs=2, metavar=("STORE", "VARIANT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.model, a.child[1], a.epochs)))
        return 0
    results: dict = {}
    for r in range(a.rounds):
        for store in a.store:
            for variant in VARIANTS:
                say(f"round {r + 1}/{a.rounds}: {store}, {variant} ...")
                out = subprocess.run([sys.executable, "-m", "jobs.bench.held", "--store", store,
                                      "--model", a.model, "--epochs", str(a.epochs),
                                      "--child", store, variant],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    sys.exit(f"child failed: {out.stderr[-2000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                say(f"  held {res['held_mb']:,.0f} MB, peak over baseline "
                    f"{res['peak_over_base_mb']:,.0f} MB, {res['samples_per_s']:,.0f} samples/s")
                results.setdefault((store, variant), []).append(res)

    def med(xs):
        return f"{statistics.median(xs):,.2f} ({min(xs):,.2f}-{max(xs):,.2f})"

    rows = []
    for store in a.store:
        base_sps = statistics.median(r["samples_per_s"] for r in results[(store, VARIANTS[2])])
        floor = statistics.median(r["peak_over_base_mb"] for r in results[(store, VARIANTS[3])])
        for variant in VARIANTS:
            runs = results[(store, variant)]
            sps = [r["samples_per_s"] for r in runs]
            held = runs[0]["held_mb"]
            over = [r["peak_over_base_mb"] for r in runs]
            rows.append([store, variant, f"{held:,.0f}", med(over),
                         med([o / held for o in over]) if held else "-",
                         med([(o - floor) / held for o in over]) if held else "-",
                         med(sps), f"{statistics.median(sps) / base_sps:.2f}x"])
    print(table(["store", "split", "held MB", "peak RSS over baseline, MB", "... / held bytes",
                 "(... - streamed's) / held bytes", "samples/s", "speed vs before"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
