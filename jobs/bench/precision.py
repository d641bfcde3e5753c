"""float32 against bfloat16, every built-in model, in one run (``make bench-precision``).

Speed: each model trains on the store's first ``--docs`` train documents, from memory, one
child process per measurement, ``--epochs`` epochs (the first a warm-up: tracing), at
``float32`` and at ``bfloat16`` (asked for explicitly, so that the recurrent models, which
``auto`` keeps float32, are measured too); interleaved over ``--rounds`` rounds; samples/s is
the median epoch after the first. Accuracy (``--seeds``): ``--accuracy-model`` trained on the
whole train split as ``embcache train`` does (``--accuracy-epochs``), at float32 and at
``auto``, test accuracy per seed and their means.
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
MODELS = ("cnn", "kim_cnn", "transformer", "fasttext", "bilstm", "gru")


def say(message: str) -> None:
    print(f"[bench-precision {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child(store_url: str, model_name: str, precision: str, docs: int, epochs: int) -> dict:
    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from embcache import models
    from embcache.cache.held_dataset import hold_split, memory_dataset
    from embcache.cache.precision import resolve_precision
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split
    from embcache.jobs.config import TrainConfig
    from embcache.jobs.fit import EpochTimer
    from embcache.models.precision import build, precision_of

    store = open_store(store_url, require_labels=True)
    full = plan_split(store, "train")
    per_chunk = full.counts.sum(axis=1).cumsum()
    plan = full.head(max(1, int((per_chunk < docs).sum()) + 1))  # whole blocks, about `docs`
    keras.utils.set_random_seed(0)
    model, _ = build(lambda: models.build(model_name, max_len=store.max_len, dim=store.dim,
                                          num_classes=len(store.label_names),
                                          padding=store.padding),
                     resolve_precision(precision), precision)
    config = TrainConfig()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  steps_per_execution=config.steps_per_execution)
    ds = memory_dataset(hold_split(store, plan, "train"), config.batching(train=True))
    timer = EpochTimer.make()
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer])
    per_epoch = sorted(timer.seconds[1:])
    return {"samples_per_s": plan.num_docs / per_epoch[len(per_epoch) // 2],
            "ran": precision_of(model), "docs": plan.num_docs}


def _speed(a) -> dict:
    results: dict = {}
    for r in range(a.rounds):
        for model in a.models.split(","):
            for precision in ("float32", "bfloat16"):
                say(f"round {r + 1}/{a.rounds}: {model} at {precision} ...")
                out = subprocess.run([sys.executable, "-m", "jobs.bench.precision", "--store",
                                      a.store, "--docs", str(a.docs), "--epochs", str(a.epochs),
                                      "--child", model, precision],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    sys.exit(f"child failed: {out.stderr[-2000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                say(f"  {res['samples_per_s']:,.1f} samples/s ({res['ran']}, {res['docs']} docs)")
                results.setdefault((model, precision), []).append(res["samples_per_s"])
    return results


def _accuracy(a) -> dict:
    import embcache

    out: dict = {}
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for precision in ("float32", "auto"):
            say(f"accuracy: {a.accuracy_model} seed {seed} at {precision} ...")
            s = embcache.train(a.store, a.accuracy_model, f"{a.out}/{a.accuracy_model}-{precision}-{seed}",
                               config={"seed": seed, "epochs": a.accuracy_epochs,
                                       "precision": precision}, overwrite=True)
            say(f"  test {s.metrics['test_accuracy']:.4f}, {s.samples_per_s:,.1f} samples/s")
            out.setdefault(precision, []).append((s.metrics["test_accuracy"], s.samples_per_s))
    return out


def main(argv=None) -> int:
    from jobs.bench.common import table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="the seeds run are first-seed ... first-seed + seeds - 1")
    p.add_argument("--accuracy-model", default="kim_cnn")
    p.add_argument("--accuracy-epochs", type=int, default=10)
    p.add_argument("--out", default="bench-out/precision")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.store, a.child[0], a.child[1], a.docs, a.epochs)))
        return 0

    def med(xs):
        return f"{statistics.median(xs):,.1f} ({min(xs):,.1f}-{max(xs):,.1f})"

    speed = _speed(a) if a.rounds else {}
    rows = [[m, med(speed[(m, "float32")]), med(speed[(m, "bfloat16")]),
             f"{statistics.median(speed[(m, 'bfloat16')]) / statistics.median(speed[(m, 'float32')]):.2f}x"]
            for m in a.models.split(",") if (m, "float32") in speed]
    if rows:
        print(table(["model", "float32 samples/s", "bfloat16 samples/s", "ratio"], rows))
    if a.seeds:
        acc = _accuracy(a)
        print(table(["precision", "test accuracy per seed", "mean", "samples/s (median)"],
                    [[k, ", ".join(f"{t:.4f}" for t, _ in v),
                      f"{statistics.mean(t for t, _ in v):.4f}",
                      f"{statistics.median(s for _, s in v):,.1f}"] for k, v in acc.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
