"""``make bench-vectors``: the quality/cost table of the representations embcache can store.

One row per representation of the same corpus (20 Newsgroups, headers stripped, the same split
and seed): GloVe 50d, WordLlama-256 (a static subword table) and MiniLM-L6 (a frozen transformer
encoder), each as float16 and as int8. Columns:

- embed documents/s (the store's own recorded time: the embed-corpus job from corpus to complete
  store, ``--workers 2``), and store MB on disk;
- the input pipeline alone (documents/s over the train split, streamed by the producer process,
  consumed in the graph), float16 and int8 interleaved round by round in this one run;
- ``kim_cnn`` + ``fasttext`` trained as one group with the default training (``embcache train``'s
  defaults: up to 10 epochs, early stopping): the group's training samples/s, whether the train
  split was served from memory (``--memory-mb`` default) or streamed, and each head's test
  accuracy.

``--reuse`` keeps complete stores and trained runs found in ``--out`` (the MiniLM encode takes half an hour on 2
cores: pay it once). ``--minilm-int8 requantize`` writes the MiniLM int8 store from the float16
store's vectors instead of encoding again (the encode is the whole cost either way; the table
says which was done). A picture (test accuracy against embed time, log scale) goes to
``--plot``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPS = ("glove", "wordllama", "minilm")
DTYPES = ("float16", "int8")
HEADS = ("kim_cnn", "fasttext")


def say(message: str) -> None:
    click.echo(f"[bench-vectors {time.strftime('%H:%M:%S')}] {message}", err=True)


def _source_args(rep: str, data: Path) -> list[str]:
    if rep == "glove":
        return ["--vectors", str(data / "glove.6B.50d.txt.gz")]
    if rep == "wordllama":
        w = data / "wordllama-l2-supercat-256"
        return ["--vectors", str(w / "l2_supercat_256.safetensors"),
                "--tokenizer", str(w / "l2_supercat_tokenizer_config.json")]
    return ["--encoder", str(data / "all-MiniLM-L6-v2.zip")]


def _complete(store: Path) -> bool:
    from embcache.cache.store import store_state

    return store.exists() and store_state(str(store)) == "complete"


def _embed(rep: str, dtype: str, data: Path, store: Path, workers: int) -> None:
    from jobs.bench.common import run_measured

    argv = [sys.executable, "-m", "embcache.jobs.cli", "embed-corpus", "--corpus",
            str(data / "news20.tar.gz"), *_source_args(rep, data), "--strip-headers",
            "--dtype", dtype, "--out", str(store), "--overwrite", "-q",
            "--workers", str(1 if rep == "minilm" else workers)]
    wall, rss, out = run_measured(argv, env=dict(os.environ))
    say(f"  {out.strip()} (wall {wall:,.1f} s, peak RSS {rss:,.0f} MB)")


def _requantize(src: Path, dst: Path) -> None:
    """An int8 store from a float16 store's vectors (same documents, ids, split, labels), block
    by block through the store writer's own arrays (memory: one block)."""
    import dataclasses

    import numpy as np
    import zarr

    from embcache.cache.layout import new_meta, writable_arrays
    from embcache.cache.rows import encode_rows, split_rows
    from embcache.cache.store import open_store
    from embcache.cache.writer import StoreWriter, remove_store

    s = open_store(str(src))
    m = s.meta
    meta = new_meta(settings=dataclasses.replace(m.settings, dtype="int8"), vectors=m.vectors,
                    split=m.split, corpus=m.corpus, label_names=m.label_names,
                    num_docs=m.num_docs, chunk_docs=m.chunk_docs, encoder=m.encoder,
                    subword=m.subword)
    if dst.exists():
        remove_store(str(dst))
    w = StoreWriter.open(str(dst), meta)
    out = writable_arrays(w.group)
    c = m.chunk_docs
    for chunk in range(m.num_chunks):
        region = slice(chunk * c, min((chunk + 1) * c, m.num_docs))
        offsets, lengths = s.array("offsets")[region], s.array("lengths")[region]
        first, end = int(offsets[0]), int(offsets[-1] + lengths[-1])
        rows = encode_rows(s.array("tokens")[first:end].astype(np.float32), "int8")
        start = chunk * meta.block_rows
        for name, part in split_rows(rows, m.dim, "int8").items():
            out[name][start:start + len(part)] = part
        out["offsets"][region] = offsets - first + start
        for name in ("lengths", "doc_ids", "split", "labels"):
            out[name][region] = s.array(name)[region]
        out["chunk_stats"][chunk] = s.array("chunk_stats")[chunk]
    final = w.finish(m.totals.seconds)
    group = zarr.open_group(str(dst), mode="r+")
    group.update_attributes({**final.to_attrs(), "requantized_from": str(src)})


