"""``make bench-train``: training throughput from the store against its baselines, in one run.

For every registered model, on the same sample of documents (the store's first blocks), each
variant in its own child process (so peak RSS is its own):

- embcache: what ``embcache train`` does: streaming from the store on disk, batches padded to
  their length bucket, made by the producer process, ``steps_per_execution`` as in ``train``;
- keras: the Keras way at its usual shape: the same network behind a frozen Embedding layer over
  the sample's vocabulary, fed token ids padded to ``max_len``, ``fit`` with its defaults;
- keras-spe: the same, with ``train``'s ``steps_per_execution`` (how much of the gain is that);
- ceiling: the same network fed one constant float32 batch of ``max_len`` steps (pure compute
  at the padded shape, ``train``'s ``steps_per_execution``);
- stream (no model): the input pipeline alone, consumed in the graph (``Dataset.reduce``).

``--quality`` instead trains each model (``cnn`` and ``kim_cnn``) on the full train split twice
as ``embcache train`` does, with length buckets and padded to ``max_len``, with the same seed,
split, epochs and early stopping, and reports their accuracies.
"""

from __future__ import annotations

import json
import os
import sys

import click
import numpy as np

from embcache.jobs.bench.keras_way import with_frozen_embedding
from embcache.jobs.train import EpochTimer, TrainConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _token_ids(store, rows: np.ndarray, table):
    """Token-id sequences over the sampled documents' own vocabulary, and the frozen matrix."""
    from embcache.jobs.bench.keras_way import (
        corpus_texts,
        embedding_matrix,
        id_sequences,
        token_rows,
        word_index,
    )

    doc_ids = [str(x) for x in store.array("doc_ids")[:]]
    wanted = [doc_ids[r] for r in rows]
    texts = corpus_texts(store, set(wanted))
    table_rows = token_rows(store, table, [texts[d] for d in wanted])
    index = word_index(table_rows)
    return id_sequences(store, table_rows, index), embedding_matrix(table, index)


