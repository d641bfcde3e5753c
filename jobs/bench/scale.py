"""``make bench-scale``: embed-corpus on Dask against the single-machine job, and store read
throughput from a local S3-compatible endpoint (moto's server) against local disk, in one run."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from jobs.bench.common import median, moto_server, run_measured, table


def _embed(corpus, vectors, out, extra, env=None):
    argv = [sys.executable, "-m", "embcache.jobs.cli", "embed-corpus", "--corpus", corpus, "--vectors",
            vectors, "--out", out, "--strip-headers", "--overwrite", "-q", *extra]
    return run_measured(argv, env=env)[:2]


def _read_throughput(url: str, repeats: int) -> list[float]:
    """Documents per second of each pass streamed through streamed_dataset (all documents, no
    model)."""
    from embcache.cache.dataset import Batching, streamed_dataset
    from embcache.cache.store import open_store

    store = open_store(url)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = sum(int(f["lengths"].shape[0]) for f, _ in streamed_dataset(
            store, None, batching=Batching(batch_size=64)))
        rates.append(n / (time.perf_counter() - t))
    return rates


@click.command()
@click.option("--corpus", required=True)
@click.option("--vectors", required=True)
@click.option("--repeats", default=3, show_default=True)
def main(corpus, vectors, repeats):
    """Benchmark Dask embedding and S3 reads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    try:
        out = str(work / "s.zarr")
        _embed(corpus, vectors, out, [])  # warm the vectors cache
        variants = [("single process (--workers 1)", ["--workers", "1"]),
                    ("2 spawned processes (default)", []),
                    ("Dask local cluster, 1 worker (--scheduler local:1)", ["--scheduler", "local:1"]),
                    ("Dask local cluster, 2 workers (--scheduler local:2)", ["--scheduler", "local:2"])]
        walls: dict[str, list[float]] = {name: [] for name, _ in variants}
        peaks: dict[str, list[float]] = {name: [] for name, _ in variants}
        for r in range(repeats):  # interleaved: each round runs every variant once
            for name, extra in variants:
                wall, peak = _embed(corpus, vectors, out, extra)
                walls[name].append(wall)
                peaks[name].append(peak)
                click.echo(f"[{time.strftime('%H:%M:%S')}] round {r + 1}/{repeats}: {name} "
                           f"{wall:.1f} s", err=True)
        base = median(walls[variants[0][0]])
        for name, _ in variants:
            wall = median(walls[name])
            rows.append([name, f"{wall:.1f} ({min(walls[name]):.1f}-{max(walls[name]):.1f})",
                         f"{max(peaks[name]):,.0f}", f"{base / wall:.2f}x"])
        click.echo(f"embed-corpus on Dask: {Path(corpus).name}, median (range) of {repeats} "
                   f"interleaved rounds, {os.cpu_count()} cores (cluster start-up included)")
        click.echo(table(["run", "wall s", "peak RSS MB", "speed-up vs single process"], rows))

        server, env = moto_server()
        s3_url = "s3://bench/news20.zarr"
        s3_wall, _ = _embed(corpus, vectors, s3_url, [], env=env)
        local, s3 = [], []
        for r in range(repeats):  # interleaved: local disk, then S3, each round
            local += _read_throughput(out, 1)
            s3 += _read_throughput(s3_url, 1)
            click.echo(f"[{time.strftime('%H:%M:%S')}] read round {r + 1}/{repeats}: local "
                       f"{local[-1]:,.0f}, S3 {s3[-1]:,.0f} docs/s", err=True)
        server.stop()
        local_rate, s3_rate = median(local), median(s3)
        click.echo("")
        click.echo("store read throughput (tf.data stream of every document, no model), median "
                   f"(range) of {repeats}; writing the store to S3 took {s3_wall:.1f} s")
        click.echo(table(["store", "docs/s", "vs local disk"], [
            ["local disk", f"{local_rate:,.0f} ({min(local):,.0f}-{max(local):,.0f})", "1.00x"],
            ["S3 (moto server on localhost)", f"{s3_rate:,.0f} ({min(s3):,.0f}-{max(s3):,.0f})",
             f"{s3_rate / local_rate:.2f}x"]]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