def _pipeline_pass(store: str) -> float:
    """Documents/s of one pass over the train split, streamed (producer process), consumed in
    the graph."""
    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    from embcache.cache.dataset import Batching, streamed_dataset
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split

    s = open_store(store)
    plan = plan_split(s, "train")
    ds = streamed_dataset(s, "train", batching=Batching(batch_size=32, shuffle=True), plan=plan,
                          in_process=False)
    total = ds.reduce(tf.constant(0.0), lambda acc, b: acc + tf.reduce_sum(b[0]["embedded"][:, -1, 0]))
    t0 = time.perf_counter()
    total = ds.reduce(tf.constant(0.0), lambda acc, b: acc + tf.reduce_sum(b[0]["embedded"][:, -1, 0]))
    float(total)
    return plan.num_docs / (time.perf_counter() - t0)


def _train(store: Path, runs: Path, reuse: bool) -> dict:
    """Train the heads as one group (or, with ``reuse``, read the cards of an earlier run)."""
    import subprocess

    if not (reuse and all((runs / h / "model.json").is_file() for h in HEADS)):
        argv = [sys.executable, "-m", "embcache.jobs.cli", "train", "--store", str(store),
                "--model", ",".join(HEADS), "--out", str(runs), "--overwrite", "-q"]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"train failed on {store}:\n{r.stderr[-2000:]}")
    cards = {h: json.loads((runs / h / "model.json").read_text()) for h in HEADS}
    t = cards[HEADS[0]]["training"]
    return {"samples_per_s": t["samples_per_s"], "in_memory": _fits(store, t["memory_mb"]),
            "epochs": {h: cards[h]["training"]["epochs_run"] for h in HEADS},
            "test": {h: cards[h]["metrics"]["test_accuracy"] for h in HEADS},
            "val": {h: cards[h]["metrics"]["val_accuracy"] for h in HEADS}}


def _fits(store: Path, memory_mb: int) -> bool:
    """Whether ``train`` served the train split from memory (it fits ``--memory-mb``)."""
    from embcache.cache.held import memory_bytes
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split

    s = open_store(str(store))
    plan = plan_split(s, "train")
    return 0 < memory_bytes(s, plan) <= memory_mb << 20


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="DATA_DIR: news20.tar.gz, glove.6B.50d.txt.gz, wordllama-l2-supercat-256/, "
                   "all-MiniLM-L6-v2.zip.")
@click.option("--out", "out_dir", default="bench-out/vectors", show_default=True,
              help="Where the stores and runs go.")
@click.option("--reps", default=",".join(REPS), show_default=True)
@click.option("--reuse", is_flag=True, help="Keep complete stores already in --out.")
@click.option("--minilm-int8", default="requantize", show_default=True,
              type=click.Choice(["requantize", "encode"]))
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--rounds", default=3, show_default=True, type=int,
              help="Input-pipeline rounds (float16 and int8 alternate in each).")
@click.option("--no-train", is_flag=True, help="Stores and the input pipeline only.")
@click.option("--train", "train_keys", default=None,
              help="Rows to train, e.g. glove-float16,wordllama-float16 [default: every row].")
