"""``make bench-rehearsal``: the whole pipeline on a synthetic corpus of ``--docs`` short
documents (default 1,000,000), each job a fresh process: embed-corpus, verify, one training
epoch from the store, and batch scoring in one process against ``--scheduler local:N``
and on Dask with one worker and with ``--workers`` (interleaved over ``--rounds``).

The corpus: every document has its own id and text, 10-26 words drawn from GloVe's 5,000 most
frequent words, plus 2-4 topic words of its label (4 labels, 100 topic words each) and one of
another label: a rule a model can learn, and not perfectly. Reported: objects and bytes
written, docs/s of each job, peak RSS of each job's process tree (sampled every 20 ms), and the
scoring speed-up. Run it at two sizes to see that peak RSS stays flat as the corpus grows.
"""

from __future__ import annotations

import csv
import gzip
import os
import random
import sys
import time
from pathlib import Path

import click

from jobs.bench.common import median, run_measured, table

LABELS = ("alpha", "beta", "gamma", "delta")
CLI = [sys.executable, "-m", "embcache.jobs.cli"]


def say(message: str) -> None:
    click.echo(f"[bench-rehearsal {time.strftime('%H:%M:%S')}] {message}", err=True)


def vocabulary(vectors: str, n: int = 6000) -> list[str]:
    """GloVe's ``n`` most frequent alphabetic words (the file is in frequency order)."""
    words = []
    with gzip.open(vectors, "rt", encoding="utf-8") as f:
        for line in f:
            w = line.split(" ", 1)[0]
            if w.isalpha():
                words.append(w)
                if len(words) == n:
                    break
    return words


def write_corpus(path: Path, docs: int, vectors: str, seed: int = 0) -> None:
    """``docs`` rows of ``id,label,text`` (streamed: memory is one row)."""
    words = vocabulary(vectors)
    common, topics = words[:5000], words[5000:5400]
    per = len(topics) // len(LABELS)
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "text"])
        for i in range(docs):
            k = rng.randrange(len(LABELS))
            other = (k + 1 + rng.randrange(len(LABELS) - 1)) % len(LABELS)
            text = rng.choices(common, k=rng.randint(10, 26))
            text += rng.sample(topics[k * per:(k + 1) * per], rng.randint(2, 4))
            text.append(rng.choice(topics[other * per:(other + 1) * per]))
            rng.shuffle(text)
            w.writerow([i, LABELS[k], " ".join(text)])


