"""``make bench-score``: four models scoring the 20 Newsgroups test split, in one run.

- embcache: ``embcache score`` on the raw test documents (JSON Lines): one embedding pass into a
  scoring store, then the four embedding-free models streaming from it.
- keras: the same four networks, each with its own frozen Embedding over the corpus vocabulary,
  loaded from their own files and fed token ids (the text is tokenized once, to be generous).

Both run end to end (loading models included) in a child process each, so peak RSS is their own.
Untrained weights: throughput and file sizes do not depend on them. Disk is reported for both,
with embedded vectors at the corpus vocabulary and at the full vectors vocabulary.

Warm (one child process, models loaded once, one untimed call each first, then ``--rounds``
rounds with the ways interleaved): an ``embcache.Scorer`` classifying the test texts and the
store's test split, against the Keras way's four models predicting from the same texts
(tokenized and padded to ``max_len`` each call) and from token ids prepared once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODELS = ("cnn", "kim_cnn", "fasttext", "transformer")


def _keras_child(work: Path, store_url: str) -> dict:
    """End to end the Keras way: word index, four models with vectors inside, ids, predictions."""
    t0 = time.perf_counter()
    import keras

    from embcache import models
    from embcache.cache.store import open_store
    from embcache.cache.vectors import open_cached_table
    from jobs.bench.keras_way import id_sequences, token_rows

    models.names()
    store = open_store(store_url)
    docs = [json.loads(line) for line in (work / "test.jsonl").read_text().splitlines()]
    index = {int(k): v for k, v in json.loads((work / "word_index.json").read_text()).items()}
    table = open_cached_table(os.environ["EMBCACHE_BENCH_TABLE"])
    loaded = [keras.saving.load_model(work / "keras" / f"{m}.keras", compile=False) for m in MODELS]
    ids = id_sequences(store, token_rows(store, table, [d["text"] for d in docs]), index)
    lengths = np.count_nonzero(ids, axis=1).astype(np.int32)
    for model in loaded:
        for start in range(0, len(ids), 64):
            model.predict_on_batch({"ids": ids[start:start + 64],
                                    "lengths": lengths[start:start + 64]})
    return {"docs": len(docs), "seconds": time.perf_counter() - t0}


def _warm_child(work: Path, store_url: str, vectors: str, rounds: int) -> dict:
    """Warm, in one process: each way's models loaded once, then timed calls, interleaved."""
    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()
    import keras

    import embcache
    from embcache.cache.store import open_store
    from embcache.cache.vectors import open_cached_table
    from jobs.bench.keras_way import id_sequences, token_rows

    store = open_store(store_url)
    texts = [json.loads(line)["text"] for line in (work / "test.jsonl").read_text().splitlines()]
    index = {int(k): v for k, v in json.loads((work / "word_index.json").read_text()).items()}
    table = open_cached_table(os.environ["EMBCACHE_BENCH_TABLE"])
    scorer = embcache.Scorer([work / "runs" / m for m in MODELS], vectors=vectors,
                             ensemble="mean")
    loaded = [keras.saving.load_model(work / "keras" / f"{m}.keras", compile=False) for m in MODELS]

    def keras_ids(ids):
        lengths = np.count_nonzero(ids, axis=1).astype(np.int32)
        for model in loaded:
            model.predict({"ids": ids, "lengths": lengths}, batch_size=64, verbose=0)

    def keras_texts():
        keras_ids(id_sequences(store, token_rows(store, table, texts), index))

    ids = id_sequences(store, token_rows(store, table, texts), index)
    ways = {"embcache_texts": lambda: scorer.classify(texts),
            "embcache_store": lambda: scorer.classify(store_url, split="test"),
            "keras_texts": keras_texts,
            "keras_ids": lambda: keras_ids(ids)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(rounds + 1):  # round 0 warms up (traces, caches) and is not counted
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
        print(f"warm round {r}/{rounds} done" + (" (warm-up)" if not r else ""), file=sys.stderr,
              flush=True)
    return {"docs": len(texts), "times": times}


def _prepare(work: Path, store_url: str, vectors: str) -> dict:
    """Run folders for embcache, Keras-way model files, the test documents; returns file sizes."""
    from embcache import models
    from embcache.cache.meta import SPLIT_NAMES
    from embcache.cache.store import open_store
    from embcache.cache.vectors import load_vectors
    from embcache.jobs.runs import MODEL_FILE, store_card_fields, write_card
    from jobs.bench.keras_way import (
        corpus_texts,
        embedding_matrix,
        token_rows,
        with_frozen_embedding,
        word_index,
    )

    store = open_store(store_url, require_labels=True)
    table = load_vectors(vectors)
    os.environ["EMBCACHE_BENCH_TABLE"] = table.cache_path
    ids = [str(x) for x in store.array("doc_ids")[:]]
    split = store.array("split")[:]
    labels = store.array("labels")[:]
    texts = corpus_texts(store, set(ids))
    test = [i for i, s in enumerate(split) if s == SPLIT_NAMES.index("test")]
    with open(work / "test.jsonl", "w") as f:
        for i in test:
            f.write(json.dumps({"id": ids[i], "text": texts[ids[i]],
                                "label": store.label_names[labels[i]]}) + "\n")
    index = word_index(token_rows(store, table, [texts[d] for d in ids]))  # corpus vocabulary
    (work / "word_index.json").write_text(json.dumps(index))
    corpus_matrix = embedding_matrix(table, index)
    full_matrix = np.asarray(table.vectors)
    (work / "keras").mkdir()
    (work / "keras_full").mkdir()
    sizes = {"embcache_models": 0, "keras_corpus_vocab": 0, "keras_full_vocab": 0,
             "corpus_vocab": len(index), "full_vocab": table.size}
    for name in MODELS:
        def body(name=name):
            return models.build(name, max_len=store.max_len, dim=store.dim,
                                num_classes=len(store.label_names), padding=store.padding)
        run = work / "runs" / name
        run.mkdir(parents=True)
        body().save(run / MODEL_FILE)
        write_card(run, {**store_card_fields(store), "model": name, "hyperparameters": {}})
        sizes["embcache_models"] += (run / MODEL_FILE).stat().st_size
        for folder, matrix, key in (("keras", corpus_matrix, "keras_corpus_vocab"),
                                    ("keras_full", full_matrix, "keras_full_vocab")):
            path = work / folder / f"{name}.keras"
            with_frozen_embedding(body(), store.max_len, matrix).save(path)
            sizes[key] += path.stat().st_size
    shutil.rmtree(work / "keras_full")
    sizes["vectors_file"] = Path(vectors).stat().st_size
    sizes["test_docs"] = len(test)
    return sizes


@click.command()
@click.option("--store", "store_url", required=True, help="The 20 Newsgroups store.")
@click.option("--vectors", required=True)
@click.option("--repeats", default=3, show_default=True, help="End-to-end runs of each way.")
@click.option("--rounds", default=5, show_default=True, help="Warm rounds (after one warm-up).")
@click.option("--child", "child_dir", default=None, hidden=True)
@click.option("--warm-child", "warm_dir", default=None, hidden=True)
def main(store_url, vectors, repeats, rounds, child_dir, warm_dir):
    """Benchmark scoring four models: one shared embedding pass vs four embedded-vector models."""
    if child_dir:
        click.echo(json.dumps(_keras_child(Path(child_dir), store_url)))
        return
    if warm_dir:
        click.echo(json.dumps(_warm_child(Path(warm_dir), store_url, vectors, rounds)))
        return
    from jobs.bench.common import median, run_measured, table

    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        sizes = _prepare(work, store_url, vectors)
        runs = ",".join(str(work / "runs" / m) for m in MODELS)
        emb, ker = [], []
        click.echo(f"warm: {rounds} rounds in one process ...", err=True)
        _wall, warm_rss, out = run_measured([sys.executable, "-m", "jobs.bench.score",
                                             "--store", store_url, "--vectors", vectors,
                                             "--rounds", str(rounds), "--warm-child", str(work)],
                                            env=dict(os.environ), echo_stderr=True)
        warm = json.loads(out.strip().splitlines()[-1])
        for i in range(repeats):
            click.echo(f"end to end: round {i + 1}/{repeats} ...", err=True)
            wall, rss, _out = run_measured([
                sys.executable, "-m", "embcache.jobs.cli", "score", "-q", "--models", runs, "--input",
                # No --label-column: predictions only, no metrics report or plots, as the Keras
                # way child below computes predictions only.
                str(work / "test.jsonl"), "--id-column", "id", "--ensemble", "mean",
                "--vectors", vectors, "--out", str(work / "p.csv"), "--keep-store",
                str(work / "score.zarr")])
            emb.append((wall, rss))
            store_bytes = sum(f.stat().st_size for f in (work / "score.zarr").rglob("*") if f.is_file())
            shutil.rmtree(work / "score.zarr")
            wall, rss, _out = run_measured([sys.executable, "-m", "jobs.bench.score", "--store",
                                            store_url, "--vectors", vectors, "--child", str(work)],
                                           env=dict(os.environ))
            ker.append((wall, rss))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = sizes["test_docs"]
    e_wall, k_wall = median([w for w, _ in emb]), median([w for w, _ in ker])
    click.echo(f"score benchmark: {n:,} test documents, models {', '.join(MODELS)}, median of "
               f"{repeats}, end to end (process start to exit, predictions only), "
               f"{os.cpu_count()} cores")
    def spread(runs):
        return f"{min(w for w, _ in runs):.1f}-{max(w for w, _ in runs):.1f}"

    click.echo(table(["way", "wall s", "range s", "docs/s", "peak RSS MB", "speed-up"], [
        ["embcache (one embedding pass, 4 embedding-free models)", f"{e_wall:.1f}", spread(emb),
         f"{n / e_wall:,.0f}", f"{max(r for _, r in emb):,.0f}", f"{k_wall / e_wall:.2f}x"],
        ["Keras way (4 models with frozen Embedding, token ids)", f"{k_wall:.1f}", spread(ker),
         f"{n / k_wall:,.0f}", f"{max(r for _, r in ker):,.0f}", "1.00x"]]))
    mb = 1e6
    click.echo("")
    click.echo(table(["disk", "MB", "vs embcache models"], [
        ["embcache: 4 model files", f"{sizes['embcache_models'] / mb:.1f}", "1.0x"],
        ["embcache: + vectors file (shared by all models)", f"{sizes['vectors_file'] / mb:.1f}", ""],
        ["embcache: + scoring store of the test split (temporary)", f"{store_bytes / mb:.1f}", ""],
        [f"Keras way: 4 models, corpus vocabulary ({sizes['corpus_vocab']:,} words)",
         f"{sizes['keras_corpus_vocab'] / mb:.1f}",
         f"{sizes['keras_corpus_vocab'] / sizes['embcache_models']:.1f}x"],
        [f"Keras way: 4 models, full vocabulary ({sizes['full_vocab']:,} words)",
         f"{sizes['keras_full_vocab'] / mb:.1f}",
         f"{sizes['keras_full_vocab'] / sizes['embcache_models']:.1f}x"]]))
    t = warm["times"]
    med = {k: median(v) for k, v in t.items()}
    click.echo("")
    click.echo(f"warm: {warm['docs']:,} test documents, 4 models loaded once per process, median "
               f"of {rounds} interleaved rounds after one warm-up (one process: peak RSS "
               f"{warm_rss:,.0f} MB for both ways' models)")
    labels = {"embcache_texts": "embcache Scorer, texts (tokenize, look up, 4 models)",
              "embcache_store": "embcache Scorer, the store's test split (already embedded)",
              "keras_texts": "Keras way, texts (tokenize, ids padded to max_len, 4 models)",
              "keras_ids": "Keras way, token ids prepared once (4 models)"}
    click.echo(table(["way", "s per call", "range s", "docs/s", "vs Keras way (texts)",
                      "vs Keras way (ids)"],
                     [[labels[k], f"{med[k]:.2f}", f"{min(t[k]):.2f}-{max(t[k]):.2f}",
                       f"{warm['docs'] / med[k]:,.0f}", f"{med['keras_texts'] / med[k]:.2f}x",
                       f"{med['keras_ids'] / med[k]:.2f}x"] for k in labels]))


if __name__ == "__main__":
    main()
