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

With ``--train-rounds N``, also the lexical model's training speed (``tfidf``, ``--train-epochs``
epochs, samples/s as the train job reports it), three ways interleaved over N rounds:
- ``dense reads``: the kernel and Adam's moments read whole on every step (``tf.gather`` of the
  variable, as before the fix; a variable updated by a scatter is copied whole by every such
  read) and the vectors read with the ids: the baseline, reproduced by patching both back in;
- ``sparse reads``: only the touched rows read (``ResourceGather``), vectors still read;
- ``ids only``: sparse reads, and a group of lexical models reads the ids alone (today's path).
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


def pipeline_ways(store: Path, rounds: int, out: Path) -> None:
    from jobs.bench.common import table

    old = out / "no-ids.zarr"
    without_ids(store, old)
    ways = {"old store": (str(old), False), "no ids": (str(store), False),
            "with ids": (str(store), True)}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    one_pass(str(store), False)  # warm: the OS cache and TensorFlow's first trace
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for k in order:
            rates[k].append(one_pass(*ways[k]))
        say(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()))
    base = statistics.median(rates["old store"])
    rows = [[k, f"{statistics.median(v):,.0f}", f"{min(v):,.0f}-{max(v):,.0f}",
             f"{statistics.median(v) / base:.3f}"] for k, v in rates.items()]
    print(table(["train split pass", "docs/s (median)", "range", "vs old store"], rows))


def _train_way(store: str, way: str, epochs: int, out: Path) -> float:
    """Samples/s of one ``tfidf`` training run in ``way`` (see the module docstring)."""
    from unittest import mock

    import embcache
    from embcache.jobs import train as train_job
    from embcache.models import layers, optimizers

    def dense_rows(variable, rows):  # the code before the fix: a whole read, then a gather
        import tensorflow as tf

        return tf.gather(tf.convert_to_tensor(variable), rows)

    patches = []
    if way == "dense reads":
        patches += [mock.patch.object(layers, "sparse_rows", dense_rows),
                    mock.patch.object(optimizers, "sparse_rows", dense_rows)]
    if way in ("dense reads", "sparse reads"):
        patches.append(mock.patch.object(train_job, "takes_vectors", lambda model: True))
    for patch in patches:
        patch.start()
    try:
        s = embcache.train(store, "tfidf", str(out / "tfidf"), overwrite=True, progress=False,
                           config={"epochs": epochs, "patience": epochs})
    finally:
        for patch in patches:
            patch.stop()
    return s.samples_per_s


def train_ways(store: str, rounds: int, epochs: int, out: Path) -> None:
    from jobs.bench.common import table

    ways = ("dense reads", "sparse reads", "ids only")
    rates: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(rounds):
        for k in (ways if r % 2 == 0 else reversed(ways)):
            rates[k].append(_train_way(store, k, epochs, out))
            say(f"train round {r + 1}/{rounds}: {k} {rates[k][-1]:,.0f} samples/s")
    base = statistics.median(rates["dense reads"])
    rows = [[k, f"{statistics.median(v):,.0f}", f"{min(v):,.0f}-{max(v):,.0f}",
             f"{statistics.median(v) / base:.2f}x"] for k, v in rates.items()]
    print(table([f"tfidf training, {epochs} epochs", "samples/s (median)", "range",
                 "vs dense reads"], rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="a GloVe store with the lexical channel")
    p.add_argument("--out", default="bench-out/lexical")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--train-rounds", type=int, default=0,
                   help="also time tfidf training three ways over this many rounds")
    p.add_argument("--train-epochs", type=int, default=2)
    a = p.parse_args(argv)
    store, out = Path(a.store), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    ids_bytes, tok_bytes = array_bytes(store, "token_ids"), array_bytes(store, "tokens")
    print(f"token_ids: {ids_bytes / 1e6:.1f} MB = {100 * ids_bytes / total:.2f}% of the store "
          f"({total / 1e6:.1f} MB; tokens {tok_bytes / 1e6:.1f} MB)")
    if a.rounds:
        pipeline_ways(store, a.rounds, out)
    if a.train_rounds:
        train_ways(str(store), a.train_rounds, a.train_epochs, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
