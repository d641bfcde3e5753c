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
