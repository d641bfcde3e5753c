"""Batch scoring on Dask (``score --scheduler``, ``Scorer.write(..., scheduler=...)``).

The store's documents are cut into **parts** of whole blocks (``PART_DOCS`` documents, aligned
to every representation's chunks). Each Dask task scores one part with the same loop as a
single process (:meth:`embcache.jobs.score_loop.LoopMixin._rows`) and returns it as a Parquet
file's bytes; the driver writes each into ``<out>.parts/`` as it arrives (written aside and
renamed: a part is whole or absent), so workers on other machines need no shared file system
for the output. The models are loaded once per worker process (``_SCORERS``), not per task.
The driver then assembles the parts, in the store's order, into ``out`` (CSV, JSONL or
Parquet, renamed into place) and computes the metrics from the assembled rows; the parts
folder is removed once ``out`` is whole.

A stopped run resumes: the parts folder records what it scores (``job.json``: the runs' cards,
the input, the split and the columns); a rerun with the same job skips the parts already
written, and a different job starts the folder afresh.

Memory: on a worker, its models, one batch per model and one part's predictions (streamed
into a temporary Parquet file, then sent); on the driver, the plans (a few bytes per chunk), the
parts' bytes as they arrive (each released once written) and one part's rows while assembling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embcache.cache.errors import EmbcacheError, StrPath, writing
from embcache.cache.plan import StreamPlan, plan_split
from embcache.jobs.outputs import ScoreSummary, open_writer
from embcache.jobs.score_loop import Output

# Documents per task (the default of `part_docs`), rounded up to whole chunks of every
# representation: large enough that a part's short batches (one per length bucket at its end)
# cost little, small enough that `local:2` has many parts to balance over and a stopped run
# loses little.
PART_DOCS = 16384


def check_part_docs(part_docs: int) -> int:
    if isinstance(part_docs, bool) or not isinstance(part_docs, int) or part_docs < 1:
        raise EmbcacheError("Invalid value for `part_docs`. Expected a positive integer. "
                            f"Received: part_docs={part_docs!r}")
    return part_docs


@dataclass(frozen=True)
class ScorerSpec:
    """What a worker needs to rebuild the driver's :class:`~embcache.jobs.score.Scorer`: the
    run folders (a fitted ensemble's card folder among them), the other representations'
    stores and the scoring options. Hashable: the worker's cache key."""

    runs: tuple[str, ...]
    stores: tuple[str, ...]
    batch_size: int
    ensemble: str
    precision: str


@dataclass(frozen=True)
class Part:
    """Documents ``first <= i < stop`` of the pass, and each store's plan of their chunks."""

    index: int
    first: int
    stop: int
    plans: tuple[StreamPlan, ...]

    @property
    def docs(self) -> int:
        return self.plans[0].num_docs

    def file(self, folder: Path) -> Path:
        return folder / f"part-{self.index:06d}.parquet"


# Per worker process, for the job now running (its id: the driver's host, pid and start time):
# its models, loaded once, and its stores, opened (their chunks listed) once. A later job starts
# afresh, so a run folder or store replaced between jobs is never served stale.
_SCORERS: dict[tuple[str, ScorerSpec], Any] = {}
_STORES: dict[str, Any] = {}


def _worker_scorer(make: Callable[..., Any], spec: ScorerSpec, job: str, threads: int | None):
    """This worker's scorer for ``spec`` (``make``: the driver's scorer class), loaded on its
    first task. ``threads``: TensorFlow's threads in this process (a local cluster's workers
    share the machine's cores), set before TensorFlow starts its runtime."""
    scorer = _SCORERS.get((job, spec))
    if scorer is None:
        if threads and not _SCORERS:
            import tensorflow as tf

            with contextlib.suppress(RuntimeError):  # the runtime had started: keep its pools
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
        _SCORERS.clear()  # one job's models and stores at a time
        _STORES.clear()
        scorer = _SCORERS[(job, spec)] = make(list(spec.runs), stores=list(spec.stores),
                                         batch_size=spec.batch_size, ensemble=spec.ensemble,
                                         precision=spec.precision)
    return scorer


def score_part(make: Callable[..., Any], spec: ScorerSpec, job: str, urls: list[str],
               split: str | None, part: Part, output: Output, columns: list[str],
               threads: int | None) -> bytes:
    """A Dask task: score one part; returns it as a Parquet file's bytes, which the driver
    writes into the parts folder (so workers on other machines need no shared file system for
    the output; memory: one part's predictions). ``make``: the driver's scorer class (it
    travels by reference)."""
    import tempfile

    from embcache.cache.store import open_store

    scorer = _worker_scorer(make, spec, job, threads)
    stores = []
    for u in urls:  # opened (and their chunks listed against the manifest) once per worker
        if u not in _STORES:
            _STORES[u] = open_store(u, require_complete=True)
        stores.append(_STORES[u])
    fd, name = tempfile.mkstemp(prefix="embcache-part-", suffix=".parquet")
    os.close(fd)
    tmp = Path(name)
    try:
        with open_writer(tmp, "parquet", columns) as writer:
            # in this process: a worker is a process per core already (and may be daemonic)
            for ids, cols in scorer._rows(stores, split, output, plans=list(part.plans),
                                          docs=(part.first, part.stop), in_process=True):
                writer.write({"doc_id": ids, **cols})
        return tmp.read_bytes()
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_part(folder: Path, part: Part, data: bytes) -> None:
    """A part's Parquet bytes into the parts folder, written aside and renamed (whole or
    absent)."""
    target = part.file(folder)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def make_parts(stores: list, split: str | None, part_docs: int) -> list[Part]:
    """The pass cut into parts of whole chunks of every store (one scan per store's split);
    parts without a document of ``split`` are left out."""
    unit = math.lcm(*(s.chunk_docs for s in stores))
    size = max(1, -(-part_docs // unit)) * unit
    full = [plan_split(s, split) for s in stores]
    parts = []
    for index, first in enumerate(range(0, stores[0].num_docs, size)):
        stop = min(first + size, stores[0].num_docs)
        plans = tuple(p.within(first // s.chunk_docs, -(-stop // s.chunk_docs))
                      for p, s in zip(full, stores))
        if plans[0].num_docs:
            parts.append(Part(index, first, stop, plans))
    return parts


def job_inputs(spec: ScorerSpec, stores: list) -> list[str]:
    """What the parts depend on, as text: each run's (or fitted ensemble's) card and each
    store's attributes (a retrained run or a rebuilt store at the same path changes them)."""
    cards = [(Path(r) / name).read_text() for r in spec.runs
             for name in ("model.json", "ensemble.json") if (Path(r) / name).is_file()]
    return cards + [json.dumps(s.meta.to_attrs(), sort_keys=True, default=str) for s in stores]


def job_key(spec: ScorerSpec, urls: list[str], split: str | None, columns: list[str],
            cards: list[str], part_docs: int) -> dict:
    """What the parts folder holds parts of: a rerun resumes only the same job (``cards``: the
    runs' cards and the stores' attributes, as text)."""
    digest = hashlib.sha256("\n".join(cards).encode()).hexdigest()
    return {"runs": list(spec.runs), "cards_sha256": digest, "stores": urls, "split": split,
            "columns": columns, "batch_size": spec.batch_size, "precision": spec.precision,
            "part_docs": part_docs}


def parts_folder(out_path: Path, key: dict) -> tuple[Path, bool]:
    """``<out>.parts/`` for this job, created or kept: ``True`` when it resumes an earlier run of
    the same job (its finished parts are kept), ``False`` when it starts afresh (parts of
    another job are removed)."""
    folder = out_path.with_name(out_path.name + ".parts")
    manifest = folder / "job.json"
    if manifest.exists():
        try:
            same = json.loads(manifest.read_text()) == key
        except ValueError:
            same = False
        if same:
            return folder, True
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest.write_text(json.dumps(key, indent=1))
    return folder, False


def run_parts(client, make: Callable[..., Any], spec: ScorerSpec, urls: list[str],
              split: str | None, parts: list[Part], output: Output, columns: list[str],
              folder: Path, threads: int | None, bar=None) -> None:
    """Submit every part not yet written; wait for all. A task's own error (a bad store, a
    model that fails) is raised as it is; a worker that cannot run embcache at all is one
    line."""
    from distributed import as_completed

    from embcache.cache.hooks import pause_point

    todo = [p for p in parts if not p.file(folder).exists()]
    if bar is not None:
        bar.update(sum(p.docs for p in parts) - sum(p.docs for p in todo))
    job = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    futures = {client.submit(score_part, make, spec, job, urls, split, p, output, columns,
                             threads, pure=False, key=f"embcache-score-part-{p.index}-{job}"): p
               for p in todo}
    try:
        for future in as_completed(futures):
            try:
                write_part(folder, futures[future], future.result())
                future.release()  # its bytes leave the cluster's memory
            except EmbcacheError:
                raise
            except (ImportError, AttributeError) as e:  # no (or another) embcache there
                raise EmbcacheError(f"A Dask worker could not run embcache's scoring task "
                                    f"({type(e).__name__}: {e}); install the same embcache on "
                                    "every worker") from None
            except Exception as e:  # noqa: BLE001 - any other failure of a task: one line
                raise EmbcacheError(f"A scoring task failed on a Dask worker "
                                    f"({type(e).__name__}: {e})") from None
            if bar is not None:
                bar.update(futures[future].docs)
            pause_point("score:part-written")
    finally:
        client.cancel(list(futures))


def assemble(folder: Path, parts: list[Part], out_path: Path, fmt: str, columns: list[str],
             on_rows=None) -> int:
    """The parts, in order, into ``out_path`` (written aside and renamed); ``on_rows(cols)``
    sees each part's columns (the metrics). Memory: one part's rows."""
    import pyarrow.parquet as pq

    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    docs = 0
    try:
        with writing(f"predictions {out_path}"), open_writer(tmp, fmt, columns) as writer:
            for part in parts:
                cols = pq.read_table(part.file(folder)).to_pydict()
                writer.write(cols)
                docs += len(cols["doc_id"])
                if on_rows is not None:
                    on_rows(cols)
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return docs


def confusions_from_rows(runs: list, group: list, labels: list[str]):
    """``(confusions, on_rows)``: per model (and the ensemble), a confusion matrix filled from
    the assembled rows' ``true_label`` and ``<name>_label`` columns, as the single-process loop
    fills it from the probabilities (the top label is the argmax)."""
    from embcache.jobs.metrics import Confusion

    named = [(r.name, r.label_names) for r in runs]
    if group:
        named.append(("ensemble", group[0].label_names))
    confusions = {name: Confusion(label_names) for name, label_names in named}
    index = {name: {n: i for i, n in enumerate(label_names)} for name, label_names in named}

    def on_rows(cols: dict) -> None:
        for name, _ in named:
            truth = np.array([index[name].get(t, -1) for t in cols["true_label"]], np.int64)
            pred = np.array([index[name][p] for p in cols[f"{name}_label"]], np.int64)
            confusions[name].add(truth, pred)

    return confusions, on_rows


def note(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr)


def distributed_write(scorer, stores: list, split: str | None, out_path: Path, fmt: str,
                      output: Output, scheduler: tuple[str, int | str], progress: bool,
                      labelled_metrics: bool, part_docs: int) -> tuple[int, dict]:
    """Score ``stores`` (one per view, joined) on the Dask ``scheduler`` into ``out_path``;
    returns the documents written and the confusions (empty unless ``labelled_metrics``)."""
    from tqdm.auto import tqdm

    from embcache.jobs.executors import dask_client

    urls = [shared_path(str(s.url)) for s in stores]
    if any(u.startswith("memory://") for u in urls):
        raise EmbcacheError(f"Store {next(u for u in urls if u.startswith('memory://'))} lives in "
                            "this process only; Dask workers cannot read it: write it to a path "
                            "or URL they share")
    columns = scorer.columns(output, truth=stores[0].labelled)
    spec = scorer.spec()
    parts = make_parts(stores, split, part_docs)
    if not parts:
        from embcache.cache.errors import StoreError

        raise StoreError(f"Store {urls[0]} has no documents"
                         + (f" in the {split} split" if split else ""))
    cards = job_inputs(spec, stores)
    folder, resumed = parts_folder(out_path, job_key(spec, urls, split, columns, cards, part_docs))
    done = sum(p.file(folder).exists() for p in parts)
    note(f"Scoring {sum(p.docs for p in parts):,} documents in {len(parts)} parts on "
         f"{scheduler[0]}:{scheduler[1]}" + (f"; resuming: {done} parts already written"
                                              if resumed and done else ""), progress)
    bar = tqdm(total=sum(p.docs for p in parts), unit="doc", disable=not progress,
               file=sys.stderr, desc="score", dynamic_ncols=True)
    with contextlib.closing(bar), dask_client(scheduler) as client:
        # a local cluster's N workers share this machine's cores
        threads = max(1, (os.cpu_count() or 1) // int(scheduler[1])) \
            if scheduler[0] == "local" else None
        run_parts(client, type(scorer), spec, urls, split, parts, output, columns, folder,
                  threads, bar)
    confusions: dict = {}
    on_rows = None
    if labelled_metrics:
        confusions, on_rows = confusions_from_rows(scorer.runs, scorer.group,
                                                   stores[0].label_names)
    docs = assemble(folder, parts, out_path, fmt, columns, on_rows)
    shutil.rmtree(folder, ignore_errors=True)
    return docs, confusions


def stores_reachable(scheduler: tuple[str, int | str], raw: bool,
                          keep_store: str | None, views: int) -> None:
    """Raw input is embedded here first; a remote scheduler's workers must read that store, so
    it must be named (``keep_store``, a path or URL they share) and be the only one."""
    if scheduler[0] == "remote" and raw and (keep_store is None or views > 1):
        raise EmbcacheError("Scoring raw input on a remote Dask scheduler needs `keep_store=` "
                            "(a store path or URL the workers can read) and runs of one "
                            "representation; or embed it first (embed-corpus) and score the "
                            "store")


def shared_path(run: StrPath) -> str:
    """A run folder as a worker process finds it: absolute where it is a local path."""
    text = os.fspath(run)
    return os.path.abspath(text) if "://" not in text and os.path.exists(text) else text


class DistributedMixin:
    """:meth:`Scorer.write` on Dask. A mixin of :class:`embcache.jobs.score.Scorer` (whose
    ``_as_stores`` and ``_summary`` it uses)."""

    _run_args: list[str]
    stores: list[str]
    batch_size: int
    ensemble: str
    precision: str

    def spec(self) -> ScorerSpec:
        """What a Dask worker rebuilds this scorer from (:mod:`embcache.jobs.score_dask`)."""
        return ScorerSpec(runs=tuple(self._run_args),
                          stores=tuple(shared_path(u) for u in self.stores),
                          batch_size=self.batch_size, ensemble=self.ensemble,
                          precision=self.precision)

    def _write_distributed(self: Any, data, out_path: Path, fmt: str, output: Output,
                           parsed: tuple[str, int | str], t0: float, *, split: str | None,
                           corpus: Any, keep_store: str | None,
                           metrics_dir: str | None, progress: bool,
                           part_docs: int) -> ScoreSummary:
        """:meth:`write` on Dask (:func:`embcache.jobs.score_dask.distributed_write`)."""
        from embcache.cache.store import Store, store_state

        raw = not (isinstance(data, Store) or store_state(str(data)) in ("complete",
                                                                        "incomplete"))
        stores_reachable(parsed, raw, keep_store, len(self.views))
        with self._as_stores(data, split, corpus=corpus, keep_store=keep_store,
                             progress=progress) as stores:
            docs, confusions = distributed_write(self, stores, split, out_path, fmt, output,
                                                 parsed, progress, stores[0].labelled,
                                                 part_docs)
        summary: ScoreSummary = self._summary(out_path, docs, confusions, metrics_dir, t0)
        return summary
