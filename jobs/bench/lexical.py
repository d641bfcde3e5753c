"""What the lexical channel costs (make bench-lexical): bytes on disk, and the input pipeline of
models that do not read ids.

On the GloVe 20 Newsgroups store (built with ``token_ids``): the bytes of ``token_ids`` against
the whole store; then the train split streamed through :func:`embcache.dataset` (the producer
process, as training reads it) three ways, interleaved over ``--rounds`` rounds:
- ``no ids``: a model without ids, on the store with ids (the default path);
- ``old store``: the same, on a copy of the store without the lexical channel (as written
  before it existed): the baseline;
- ``with ids``: a model that reads ids (``token_ids=True``).
Prints documents/s (median and range) and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path


def say(message: str) -> None:
    print(f"[bench-lexical {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def array_bytes(store: Path, name: str) -> int:
    return sum(p.stat().st_size for p in (store / name).rglob("*") if p.is_file())


def without_ids(src: Path, dst: Path) -> None:
    """A copy of ``src`` as a store written before the lexical channel."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("token_ids"))
    meta = json.loads((dst / "zarr.json").read_text())
    meta["attributes"].pop("lexical", None)
    meta["attributes"]["chunks"].pop("token_ids", None)
    (dst / "zarr.json").write_text(json.dumps(meta))


def one_pass(store: str, ids: bool) -> float:
    import embcache

    t = time.perf_counter()
    n = 0
    for features, _ in embcache.dataset(store, "train", batch_size=32, token_ids=ids):
        n += int(features["lengths"].shape[0])
    return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    from jobs.bench.common import table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="a GloVe store with the lexical channel")
    p.add_argument("--out", default="bench-out/lexical")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    store, out = Path(a.store), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    ids_bytes, tok_bytes = array_bytes(store, "token_ids"), array_bytes(store, "tokens")
    print(f"token_ids: {ids_bytes / 1e6:.1f} MB = {100 * ids_bytes / total:.2f}% of the store "
          f"({total / 1e6:.1f} MB; tokens {tok_bytes / 1e6:.1f} MB)")
    old = out / "no-ids.zarr"
    without_ids(store, old)
    ways = {"old store": (str(old), False), "no ids": (str(store), False),
            "with ids": (str(store), True)}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    one_pass(str(store), False)  # warm: the OS cache and TensorFlow's first trace
    for r in range(a.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for k in order:
            rates[k].append(one_pass(*ways[k]))
        say(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()))
    base = statistics.median(rates["old store"])
    rows = [[k, f"{statistics.median(v):,.0f}", f"{min(v):,.0f}-{max(v):,.0f}",
             f"{statistics.median(v) / base:.3f}"] for k, v in rates.items()]
    print(table(["train split pass", "docs/s (median)", "range", "vs old store"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