def objects(store: Path) -> tuple[int, int]:
    files = [p for p in store.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _s3(corpus: Path, vectors: str, corpus_opts: list[str], docs: int, ks: list[int]) -> None:
    """The same corpus into a local S3 (moto's server), once per ``--shard-blocks`` value:
    embed, objects and bytes (a listing), verify, and one read pass (the tf.data stream of
    every document, no model). moto keeps every object in its own process: its range GETs
    read the whole object, so large shards are slower there than on a real S3."""
    from jobs.bench.common import moto_server
    from jobs.bench.shards import _objects, _pass_rate

    server, env = moto_server()
    rows = []
    try:
        for k in ks:
            url = f"s3://bench/k{k}.zarr"
            say(f"S3: embed-corpus --shard-blocks {k} ...")
            wall, peak, _ = run_measured(CLI + ["embed-corpus", "--corpus", str(corpus),
                                                "--vectors", vectors, "--out", url, "--max-len",
                                                "32", "--overwrite", "-q", "--shard-blocks", str(k),
                                                *corpus_opts], env=env)
            n, mb = _objects(url)
            say("S3: verify, read ...")
            verify, _, _ = run_measured(CLI + ["verify", url, "-q"], env=env)
            rate = _pass_rate(url)
            rows.append([k or "0 (unsharded)", f"{n:,}", f"{mb:,.1f}", f"{wall:,.1f}",
                         f"{docs / wall:,.0f}", f"{peak:,.0f}", f"{verify:,.1f}", f"{rate:,.0f}"])
    finally:
        server.stop()
    click.echo(f"\nlocal S3 (moto's server on this machine), {docs:,} documents, one run each")
    click.echo(table(["--shard-blocks", "objects", "MB", "embed s", "embed docs/s", "peak RSS MB",
                      "verify s", "read pass docs/s"], rows))


def _layout(store: Path) -> str:
    from embcache.cache.store import open_store

    k = open_store(str(store), check_chunks=False).meta.shard_blocks
    return f"sharded, {k} blocks per shard" if k else "unsharded"


@click.command()
@click.option("--vectors", required=True)
@click.option("--docs", default=1_000_000, show_default=True)
@click.option("--out", default="bench-out/rehearsal", show_default=True)
@click.option("--model", default="kim_cnn", show_default=True)
@click.option("--workers", default=2, show_default=True, help="local:N for the Dask scoring.")
@click.option("--rounds", default=2, show_default=True)
@click.option("--reuse", is_flag=True, help="Keep a complete corpus, store and run.")
@click.option("--shard-blocks", default=None, type=int,
              help="embed-corpus's --shard-blocks [default: its own default].")
@click.option("--ways", default="one,local:1,local:N", show_default=True,
              help="The scoring ways to run, comma-separated (local:N is --workers).")
@click.option("--s3", "s3_blocks", default=None,
              help="Also embed the corpus into a local S3 (moto's server) with each of these "
                   "--shard-blocks values (e.g. 0,8), then verify and read it whole.")
def main(vectors, docs, out, model, workers, rounds, reuse, shard_blocks, ways, s3_blocks):
    """The pipeline at scale: embed, verify, train an epoch, score on one process and on Dask."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = Path(out) / f"{docs}"
    root.mkdir(parents=True, exist_ok=True)
    corpus, store, run = root / "corpus.csv", root / "store.zarr", root / "runs" / model
    rows, results = [], {}
    if not (reuse and corpus.exists()):
        say(f"writing {docs:,} synthetic documents ...")
        write_corpus(corpus, docs, vectors)
    corpus_opts = ["--corpus-format", "csv", "--text-column", "text", "--label-column", "label",
                   "--id-column", "id"]
    if not (reuse and (store / "zarr.json").exists()):
        say("embed-corpus ...")
        wall, peak, _ = run_measured(CLI + ["embed-corpus", "--corpus", str(corpus), "--vectors",
                                            vectors, "--out", str(store), "--max-len", "32",
                                            "--overwrite", "-q", *corpus_opts,
                                            *([] if shard_blocks is None
                                              else ["--shard-blocks", str(shard_blocks)])])
        results["embed"] = (wall, peak)
        rows.append(["embed-corpus (2 spawned workers)", f"{wall:,.1f}", f"{docs / wall:,.0f}",
                     f"{peak:,.0f}"])
    n_obj, size = objects(store)
    say("verify ...")
    wall, peak, _ = run_measured(CLI + ["verify", str(store), "-q"])
    rows.append(["verify", f"{wall:,.1f}", f"{docs / wall:,.0f}", f"{peak:,.0f}"])
    if not (reuse and (run / "model.json").exists()):
        say(f"train {model}, 1 epoch ...")
        wall, peak, _ = run_measured(CLI + ["train", "--store", str(store), "--model", model,
                                            "--epochs", "1", "--out", str(run), "-q",
                                            "--overwrite"])
        from embcache.cache.plan import plan_split
        from embcache.cache.store import open_store

        n_train = plan_split(open_store(str(store)), "train").num_docs
        rows.append([f"train {model}, 1 epoch from the store ({n_train:,} train documents)",
                     f"{wall:,.1f}", f"{n_train / wall:,.0f}", f"{peak:,.0f}"])
    every = {"one": ("one process", []),
             "local:1": ("--scheduler local:1", ["--scheduler", "local:1"]),
             "local:N": (f"--scheduler local:{workers}", ["--scheduler", f"local:{workers}"])}
    chosen = [every[w] for w in ways.split(",") if w]  # none: the S3 part only
    ways = dict(chosen)
    walls: dict[str, list[float]] = {w: [] for w in ways}
    peaks: dict[str, list[float]] = {w: [] for w in ways}
    for r in range(rounds):
        for way, extra in ways.items():
            say(f"round {r + 1}/{rounds}: score, {way} ...")
            wall, peak, _ = run_measured(CLI + ["score", "--models", str(run), "--input",
                                                str(store), "--out", str(root / "p.parquet"),
                                                "-q", *extra])
            walls[way].append(wall)
            peaks[way].append(peak)
            say(f"  {wall:,.1f} s ({docs / wall:,.0f} docs/s), peak RSS {peak:,.0f} MB")
    base = median(walls[chosen[0][0]]) if chosen else 0.0
    for way in ways:
        w = walls[way]
        rows.append([f"score, {way}", f"{median(w):,.1f} ({min(w):,.1f}-{max(w):,.1f})",
                     f"{docs / median(w):,.0f}", f"{median(peaks[way]):,.0f}",
                     f"{base / median(w):.2f}x"])
    click.echo(f"rehearsal: {docs:,} synthetic documents, {model}, {os.cpu_count()} cores; store "
               f"{n_obj:,} objects, {size / 1e6:,.1f} MB ({size / docs:,.0f} bytes per document)")
    click.echo(table(["job", "wall s", "docs/s", "peak RSS MB",
                      f"speed vs {chosen[0][0] if chosen else '-'}"],
                     [r + [""] * (5 - len(r)) for r in rows]))
    click.echo(f"store layout: {_layout(store)}")
    if s3_blocks:
        _s3(corpus, vectors, corpus_opts, docs, [int(k) for k in s3_blocks.split(",")])
    # On paper: 1 billion documents from this run's per-unit costs (objects and bytes scale with
    # the documents; each job's time with its docs/s, per worker of this machine's kind).
    scale = 1e9 / docs
    paper = [[f"objects ({_layout(store)})", f"{n_obj * scale:,.0f}"],
             ["bytes", f"{size * scale / 1e12:,.2f} TB"]]
    if "embed" in results:
        paper.append(["embed-corpus, hours on one 2-core machine",
                      f"{results['embed'][0] * scale / 3600:,.0f}"])
    for way in ways:
        paper.append([f"score ({way}), hours on one 2-core machine",
                      f"{median(walls[way]) * scale / 3600:,.0f}"])
    click.echo(f"\n1 billion documents on paper (x{scale:,.0f} this run)")
    click.echo(table(["what", "1e9 documents"], paper))


if __name__ == "__main__":
    main()
