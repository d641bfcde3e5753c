"""Measuring helpers shared by the benchmarks: a child process's wall time and peak RSS."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def run_measured(argv: list[str], env: dict | None = None,
                 echo_stderr: bool = False) -> tuple[float, float, str]:
    """Run ``argv``; return (wall seconds, peak RSS of the whole process tree in MB, stdout).

    RSS is sampled every 20 ms over the child and all its descendants (worker processes too).
    ``echo_stderr``: the child's stderr goes straight to ours (its progress lines).
    """
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=None if echo_stderr else subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{(err or '')[-2000:]}")
    return wall, peak / 1e6, out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def moto_server() -> tuple[object, dict[str, str]]:
    """A local S3-compatible endpoint (moto's server on a free port) with a bucket ``bench``;
    returns the server (``.stop()`` it) and the environment that reaches it (also set in this
    process's ``os.environ``, for the in-process readers)."""
    import logging
    import os
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return server, {**os.environ, **env}
