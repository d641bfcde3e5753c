"""``make bench-train``: training throughput from the store against three baselines, in one run.

For each model (``cnn``, ``fasttext``), on the same sample of documents, each variant in its own
child process (so peak RSS is its own):

- embcache: streaming from the store on disk (``cache.stream.make_dataset``);
- ceiling: the same model fed one constant in-memory float32 batch (pure compute);
- keras: the same network behind a frozen Embedding layer over the sample's vocabulary, fed ids;
- seed: the whole embedded sample as one float32 NumPy array passed to ``fit``.

``--quality`` instead trains ``cnn`` on the full train split twice, from the store and the Keras
way, with the same split, epochs and early stopping, and reports validation accuracy.
"""

from __future__ import annotations

import json
import os
import sys

import click
import numpy as np

from jobs.train import EpochTimer
from models.keras_way import with_frozen_embedding

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _token_ids(store, rows: np.ndarray, table):
    """Token-id sequences over the sampled documents' own vocabulary, and the frozen matrix."""
    from jobs.bench.keras_way import (
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
    import keras
    import tensorflow as tf

    import models
    from cache.store import open_store
    from cache.stream import StreamPlan, make_dataset

    store = open_store(store_url, require_labels=True)
    n_chunks = -(-docs // store.chunk_docs)
    rows = np.arange(min(docs, store.num_docs))
    keras.utils.set_random_seed(0)
    body = models.build(model_name, max_len=store.max_len, dim=store.dim,
                        num_classes=len(store.label_names), padding=store.attrs["padding"])
    labels = store.array("labels")[: len(rows)].astype(np.int32)
    lengths = store.array("lengths")[: len(rows)].astype(np.int32)
    if variant == "embcache":
        plan = StreamPlan(chunks=np.arange(n_chunks), num_docs=len(rows))
        data = make_dataset(store, split=None, batch_size=batch_size, shuffle=True, plan=plan)
        model, fit_args = body, {"x": data}
    elif variant == "ceiling":
        x = store.array("embedded")[:batch_size].astype(np.float32)
        batch = ({"embedded": x, "lengths": lengths[:batch_size]}, labels[:batch_size])
        data = tf.data.Dataset.from_tensors(batch).repeat(len(rows) // batch_size)
        model, fit_args = body, {"x": data}
    elif variant == "seed":
        x = np.concatenate([store.array("embedded")[i * store.chunk_docs:(i + 1) * store.chunk_docs]
                            for i in range(n_chunks)])[: len(rows)].astype(np.float32)
        model, fit_args = body, {"x": {"embedded": x, "lengths": lengths}, "y": labels,
                                 "batch_size": batch_size}
    elif variant == "quality":
        return _quality_keras_way(store, body, epochs, batch_size)
    else:  # keras
        from cache.vectors import open_cached_table

        table = open_cached_table(os.environ["EMBCACHE_BENCH_TABLE"])
        seqs, matrix = _token_ids(store, rows, table)
        model = with_frozen_embedding(body, store.max_len, matrix)
        fit_args = {"x": {"ids": seqs, "lengths": lengths}, "y": labels, "batch_size": batch_size}
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer.make()
    model.fit(**fit_args, epochs=epochs, verbose=0, callbacks=[timer])
    per_epoch = sorted(timer.seconds[1:])  # the first epoch includes tracing
    return {"samples_per_s": len(rows) / per_epoch[len(per_epoch) // 2]}


def _quality_keras_way(store, body, epochs: int, batch_size: int) -> dict:
    """Train ``body`` the original Keras way (frozen Embedding over the corpus vocabulary, token
    ids) on the store's train split, early-stopping on its val split exactly as ``train`` does."""
    import keras

    from cache.vectors import open_cached_table
    from jobs.train import TrainConfig

    cfg = TrainConfig()
    table = open_cached_table(os.environ["EMBCACHE_BENCH_TABLE"])
    rows = np.arange(store.num_docs)
    seqs, matrix = _token_ids(store, rows, table)
    split = store.array("split")[:]
    labels = store.array("labels")[:].astype(np.int32)
    lengths = store.array("lengths")[:].astype(np.int32)
    model = with_frozen_embedding(body, store.max_len, matrix)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    tr, va = split == 0, split == 1
    hist = model.fit({"ids": seqs[tr], "lengths": lengths[tr]}, labels[tr],
                     validation_data=({"ids": seqs[va], "lengths": lengths[va]}, labels[va]),
                     epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[
                         keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                       patience=cfg.patience,
                                                       restore_best_weights=True)])
    return {"val_accuracy": max(hist.history["val_accuracy"]),
            "epochs_run": len(hist.history["val_accuracy"]), "vocab": int(matrix.shape[0])}


@click.command()
@click.option("--store", "store_url", required=True, help="A store built by embed-corpus.")
@click.option("--vectors", required=True, help="The vectors file the store was built with.")
@click.option("--models", "model_names", default="cnn,fasttext", show_default=True)
@click.option("--docs", default=2048, show_default=True, help="Documents in the sample.")
@click.option("--epochs", default=4, show_default=True, help="Epochs per variant (first is warm-up).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--rounds", default=3, show_default=True, help="Runs of every variant, interleaved.")
@click.option("--quality", "quality_run", default=None,
              help="Instead of throughput: train cnn the Keras way for this many epochs and compare "
                   "with the run folder given (e.g. runs/cnn).")
@click.option("--child-variant", default=None, hidden=True)
def main(store_url, vectors, model_names, docs, epochs, batch_size, rounds, quality_run,
         child_variant):
    """Benchmark training throughput: store streaming vs ceiling, Keras way and seed way."""
    if quality_run:
        from cache.vectors import load_vectors

        os.environ["EMBCACHE_BENCH_TABLE"] = load_vectors(vectors).cache_path
        card = json.loads(open(os.path.join(quality_run, "model.json")).read())
        keras_way = child("quality", card["model"], store_url, docs, card["training"]["epochs"],
                          card["training"]["batch_size"])
        click.echo(f"{card['model']}, same split, up to {card['training']['epochs']} epochs, early "
                   f"stopping patience {card['training']['patience']}:")
        click.echo(f"| way | best val accuracy | epochs run |\n|---|---|---|\n"
                   f"| embcache (streamed from the store, {quality_run}) | "
                   f"{max_val(quality_run):.4f} | {card['training']['epochs_run']} |\n"
                   f"| Keras way (frozen Embedding over {keras_way['vocab']:,} words, token ids) | "
                   f"{keras_way['val_accuracy']:.4f} | {keras_way['epochs_run']} |")
        return
    if child_variant:
        variant, model_name = child_variant.split(":")
        click.echo(json.dumps(child(variant, model_name, store_url, docs, epochs, batch_size)))
        return
    from cache.vectors import load_vectors
    from jobs.bench.common import median, run_measured, table

    os.environ["EMBCACHE_BENCH_TABLE"] = load_vectors(vectors).cache_path
    rows = []
    variants = ("embcache", "ceiling", "keras", "seed")
    for model_name in model_names.split(","):
        results = {v: [] for v in variants}
        # Rounds interleave the variants, so a noisy spell on the machine hits all of them.
        for _ in range(rounds):
            for variant in variants:
                wall, rss, out = run_measured([sys.executable, "-m", "jobs.bench.train", "--store",
                                               store_url, "--vectors", vectors, "--docs", str(docs),
                                               "--epochs", str(epochs), "--batch-size",
                                               str(batch_size), "--child-variant",
                                               f"{variant}:{model_name}"], env=dict(os.environ))
                sps = json.loads(out.strip().splitlines()[-1])["samples_per_s"]
                results[variant].append((sps, rss))
        base = median([s for s, _ in results["embcache"]])
        for variant, runs in results.items():
            sps = median([s for s, _ in runs])
            spread = f"{min(s for s, _ in runs):,.0f}-{max(s for s, _ in runs):,.0f}"
            rows.append([model_name, variant, f"{sps:,.0f}", spread,
                         f"{max(r for _, r in runs):,.0f}",
                         f"{base / sps:.2f}x" if variant != "embcache" else ""])
    click.echo(f"train benchmark: {docs:,} documents, batch {batch_size}; samples/s is the median "
               f"over {rounds} rounds of each round's median epoch ({epochs - 1} after a warm-up "
               f"epoch); {os.cpu_count()} cores")
    click.echo(table(["model", "variant", "samples/s", "range", "peak RSS MB",
                      "embcache / variant"], rows))


def max_val(run: str) -> float:
    import csv

    with open(os.path.join(run, "history.csv")) as f:
        return max(float(r["val_accuracy"]) for r in csv.DictReader(f))


if __name__ == "__main__":
    main()
