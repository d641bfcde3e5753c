"""``make bench-shards``: sharded stores (``--shard-blocks K``) against unsharded ones, in one run.

For each K: the objects and bytes a 20 Newsgroups store holds, embed-corpus's wall time (each run
a fresh process, variants interleaved), then read throughput of a whole pass (the tf.data stream
of every document, no model) from local disk and from a local S3 endpoint (moto's server), with
the GET requests one pass makes (counted in-process over every block's rows), and verify's time.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from jobs.bench.common import median, moto_server, run_measured, table


def _embed(corpus: str, vectors: str, out: str, k: int, env=None) -> float:
    argv = [sys.executable, "-m", "embcache.jobs.cli", "embed-corpus", "--corpus", corpus,
            "--vectors", vectors, "--out", out, "--strip-headers", "--overwrite", "-q",
            "--shard-blocks", str(k)]
    return run_measured(argv, env=env)[0]


def _objects(url: str) -> tuple[int, float]:
    """(objects, MB) under a store: a directory walk, or an S3 listing."""
    if url.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem()
        sizes = fs.du(url.removeprefix("s3://"), total=False)
        fs.invalidate_cache()
        return len(sizes), sum(sizes.values()) / 1e6
    files = [p for p in Path(url).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 1e6


def _pass_rate(url: str) -> float:
    """Documents per second of one pass streamed through streamed_dataset (all documents)."""
    from embcache.cache.dataset import Batching, streamed_dataset
    from embcache.cache.store import open_store

    store = open_store(url)
    t = time.perf_counter()
    n = sum(int(f["lengths"].shape[0]) for f, _ in streamed_dataset(
        store, None, batching=Batching(batch_size=64)))
    return n / (time.perf_counter() - t)


def _requests(url: str) -> int:
    """GET requests of one in-process pass over every block's rows (``tokens``, ``offsets``,
    ``lengths``): zarr's store ``get`` counted, as the reader calls it, block by block."""
    import zarr.storage

    from embcache.cache.store import open_store

    calls = [0]
    cls = zarr.storage.FsspecStore if url.startswith("s3://") else zarr.storage.LocalStore
    original = cls.get

    async def counted(self, *a, **kw):
        calls[0] += 1
        return await original(self, *a, **kw)

    cls.get = counted  # type: ignore[method-assign]
    try:
        store = open_store(url)
        meta = store.meta
        calls[0] = 0
        for b in range(meta.num_chunks):
            first, stop = b * meta.chunk_docs, min((b + 1) * meta.chunk_docs, meta.num_docs)
            lengths = store.read("lengths", first, stop)
            store.read("offsets", first, stop)
            start = b * meta.block_rows
            store.read("tokens", start, start + int(lengths.sum()))
    finally:
        cls.get = original  # type: ignore[method-assign]
    return calls[0]


def _verify_seconds(url: str) -> float:
    from embcache import verify

    t = time.perf_counter()
    report = verify(url)
    assert report.ok, report.lines()
    return time.perf_counter() - t


def _log(msg: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


@click.command()
@click.option("--corpus", required=True)
@click.option("--vectors", required=True)
@click.option("--blocks", default="0,4,8,16,32", show_default=True,
              help="The --shard-blocks values to compare (0: unsharded, the baseline).")
@click.option("--s3-blocks", default="0,8,16", show_default=True,
              help="The values also written to and read from the local S3.")
@click.option("--rounds", default=3, show_default=True)
def main(corpus, vectors, blocks, s3_blocks, rounds):
    """Benchmark sharded against unsharded stores: objects, embed, reads, verify."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ks = [int(k) for k in blocks.split(",")]
    s3_ks = [int(k) for k in s3_blocks.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    server = None
    try:
        local = {k: str(work / f"k{k}.zarr") for k in ks}
        _embed(corpus, vectors, local[ks[0]], ks[0])  # warm the vectors cache
        walls: dict[int, list[float]] = {k: [] for k in ks}
        for r in range(rounds):  # interleaved: every K once per round
            for k in ks:
                walls[k].append(_embed(corpus, vectors, local[k], k))
                _log(f"embed round {r + 1}/{rounds}: --shard-blocks {k} {walls[k][-1]:.1f} s")
        server, env = moto_server()
        remote = {k: f"s3://bench/k{k}.zarr" for k in s3_ks}
        s3_walls = {}
        for k in s3_ks:
            s3_walls[k] = _embed(corpus, vectors, remote[k], k, env=env)
            _log(f"embed to S3: --shard-blocks {k} {s3_walls[k]:.1f} s")
        variants = [(f"local, K={k}", local[k]) for k in ks] + [
            (f"S3, K={k}", remote[k]) for k in s3_ks]
        rates: dict[str, list[float]] = {name: [] for name, _ in variants}
        verifies: dict[str, list[float]] = {name: [] for name, _ in variants}
        _pass_rate(variants[0][1])  # warm-up: TensorFlow's and the producer's first start
        for r in range(rounds):
            for name, url in variants:
                rates[name].append(_pass_rate(url))
                verifies[name].append(_verify_seconds(url))
                _log(f"read round {r + 1}/{rounds}: {name} {rates[name][-1]:,.0f} docs/s, "
                     f"verify {verifies[name][-1]:.2f} s")
        base_objects, base_mb = _objects(local[0] if 0 in local else local[ks[0]])
        rows = []
        for k in ks:
            n, mb = _objects(local[k])
            w = walls[k]
            rows.append([k or "0 (unsharded)", f"{n:,}", f"{base_objects / n:.1f}x", f"{mb:,.1f}",
                         f"{median(w):.1f} ({min(w):.1f}-{max(w):.1f})",
                         f"{median(walls[ks[0]]) / median(w):.2f}x"])
        click.echo(f"20 Newsgroups, GloVe 50d float16: objects and embed-corpus wall time, median "
                   f"(range) of {rounds} interleaved rounds, {os.cpu_count()} cores")
        click.echo(table(["--shard-blocks", "objects", "fewer objects", "MB", "embed s",
                          "embed speed vs unsharded"], rows))
        click.echo("")
        base = median(rates[variants[0][0]])
        rows = []
        for name, url in variants:
            xs, vs = rates[name], verifies[name]
            count = _objects(url)[0] if url.startswith("s3://") else ""
            rows.append([name, f"{median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})",
                         f"{median(xs) / base:.2f}x", f"{_requests(url):,}",
                         f"{median(vs):.2f} ({min(vs):.2f}-{max(vs):.2f})", count])
        click.echo(f"read throughput (tf.data stream of every document, no model), GET requests of "
                   f"one pass over every block's rows, verify; median (range) of {rounds} "
                   "interleaved rounds")
        click.echo(table(["store", "docs/s", f"vs {variants[0][0]}", "GETs per pass", "verify s",
                          "S3 objects"], rows))
        click.echo("embed to S3 (one run each): " + ", ".join(
            f"K={k} {s:.1f} s" for k, s in s3_walls.items()))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