@click.option("--plot", "plot_path", default="bench-out/vectors/vectors.png", show_default=True)
@click.option("--json-out", default="bench-out/vectors/results.json", show_default=True)
def main(data_dir, out_dir, reps, reuse, minilm_int8, workers, rounds, no_train, train_keys,
         plot_path, json_out):
    """The quality/cost table of GloVe, WordLlama and MiniLM, float16 and int8."""
    from embcache.cache.store import bytes_on_disk, open_store

    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [r for r in reps.split(",") if r]
    res: dict = {}
    for rep in chosen:
        for dtype in DTYPES:
            store = out / f"news20-{rep}-{dtype}.zarr"
            key = f"{rep}-{dtype}"
            how = "reused" if reuse and _complete(store) else "embedded"
            if how == "embedded":
                if rep == "minilm" and dtype == "int8" and minilm_int8 == "requantize":
                    how = "requantized from float16"
                    say(f"{key}: writing the int8 store from the float16 store's vectors ...")
                    _requantize(out / f"news20-{rep}-float16.zarr", store)
                else:
                    say(f"{key}: embedding 20 Newsgroups ...")
                    _embed(rep, dtype, data, store, workers)
            meta = open_store(str(store)).meta
            res[key] = {"store": str(store), "how": how, "docs": meta.num_docs,
                        "embed_seconds": meta.totals.seconds,
                        "embed_docs_s": meta.num_docs / meta.totals.seconds,
                        "mb": bytes_on_disk(str(store)) / 1e6,
                        "kept_per_doc": meta.totals.kept_tokens / meta.num_docs}
            say(f"  {key}: {res[key]['embed_docs_s']:,.0f} docs/s, {res[key]['mb']:,.0f} MB ({how})")
    for r in range(rounds):
        for rep in chosen:
            for dtype in (DTYPES if r % 2 == 0 else DTYPES[::-1]):
                key = f"{rep}-{dtype}"
                v = _pipeline_pass(res[key]["store"])
                res[key].setdefault("pipeline", []).append(v)
                say(f"pipeline round {r + 1}/{rounds} {key}: {v:,.0f} docs/s")
    if not no_train:
        for rep in chosen:
            for dtype in DTYPES:
                key = f"{rep}-{dtype}"
                runs = out / f"runs-{key}"
                if train_keys and key not in train_keys.split(","):
                    if reuse and all((runs / h / "model.json").is_file() for h in HEADS):
                        res[key]["train"] = _train(Path(res[key]["store"]), runs, True)
                    continue
                say(f"{key}: training {' + '.join(HEADS)} as one group (default training) ...")
                t0 = time.perf_counter()
                res[key]["train"] = _train(Path(res[key]["store"]), runs, reuse)
                tr = res[key]["train"]
                Path(json_out).parent.mkdir(parents=True, exist_ok=True)
                Path(json_out).write_text(json.dumps(res, indent=2))  # each row as it is done
                say(f"  {key}: {tr['samples_per_s']:,.0f} samples/s "
                    f"({'in memory' if tr['in_memory'] else 'streamed'}), test "
                    + ", ".join(f"{h} {tr['test'][h]:.4f}" for h in HEADS)
                    + f" ({time.perf_counter() - t0:,.0f} s)")
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(res, indent=2))
    click.echo(render(res, chosen))
    if not no_train and plot_path.lower() != "none":
        plot(res, Path(plot_path))
        click.echo(f"\nPicture: {plot_path}")


def render(res: dict, chosen: list[str]) -> str:
    from jobs.bench.common import table

    def med(xs):
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})" if xs else "-"

    rows = []
    for rep in chosen:
        f16 = res[f"{rep}-float16"]
        for dtype in DTYPES:
            r = res[f"{rep}-{dtype}"]
            tr = r.get("train")
            pipe = r.get("pipeline", [])
            ratio = ""
            if dtype == "int8" and pipe and f16.get("pipeline"):
                ratio = f" ({statistics.median(pipe) / statistics.median(f16['pipeline']):.2f}x)"
            rows.append([
                f"{rep} {dtype}",
                f"{r['embed_docs_s']:,.0f}" + (" (encode)" if r["how"].startswith("requantized")
                                                else ""),
                f"{r['mb']:,.0f}" + (f" ({r['mb'] / f16['mb']:.0%})" if dtype == "int8" else ""),
                med(pipe) + ratio,
                (f"{tr['samples_per_s']:,.0f} ({'memory' if tr['in_memory'] else 'streamed'})"
                 if tr else "-"),
                *((f"{tr['test'][h]:.4f}" if tr else "-") for h in HEADS),
            ])
    return table(["representation", "embed docs/s", "store MB", "pipeline docs/s, median (range)",
                  "group samples/s (train split)", *(f"{h} test acc" for h in HEADS)], rows)


def plot(res: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"glove": "tab:blue", "wordllama": "tab:green", "minilm": "tab:red"}
    for key, r in res.items():
        if "train" not in r:
            continue
        rep, dtype = key.split("-")
        x = r["embed_seconds"]
        for h, marker in zip(HEADS, ("o", "s")):
            ax.scatter(x, r["train"]["test"][h], color=colours[rep], marker=marker,
                       facecolors="none" if dtype == "int8" else colours[rep])
        ax.annotate(f"{rep} {dtype}", (x, r["train"]["test"][HEADS[0]]), fontsize=8,
                    xytext=(4, 4 if dtype == "float16" else -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("embed time for 20 Newsgroups, s (log scale, 2 cores)")
    ax.set_ylabel("test accuracy")
    ax.set_title("kim_cnn (circles) and fasttext (squares); hollow: int8")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)


if __name__ == "__main__":
    main()
