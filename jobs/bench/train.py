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

from embcache.jobs.config import TrainConfig
from embcache.jobs.fit import EpochTimer
from jobs.bench.keras_way import with_frozen_embedding

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
    import time

    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()

    import keras
    import tensorflow as tf

    from embcache import models
    from embcache.cache.dataset import Batching, streamed_dataset
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split, read_padded

    store = open_store(store_url, require_labels=True)
    if docs:
        plan = plan_split(store, None).head(-(-docs // store.chunk_docs))  # whole blocks
        rows = np.arange(plan.num_docs)
    else:  # the whole training split (the Keras way only)
        plan = plan_split(store, "train")
        rows = np.flatnonzero(store.array("split")[:] == 0)
    spe = TrainConfig().steps_per_execution
    if variant == "stream":
        data = streamed_dataset(store, None, batching=Batching(batch_size=batch_size, shuffle=True),
                                plan=plan)
        seconds = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            data.reduce(tf.constant(0), lambda n, batch: n + tf.shape(batch[1])[0])
            seconds.append(time.perf_counter() - t0)
        return {"samples_per_s": len(rows) / sorted(seconds[1:])[(epochs - 1) // 2]}
    keras.utils.set_random_seed(0)
    body = models.build(model_name, max_len=store.max_len, dim=store.dim,
                        num_classes=len(store.label_names), padding=store.padding)
    labels = store.array("labels")[:][rows].astype(np.int32)
    lengths = store.array("lengths")[:][rows].astype(np.int32)
    if variant == "embcache":
        data = streamed_dataset(store, None, batching=Batching(batch_size=batch_size, shuffle=True),
                                plan=plan)
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


def _vals(runs) -> str:
    return ", ".join(f"{r.metrics['val_accuracy']:.3f}" for r in runs)


def _quality(store_url: str, model_names: list[str], epochs: int, seeds: list[int]) -> None:
    """Train the models as ``embcache train`` does, with length buckets and padded to
    ``max_len``, for every seed (each model set in one group per seed and way: a model trained
    in a group is the model trained alone), and compare mean validation accuracies."""
    import statistics
    import tempfile

    from embcache.cache.tfenv import quiet_tensorflow
    from embcache.jobs.train import train_group
    from jobs.bench.common import table

    quiet_tensorflow()
    got: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for buckets in (True, False):
                way = "length buckets" if buckets else "padded to max_len"
                say(f"quality: {', '.join(model_names)} with {way}, seed {seed} ...")
                result = train_group(store_url, model_names, os.path.join(tmp, f"{seed}-{buckets}"),
                                     config=TrainConfig(epochs=epochs, length_buckets=buckets,
                                                        seed=seed), progress=False)
                for name, why in result.failed.items():
                    say(f"  {name} failed: {why}")
                for run in result.runs:
                    got.setdefault((run.model, buckets), []).append(run)
                    say(f"  {run.model}: val {run.metrics['val_accuracy']:.4f} test "
                        f"{run.metrics['test_accuracy']:.4f} (best epoch {run.best_epoch}, "
                        f"{run.seconds:.0f} s)")
    rows = []
    for name in model_names:
        b, p = got.get((name, True), []), got.get((name, False), [])
        if not b or not p:
            continue
        vb = statistics.mean(r.metrics["val_accuracy"] for r in b)
        vp = statistics.mean(r.metrics["val_accuracy"] for r in p)
        tb = statistics.mean(r.metrics["test_accuracy"] for r in b)
        tp = statistics.mean(r.metrics["test_accuracy"] for r in p)
        rows.append([name, f"{vb:.4f} ({_vals(b)})", f"{vp:.4f} ({_vals(p)})",
                     f"{vb - vp:+.4f} ({'within' if abs(vb - vp) <= 0.01 else 'outside'} 0.01)",
                     f"{tb:.4f} / {tp:.4f}",
                     f"{statistics.median(r.samples_per_s for r in b):,.0f} / "
                     f"{statistics.median(r.samples_per_s for r in p):,.0f}"])
    click.echo(f"quality: embcache train, up to {epochs} epochs, early stopping patience "
               f"{TrainConfig().patience}, seeds {', '.join(map(str, seeds))}; validation accuracy "
               "of the best epoch, mean (each seed); each way's models trained in one group")
    click.echo(table(["model", "val, length buckets", "val, padded to max_len",
                      "buckets - padded", "test, buckets / padded",
                      "group samples/s, buckets / padded"], rows))


PARTS = ("throughput", "group", "sweep", "fasttext-full")
SWEEP = ("hidden=[0,64]", "dropout=[0.0,0.3]", "learning_rate=[0.001,0.003]")  # 8 settings


def say(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    import time

    click.echo(f"[bench-train {time.strftime('%H:%M:%S')}] {message}", err=True)


def _train_argv(store_url: str, model: str, out: str, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "embcache.jobs.cli", "train", "--store", store_url, "--model",
            model, "--epochs", str(epochs), "--out", out, "-q", "--overwrite", *extra]


def _groups(store_url: str, vectors: str, parts: set, epochs: int, full_epochs: int,
            rounds: int, batch_size: int) -> None:
    """Group training against separate ``embcache train`` processes (wall time, peak RSS), and
    fasttext on the whole training split against the Keras way; rounds interleave the variants."""
    import tempfile

    from embcache import models
    from embcache.jobs.grid import expand_runs, parse_grid
    from jobs.bench.common import median, run_measured, table

    six = models.names()
    sweep = expand_runs(["fasttext"], grid=parse_grid(list(SWEEP)))
    res: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="bench-group-") as tmp:
        def measure(key: str, label: str, argv: list[str]):
            say(f"{label} ...")
            wall, rss, out = run_measured(argv, env=dict(os.environ))
            say(f"  {label}: {wall:,.1f} s, peak RSS {rss:,.0f} MB")
            res.setdefault(key, []).append((wall, rss))
            return out

        def separately(key: str, label: str, runs: list[tuple[str, list[str]]]):
            walls, peak = 0.0, 0.0
            for name, argv in runs:
                say(f"{label}: {name} ...")
                wall, rss, _ = run_measured(argv, env=dict(os.environ))
                walls, peak = walls + wall, max(peak, rss)
            say(f"  {label}: {walls:,.1f} s in all, peak RSS {peak:,.0f} MB")
            res.setdefault(key, []).append((walls, peak))

        for r in range(rounds):
            say(f"round {r + 1} of {rounds}")
            if "group" in parts:
                measure("group6", f"six models in one group, {epochs} epochs",
                        _train_argv(store_url, ",".join(six), f"{tmp}/group", epochs))
                separately("alone6", "six separate processes",
                           [(m, _train_argv(store_url, m, f"{tmp}/alone/{m}", epochs))
                            for m in six])
            if "sweep" in parts:
                grid = [a for g in SWEEP for a in ("--grid", g)]
                measure("sweep8", f"8 fasttext settings in one group, {epochs} epochs",
                        _train_argv(store_url, "fasttext", f"{tmp}/sweep", epochs, *grid))
                separately("sweep_alone", "8 separate fasttext processes", [
                    (p.name, _train_argv(store_url, "fasttext", f"{tmp}/one/{p.name}", epochs,
                                         "--learning-rate", str(p.learning_rate),
                                         *[a for k, v in p.hparams.items()
                                           for a in ("--param", f"{k}={json.dumps(v)}")]))
                    for p in sweep])
            if "fasttext-full" in parts:
                measure("ft_embcache", f"fasttext, whole training split, embcache train, "
                        f"{full_epochs} epochs",
                        _train_argv(store_url, "fasttext", f"{tmp}/ft", full_epochs))
                card = json.loads(open(f"{tmp}/ft/model.json").read())
                res.setdefault("ft_embcache_sps", []).append(card["training"]["samples_per_s"])
                out = measure("ft_keras", f"fasttext, whole training split, Keras way, "
                              f"{full_epochs} epochs",
                              [sys.executable, "-m", "jobs.bench.train", "--store",
                               store_url, "--vectors", vectors, "--docs", "0", "--epochs",
                               str(full_epochs), "--batch-size", str(batch_size),
                               "--child-variant", "keras:fasttext"])
                res.setdefault("ft_keras_sps", []).append(
                    json.loads(out.strip().splitlines()[-1])["samples_per_s"])

    def cell(key, i=0, fmt="{:,.1f}"):
        xs = [x[i] if isinstance(x, tuple) else x for x in res[key]]
        return f"{fmt.format(median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"

    def ratio(a, b, i=0):
        def med(k):
            return median([x[i] if isinstance(x, tuple) else x for x in res[k]])
        return med(a) / med(b)

    rows = []
    if "group" in parts:
        rows.append([f"six built-in models, {epochs} epochs", cell("group6"), cell("alone6"),
                     f"{ratio('alone6', 'group6'):.2f}x (goal 1.3x)",
                     f"{cell('group6', 1, '{:,.0f}')} / {cell('alone6', 1, '{:,.0f}')}"])
    if "sweep" in parts:
        rows.append([f"8 fasttext settings, {epochs} epochs", cell("sweep8"), cell("sweep_alone"),
                     f"{ratio('sweep_alone', 'sweep8'):.2f}x (goal 3x)",
                     f"{cell('sweep8', 1, '{:,.0f}')} / {cell('sweep_alone', 1, '{:,.0f}')}"])
    if rows:
        click.echo(f"\ngroup training: wall seconds, median (range) over {rounds} round(s); "
                   f"separate = the sum of one `embcache train` process per run; peak RSS is the "
                   f"group's / the largest separate process's; {os.cpu_count()} cores")
        click.echo(table(["runs", "one group, s", "separate processes, s", "separate / group",
                          "peak RSS MB group / separate"], rows))
    if "fasttext-full" in parts:
        click.echo(f"\nfasttext on the whole training split ({full_epochs} epochs): samples/s "
                   f"of the median epoch, median (range) over {rounds} round(s)")
        click.echo(table(["way", "samples/s", "wall s", "peak RSS MB", "vs Keras way"], [
            ["embcache train (split in memory)", cell("ft_embcache_sps", 0, "{:,.0f}"),
             cell("ft_embcache"), cell("ft_embcache", 1, "{:,.0f}"),
             f"{ratio('ft_embcache_sps', 'ft_keras_sps'):.2f}x (goal 2x)"],
            ["Keras way (frozen Embedding, ids padded to max_len)",
             cell("ft_keras_sps", 0, "{:,.0f}"), cell("ft_keras"), cell("ft_keras", 1, "{:,.0f}"),
             "1.00x"]]))


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
@click.option("--only", default=",".join(PARTS), show_default=True,
              help="Which parts to run: throughput (every model on the sample against the Keras "
                   "way and the ceiling), group (six models in one group against six processes), "
                   "sweep (8 fasttext settings in one group against 8 processes), fasttext-full "
                   "(the whole training split against the Keras way).")
@click.option("--group-epochs", default=3, show_default=True,
              help="Epochs of every run in the group and sweep parts.")
@click.option("--full-epochs", default=5, show_default=True,
              help="Epochs in the fasttext-full part (the median epoch is compared).")
@click.option("--seeds", default="0,1,2", show_default=True, help="With --quality: the seeds.")
@click.option("--child-variant", default=None, hidden=True)
def main(store_url, vectors, model_names, docs, epochs, batch_size, rounds, spe_baseline, quality,
         only, group_epochs, full_epochs, seeds, child_variant):
    """Benchmark training: throughput against the Keras way and the ceiling, group training
    against separate processes, fasttext on the whole split (see --only)."""
    if quality:
        _quality(store_url, (model_names or "cnn,kim_cnn,fasttext").split(","), epochs or 10,
                 [int(x) for x in seeds.split(",")])
        return
    epochs = epochs or 3
    if child_variant:
        variant, model_name = child_variant.split(":")
        click.echo(json.dumps(child(variant, model_name, store_url, docs, epochs, batch_size)))
        return
    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()  # this process lists the models (imports Keras): no start-up lines
    parts = {p.strip() for p in only.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        raise click.BadParameter(f"unknown part {sorted(unknown)[0]!r}; choose from "
                                 f"{', '.join(PARTS)}", param_hint="'--only'")
    from embcache.cache.vectors import load_vectors

    # The Keras way's children read the vectors from the parse cache.
    os.environ["EMBCACHE_BENCH_TABLE"] = load_vectors(vectors).cache_path
    if parts - {"throughput"}:
        _groups(store_url, vectors, parts, group_epochs, full_epochs, rounds, batch_size)
    if "throughput" not in parts:
        return
    from embcache import models
    from embcache.cache.vectors import load_vectors
    from jobs.bench.common import median, run_measured, table

    os.environ["EMBCACHE_BENCH_TABLE"] = load_vectors(vectors).cache_path
    names = model_names.split(",") if model_names else models.names()
    plan = [("stream", "-")] + [(v, m) for m in names for v in
                                ("embcache", "keras", "ceiling")
                                + (("keras-spe",) if m in spe_baseline.split(",") else ())]
    results: dict[tuple, list] = {key: [] for key in plan}
    # Rounds interleave every variant of every model, so a slow spell of the machine hits all.
    for r in range(rounds):
        for i, (variant, model_name) in enumerate(plan):
            say(f"throughput round {r + 1}/{rounds}, {i + 1}/{len(plan)}: {variant} {model_name}")
            _wall, rss, out = run_measured([sys.executable, "-m", "jobs.bench.train", "--store",
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