def child(variant: str, model_name: str, store_url: str, docs: int, epochs: int,
          batch_size: int) -> dict:
    import time

    import keras
    import tensorflow as tf

    from embcache import models
    from embcache.cache.dataset import make_dataset
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split, read_padded

    store = open_store(store_url, require_labels=True)
    plan = plan_split(store, None).head(-(-docs // store.chunk_docs))  # whole blocks
    rows = np.arange(plan.num_docs)
    spe = TrainConfig().steps_per_execution
    if variant == "stream":
        data = make_dataset(store, split=None, batch_size=batch_size, shuffle=True, plan=plan)
        seconds = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            data.reduce(tf.constant(0), lambda n, batch: n + tf.shape(batch[1])[0])
            seconds.append(time.perf_counter() - t0)
        return {"samples_per_s": len(rows) / sorted(seconds[1:])[(epochs - 1) // 2]}
    keras.utils.set_random_seed(0)
    body = models.build(model_name, max_len=store.max_len, dim=store.dim,
                        num_classes=len(store.label_names), padding=store.padding)
    labels = store.array("labels")[: len(rows)].astype(np.int32)
    lengths = store.array("lengths")[: len(rows)].astype(np.int32)
    if variant == "embcache":
        data = make_dataset(store, split=None, batch_size=batch_size, shuffle=True, plan=plan)
        model, fit_args = body, {"x": data}
    elif variant == "ceiling":
        x = read_padded(store, 0, batch_size).astype(np.float32)
        batch = ({"embedded": x, "lengths": lengths[:batch_size]}, labels[:batch_size])
        data = tf.data.Dataset.from_tensors(batch).repeat(len(rows) // batch_size)
        model, fit_args = body, {"x": data}
    else:  # keras, keras-spe
        from embcache.cache.vectors import open_cached_table

        table = open_cached_table(os.environ["EMBCACHE_BENCH_TABLE"])
        seqs, matrix = _token_ids(store, rows, table)
        model = with_frozen_embedding(body, store.max_len, matrix)
        fit_args = {"x": {"ids": seqs, "lengths": lengths}, "y": labels, "batch_size": batch_size}
        spe = spe if variant == "keras-spe" else 1
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=spe)
    timer = EpochTimer.make()
    model.fit(**fit_args, epochs=epochs, verbose=0, callbacks=[timer])
    per_epoch = sorted(timer.seconds[1:])  # the first epoch includes tracing
    return {"samples_per_s": len(rows) / per_epoch[len(per_epoch) // 2]}


def _quality(store_url: str, model_names: list[str], epochs: int) -> None:
    """Train each model twice as ``embcache train`` does, with and without length buckets (same
    seed, split, epochs and early stopping), and print their accuracies."""
    import tempfile

    from embcache.jobs.bench.common import table
    from embcache.jobs.train import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in model_names:
            for buckets in (True, False):
                config = TrainConfig(epochs=epochs, length_buckets=buckets)
                s = train(store_url, name, os.path.join(tmp, f"{name}-{buckets}"), config=config,
                          progress=False)
                rows.append([name, "length buckets" if buckets else "padded to max_len",
                             f"{s.metrics['val_accuracy']:.4f}", f"{s.metrics['test_accuracy']:.4f}",
                             f"{s.best_epoch} of {s.epochs}", f"{s.samples_per_s:,.0f}",
                             f"{s.seconds:.0f}"])
    click.echo(f"quality: embcache train, up to {epochs} epochs, seed 0, early stopping patience "
               f"{TrainConfig().patience}; val accuracy of the best epoch, test accuracy of it")
    click.echo(table(["model", "batches", "val accuracy", "test accuracy", "best epoch",
                      "train samples/s", "wall s"], rows))


@click.command()
@click.option("--store", "store_url", required=True, help="A store built by embed-corpus.")
@click.option("--vectors", required=True, help="The vectors file the store was built with.")
@click.option("--models", "model_names", default=None,
              help="Comma-separated models [default: every registered model; with --quality: "
                   "cnn,kim_cnn].")
@click.option("--docs", default=2048, show_default=True,
              help="Documents in the sample (rounded up to whole blocks).")
@click.option("--epochs", default=None, type=int,
              help="Epochs per variant, the first a warm-up [default: 3]; with --quality, at most "
                   "this many [default: 10].")
@click.option("--batch-size", default=TrainConfig().batch_size, show_default=True)
@click.option("--rounds", default=3, show_default=True, help="Runs of every variant, interleaved.")
@click.option("--spe-baseline", default="fasttext,cnn", show_default=True,
              help="Models that also run the Keras way with train's steps_per_execution.")
@click.option("--quality", is_flag=True,
              help="Instead of throughput: train each model with and without length buckets "
                   "and compare accuracies.")
@click.option("--child-variant", default=None, hidden=True)
def main(store_url, vectors, model_names, docs, epochs, batch_size, rounds, spe_baseline, quality,
         child_variant):
    """Benchmark training throughput: the store (length buckets) vs the Keras way and the ceiling."""
    if quality:
        _quality(store_url, (model_names or "cnn,kim_cnn").split(","), epochs or 10)
        return
    epochs = epochs or 3
    if child_variant:
        variant, model_name = child_variant.split(":")
        click.echo(json.dumps(child(variant, model_name, store_url, docs, epochs, batch_size)))
        return
    from embcache import models
    from embcache.cache.vectors import load_vectors
    from embcache.jobs.bench.common import median, run_measured, table

    os.environ["EMBCACHE_BENCH_TABLE"] = load_vectors(vectors).cache_path
    names = model_names.split(",") if model_names else models.names()
    plan = [("stream", "-")] + [(v, m) for m in names for v in
                                ("embcache", "keras", "ceiling")
                                + (("keras-spe",) if m in spe_baseline.split(",") else ())]
    results: dict[tuple, list] = {key: [] for key in plan}
    # Rounds interleave every variant of every model, so a slow spell of the machine hits all.
    for _ in range(rounds):
        for variant, model_name in plan:
            _wall, rss, out = run_measured([sys.executable, "-m", "embcache.jobs.bench.train", "--store",
                                            store_url, "--vectors", vectors, "--docs", str(docs),
                                            "--epochs", str(epochs), "--batch-size",
                                            str(batch_size), "--child-variant",
                                            f"{variant}:{model_name}"], env=dict(os.environ))
            sps = json.loads(out.strip().splitlines()[-1])["samples_per_s"]
            results[(variant, model_name)].append((sps, rss))

    def cell(runs):
        return (f"{median([s for s, _ in runs]):,.0f} ({min(s for s, _ in runs):,.0f}-"
                f"{max(s for s, _ in runs):,.0f})")

    def ratio(a, b):
        return f"{median([s for s, _ in a]) / median([s for s, _ in b]):.2f}x"

    rows = []
    for m in names:
        r = {v: results[(v, m)] for v, mm in plan if mm == m}
        rows.append([m, cell(r["embcache"]), cell(r["keras"]), cell(r["ceiling"]),
                     ratio(r["embcache"], r["keras"]), ratio(r["embcache"], r["ceiling"]),
                     f"{ratio(r['embcache'], r['keras-spe'])} ({cell(r['keras-spe'])})"
                     if "keras-spe" in r else "",
                     f"{max(x for _, x in r['embcache']):,.0f} / {max(x for _, x in r['keras']):,.0f}"])
    click.echo(f"train benchmark: the store's first {docs:,}+ documents (whole blocks), batch "
               f"{batch_size}; samples/s: median (range) over {rounds} interleaved rounds of each "
               f"run's median epoch after a warm-up epoch ({epochs} epochs); {os.cpu_count()} cores")
    click.echo(table(["model", "embcache", "Keras way", "ceiling (max_len)", "vs Keras way",
                      "vs ceiling", "vs Keras way with steps_per_execution",
                      "peak RSS MB embcache / Keras"], rows))
    click.echo(f"\ninput pipeline alone (no model): {cell(results[('stream', '-')])} documents/s, "
               f"peak RSS {max(x for _, x in results[('stream', '-')]):,.0f} MB")
    click.echo(store_bytes(store_url))


def store_bytes(store_url: str) -> str:
    """Bytes on disk, and bytes decoded per document in one pass, against layout 1's
    (every document padded to ``max_len``, so ``max_len x dim x itemsize`` decoded)."""
    from embcache.cache.store import bytes_on_disk, open_store

    store = open_store(store_url)
    stats = store.array("chunk_stats")[:]
    rows = store.meta.token_chunk
    item = store.dim * np.dtype(store.dtype).itemsize
    decoded = int((-(-stats[:, 3] // rows) * rows).sum()) * item / store.num_docs
    padded = store.max_len * item
    kept = store.meta.totals.kept_tokens * item / store.num_docs
    size = bytes_on_disk(store_url)
    return (f"store: {size / 1e6:,.1f} MB on disk; decoded per document in one pass "
            f"{decoded / 1e3:,.1f} KB (kept tokens {kept / 1e3:,.1f} KB, the rest is the part-filled "
            f"last chunk of each block) against {padded / 1e3:,.1f} KB in layout 1: "
            f"{decoded / padded:.1%}")


def max_val(run: str) -> float:
    import csv

    with open(os.path.join(run, "history.csv")) as f:
        return max(float(r["val_accuracy"]) for r in csv.DictReader(f))


if __name__ == "__main__":
    main()
