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


def _say(text: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {text}", err=True)


@click.command()
@click.option("--corpus", required=True)
@click.option("--vectors", required=True)
@click.option("--max-len", default=EmbedSettings().max_len, show_default=True)
@click.option("--repeats", default=3, show_default=True,
              help="Rounds; each runs every row once, interleaved (medians over rounds).")
def main(corpus, vectors, max_len, repeats):
    """Benchmark embed-corpus against the seed approach on a real corpus."""
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    names = ["seed (dict + float32 array in RAM)", "embcache, cold vectors cache (parse + embed)",
             f"embcache, warm vectors cache, {os.cpu_count()} workers",
             "embcache, warm vectors cache, 1 worker", "embcache, warm, 1/4 of the corpus"]
    runs: dict[str, list] = {n: [] for n in names}
    try:
        warm_cache = work / "warm-cache"
        _embcache(corpus, vectors, work / "s.zarr", warm_cache, max_len)  # fills the warm cache
        quarter = work / "quarter.tar.gz"
        _subset_tar(corpus, quarter, 19_997 // 4)
        for r in range(repeats):  # interleaved: every row once per round
            wall, rss, out = run_measured([sys.executable, "-m", "jobs.bench.seed_embed", corpus,
                                           vectors, str(max_len)])
            info = json.loads(out)
            runs[names[0]].append((wall, rss, info["bytes"], info))
            runs[names[1]].append(_embcache(corpus, vectors, work / "s.zarr", work / f"cold-{r}",
                                            max_len))
            runs[names[2]].append(_embcache(corpus, vectors, work / "s.zarr", warm_cache, max_len))
            runs[names[3]].append(_embcache(corpus, vectors, work / "s.zarr", warm_cache, max_len, 1))
            runs[names[4]].append(_embcache(quarter, vectors, work / "q.zarr", warm_cache, max_len))
            _say(f"round {r + 1}/{repeats}: " + ", ".join(f"{runs[n][-1][0]:.1f} s" for n in names))
        from embcache.cache.vectors import load_vectors

        loads = []
        for _ in range(5):
            t = time.perf_counter()
            _ = load_vectors(vectors, cache_dir=warm_cache).index
            loads.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    docs = runs[names[0]][0][3]["docs"]
    seed_wall = median([x[0] for x in runs[names[0]]])
    rows = []
    for name in names:
        walls = [x[0] for x in runs[name]]
        wall, n = median(walls), docs // 4 if "1/4" in name else docs
        rows.append([name, f"{wall:.1f} ({min(walls):.1f}-{max(walls):.1f})", f"{n / wall:,.0f}",
                     f"{max(x[1] for x in runs[name]):,.0f}", f"{runs[name][0][2] / 1e6:,.0f}",
                     f"{seed_wall / wall:.2f}x" if n == docs else ""])
    click.echo(f"embed-corpus benchmark: {Path(corpus).name}, {Path(vectors).name}, "
               f"max_len={max_len}, {docs:,} docs, {os.cpu_count()} cores; median (range) of "
               f"{repeats} interleaved rounds")
    click.echo(table(["approach", "wall s", "docs/s", "peak RSS MB", "MB produced",
                      "speed-up vs seed"], rows))
    click.echo(f"\ncached vectors load (words -> index dict + memory-mapped table): median "
               f"{median(loads) * 1000:.0f} ms of 5")


if __name__ == "__main__":
    main()
