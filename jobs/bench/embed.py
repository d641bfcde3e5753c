"""``make bench-embed``: embed-corpus against the seed approach, in one run.

Rows: the seed approach (dict lookups, float32 corpus in RAM); embcache with a cold vectors cache
(parse included) and a warm one, with all cores and with one; and embcache on a quarter of the
corpus, to show that peak RSS does not grow with corpus size. Every row is a fresh child process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import click

from embcache.cache.settings import EmbedSettings
from jobs.bench.common import median, run_measured, table


def _subset_tar(src: str, dst: Path, n: int) -> None:
    with tarfile.open(src, "r|gz") as tin, tarfile.open(dst, "w:gz") as tout:
        kept = 0
        for m in tin:
            if m.isfile():
                if kept == n:
                    break
                tout.addfile(m, tin.extractfile(m))
                kept += 1


def _embcache(corpus, vectors, out, cache, max_len, workers=None):
    argv = [sys.executable, "-m", "embcache.jobs.cli", "embed-corpus", "--corpus", str(corpus),
            "--vectors", str(vectors), "--out", str(out), "--strip-headers", "--max-len",
            str(max_len), "--cache-dir", str(cache), "--overwrite", "-q"]
    if workers:
        argv += ["--workers", str(workers)]
    wall, rss, _ = run_measured(argv)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    return wall, rss, size


@click.command()
@click.option("--corpus", required=True)
@click.option("--vectors", required=True)
@click.option("--max-len", default=EmbedSettings().max_len, show_default=True)
@click.option("--repeats", default=3, show_default=True, help="Runs per embcache row (median).")
@click.option("--seed-repeats", default=1, show_default=True, help="Runs of the seed approach.")
def main(corpus, vectors, max_len, repeats, seed_repeats):
    """Benchmark embed-corpus against the seed approach on a real corpus."""
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        rows, docs = [], 19_997
        seeds = []
        for _ in range(seed_repeats):
            wall, rss, out = run_measured([sys.executable, "-m", "jobs.bench.seed_embed", corpus,
                                           vectors, str(max_len)])
            seeds.append((wall, rss, json.loads(out)))
        seed_wall = median([s[0] for s in seeds])
        info = seeds[0][2]
        docs = info["docs"]
        rows.append(["seed (dict + float32 array in RAM)", seed_wall, max(s[1] for s in seeds),
                     info["bytes"], f"vectors {info['vectors_s']:.1f} s + embed {info['embed_s']:.1f} s"])

        cold = []
        for i in range(repeats):
            cache = work / f"cold-cache-{i}"
            cold.append(_embcache(corpus, vectors, work / "s.zarr", cache, max_len))
        rows.append(["embcache, cold vectors cache (parse + embed)", median([c[0] for c in cold]),
                     max(c[1] for c in cold), cold[0][2], f"{os.cpu_count()} workers"])
        warm_cache = work / "cold-cache-0"
        for workers, label in ((None, f"{os.cpu_count()} workers"), (1, "1 worker")):
            runs = [_embcache(corpus, vectors, work / "s.zarr", warm_cache, max_len, workers)
                    for _ in range(repeats)]
            rows.append([f"embcache, warm vectors cache, {label}", median([r[0] for r in runs]),
                         max(r[1] for r in runs), runs[0][2], ""])
        quarter = work / "quarter.tar.gz"
        _subset_tar(corpus, quarter, docs // 4)
        runs = [_embcache(quarter, vectors, work / "q.zarr", warm_cache, max_len)
                for _ in range(repeats)]
        quarter_row = ["embcache, warm, 1/4 of the corpus", median([r[0] for r in runs]),
                       max(r[1] for r in runs), runs[0][2], f"{docs // 4:,} docs"]

        from embcache.cache.vectors import load_vectors

        loads = []
        for _ in range(5):
            t = time.perf_counter()
            table_ = load_vectors(vectors, cache_dir=warm_cache)
            _ = table_.index
            loads.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out_rows = []
    for name, wall, rss, nbytes, note in rows + [quarter_row]:
        n = docs // 4 if "1/4" in name else docs
        out_rows.append([name, f"{wall:.1f}", f"{n / wall:,.0f}", f"{rss:,.0f}",
                         f"{nbytes / 1e6:,.0f}", f"{seed_wall / wall:.2f}x" if n == docs else "",
                         note])
    click.echo(f"embed-corpus benchmark: {Path(corpus).name}, {Path(vectors).name}, "
               f"max_len={max_len}, {docs:,} docs, {os.cpu_count()} cores; median of {repeats} "
               f"(seed: {seed_repeats})")
    click.echo(table(["approach", "wall s", "docs/s", "peak RSS MB", "MB produced",
                      "speed-up vs seed", "note"], out_rows))
    click.echo(f"\ncached vectors load (words -> index dict + memory-mapped table): median "
               f"{median(loads) * 1000:.0f} ms of 5")


if __name__ == "__main__":
    main()
