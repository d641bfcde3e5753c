"""``make bench-integrity``: what the integrity checks cost (see :mod:`embcache.cache.integrity`).

The same corpus (20 Newsgroups, headers stripped) is embedded twice per representation: with
crc32c on every chunk (the default) and without (as stores were written before). Then, round by
round, in alternating order within each round:

- **the input pipeline alone**: one shuffled pass over the train split, streamed by the producer
  process and consumed in the graph (what a training epoch reads, without a model), documents/s,
  for each store;
- **the full pass**: every document, unshuffled (what ``score`` reads), seconds, for the
  checksummed store, and **verify** of that store (every chunk of every array read and checked),
  seconds;
- **the open-time listing** (the manifest check train, score and ``dataset()`` run when they open
  a store), milliseconds.

Medians with ranges, and the ratios the issue asks for: the pipeline with checksums against
without (goal: at most 5% slower), and verify against the full pass (goal: at most 2x).
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


def say(message: str) -> None:
    click.echo(f"[bench-integrity {time.strftime('%H:%M:%S')}] {message}", err=True)


def _build(rep: str, data: Path, out: Path, checksums: bool, reuse: bool, workers: int) -> None:
    from embcache.cache import layout as layout_module
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.store import store_state
    from embcache.jobs.embed_corpus import embed_corpus

    if reuse and out.exists() and store_state(str(out)) == "complete":
        say(f"  {out.name}: reused")
        return
    if rep == "glove":
        vectors, tokenizer = data / "glove.6B.50d.txt.gz", None
    else:
        w = data / "wordllama-l2-supercat-256"
        vectors, tokenizer = w / "l2_supercat_256.safetensors", w / "l2_supercat_tokenizer_config.json"
    layout_module.CHECKSUM_CHUNKS = checksums
    try:
        s = embed_corpus(CorpusSpec(str(data / "news20.tar.gz"), strip_headers=True), str(vectors),
                         str(out), tokenizer=str(tokenizer) if tokenizer else None,
                         workers=workers, overwrite=True, progress=False,
                         shard_blocks=0)  # one object per chunk, as measured (sharded: bench-shards)
    finally:
        layout_module.CHECKSUM_CHUNKS = True
    say(f"  {s.line()}")


def _pipeline(url: str, split: str | None, shuffle: bool) -> tuple[float, int]:
    """Seconds for one pass (producer process, consumed in the graph) and its documents."""
    import tensorflow as tf

    from embcache.cache.dataset import Batching, streamed_dataset
    from embcache.cache.store import open_store
    from embcache.cache.stream import plan_split

    s = open_store(url)
    plan = plan_split(s, split)
    ds = streamed_dataset(s, split, batching=Batching(batch_size=32, shuffle=shuffle,
                                                      with_labels=split is not None),
                          plan=plan, in_process=False)
    first = next(iter(ds))  # the producer process started and warm; not timed
    del first
    t0 = time.perf_counter()
    total = ds.reduce(tf.constant(0.0), lambda acc, b: acc + tf.reduce_sum(
        (b[0] if isinstance(b, tuple) else b)["embedded"][:, -1, 0]))
    float(total)
    return time.perf_counter() - t0, plan.num_docs


def _verify(url: str) -> tuple[float, int]:
    from embcache.jobs.verify import verify_unlocked

    t0 = time.perf_counter()
    report = verify_unlocked(url, progress=False)
    if not report.ok:
        sys.exit(f"{url} is damaged: {report.lines()[1]}")
    return time.perf_counter() - t0, report.chunks_read


def _listing(url: str) -> float:
    from embcache.cache.integrity import check_manifest
    from embcache.cache.store import open_store

    s = open_store(url, check_chunks=False)
    t0 = time.perf_counter()
    check_manifest(s)
    return (time.perf_counter() - t0) * 1000


def _mid(xs: list[float], fmt: str) -> str:
    return f"{format(statistics.median(xs), fmt)} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


@click.command()
@click.option("--data", "data_dir", default="../shared/data", show_default=True,
              type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", default="bench-out/integrity", show_default=True)
@click.option("--reps", default="glove,wordllama", show_default=True,
              help="Representations: glove (126 MB store), wordllama (1.5 GB).")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--reuse", is_flag=True, help="Keep complete stores found in --out.")
def main(data_dir, out_dir, reps, rounds, workers, reuse):
    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()
    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [r.strip() for r in reps.split(",") if r.strip()]
    res: dict = {}
    for rep in chosen:
        say(f"{rep}: building the two stores")
        stores = {kind: out / f"news20-{rep}-{kind}.zarr" for kind in ("crc32c", "plain")}
        for kind, path in stores.items():
            _build(rep, data, path, kind == "crc32c", reuse, workers)
        r = res[rep] = {"pipeline": {"crc32c": [], "plain": []}, "full": [], "verify": [],
                        "listing_ms": [], "docs": 0, "chunks": 0}
        for i in range(rounds):
            order = ("crc32c", "plain") if i % 2 == 0 else ("plain", "crc32c")
            for kind in order:
                seconds, docs = _pipeline(str(stores[kind]), "train", True)
                r["pipeline"][kind].append(docs / seconds)
                say(f"  round {i + 1}/{rounds} {rep} pipeline {kind}: {docs / seconds:,.0f} docs/s")
            for step in (("full", "verify") if i % 2 == 0 else ("verify", "full")):
                if step == "full":
                    seconds, r["docs"] = _pipeline(str(stores["crc32c"]), None, False)
                else:
                    seconds, r["chunks"] = _verify(str(stores["crc32c"]))
                r[step].append(seconds)
                say(f"  round {i + 1}/{rounds} {rep} {step}: {seconds:,.1f} s")
            r["listing_ms"].append(_listing(str(stores["crc32c"])))
    (out / "results.json").write_text(json.dumps(res, indent=2))
    click.echo(render(res))


def render(res: dict) -> str:
    med = statistics.median
    lines = ["| store | pipeline docs/s, crc32c | pipeline docs/s, plain | checksum cost | "
             "full pass s | verify s | verify / full pass | open-time listing ms |",
             "|---|---|---|---|---|---|---|---|"]
    for rep, r in res.items():
        p = r["pipeline"]
        cost = 1 - med(p["crc32c"]) / med(p["plain"])
        lines.append(
            f"| 20 Newsgroups {rep} float16 ({r['docs']:,} docs, {r['chunks']:,} chunks) | "
            f"{_mid(p['crc32c'], ',.0f')} | {_mid(p['plain'], ',.0f')} | {cost:+.1%} | "
            f"{_mid(r['full'], '.1f')} | {_mid(r['verify'], '.1f')} | "
            f"{med(r['verify']) / med(r['full']):.2f}x | {_mid(r['listing_ms'], '.1f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
