"""The score job: many models, one embedding pass, one read of the store.

Raw input is embedded once, with the vectors and tokenizer settings of the models' cards, into a
scoring store (temporary, or kept). Then the store is streamed once: every batch goes through
every model before the next batch is read, and its predictions are written out at once. Memory is
bounded by one batch per model plus the prefetch queue, whatever the number of documents.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache.corpus import CorpusSpec
from cache.errors import EmbcacheError, ModelError, StoreError
from cache.meta import StoreMeta
from cache.store import open_store, store_state
from jobs.metrics import Confusion, write_metrics
from jobs.outputs import open_writer, output_format
from jobs.runs import Run, load_run, read_card


@dataclass
class ScoreSummary:
    out: str
    docs: int
    models: list[str]
    seconds: float
    metrics: dict = field(default_factory=dict)
    kept_store: str | None = None

    def line(self) -> str:
        acc = ""
        if self.metrics:
            best = self.metrics.get("ensemble") or next(iter(self.metrics["models"].values()))
            which = "ensemble" if "ensemble" in self.metrics else self.models[0]
            acc = f"; {which} accuracy {best['accuracy']:.3f}, macro-F1 {best['macro_f1']:.3f}"
        n = len(self.models)
        return (f"Scored {self.docs:,} documents with {n} model{'s' if n > 1 else ''} "
                f"({', '.join(self.models)}) in {self.seconds:.1f} s "
                f"({self.docs / max(self.seconds, 1e-9):,.0f} docs/s) -> {self.out}{acc}")


def check_compatible(runs: list[Run]) -> StoreMeta:
    """All models must expect the same embedded values; returns the first one's store metadata."""
    first = runs[0].meta
    for run in runs[1:]:
        diff = first.contract_differences(run.meta)
        if diff:
            raise ModelError(f"Models {runs[0].name} and {run.name} were trained on differently "
                             f"embedded data ({'; '.join(diff)}); score them separately")
    return first


def _model_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        n = seen.get(run.name, 0)
        seen[run.name] = n + 1
        if n:
            run.name = f"{run.name}_{n + 1}"


ENSEMBLES = ("weighted", "mean")


@dataclass(frozen=True)
class ScoreConfig:
    """The score options' defaults, in one place (``score()`` and the CLI read them here)."""

    batch_size: int = 64
    top_k: int = 1
    ensemble: str = ENSEMBLES[0]


def _ensemble_group(runs: list[Run]) -> list[Run]:
    """Models sharing the first model's label set (the ensemble averages their probabilities)."""
    group = [r for r in runs if r.label_names == runs[0].label_names]
    return group if len(group) > 1 else []


def ensemble_weights(group: list[Run], how: str) -> np.ndarray:
    """One weight per model, summing to 1: equal (``mean``) or proportional to each model's
    validation accuracy from its card (``weighted``: a weak model pulls the ensemble less).

    Raises:
        ModelError: ``weighted`` with a card that records no validation accuracy.
    """
    if how not in ENSEMBLES:
        raise EmbcacheError(f"Invalid value for `ensemble`. Expected one of {ENSEMBLES}. "
                            f"Received: ensemble={how!r}")
    if how == "mean":
        return np.full(len(group), 1.0 / len(group))
    acc = []
    for run in group:
        value = (run.card.get("metrics") or {}).get("val_accuracy")
        if not isinstance(value, (int, float)) or value <= 0:
            raise ModelError(f"{run.path / 'model.json'} records no validation accuracy to weight "
                             "the ensemble by; pass --ensemble mean")
        acc.append(float(value))
    return np.asarray(acc) / sum(acc)


def score(
    model_dirs: list[str],
    input_path: str,
    out: str,
    *,
    corpus: CorpusSpec | None = None,
    vectors_path: str | None = None,
    split: str | None = None,
    top_k: int = ScoreConfig.top_k,
    batch_size: int = ScoreConfig.batch_size,
    keep_store: str | None = None,
    metrics_dir: str | None = None,
    progress: bool = True,
    cache_dir: str | None = None,
    ensemble: str = ScoreConfig.ensemble,
) -> ScoreSummary:
    """Score ``input_path`` (a store, or raw documents in ``corpus``'s format) with every model.

    Raises:
        ModelError: missing/tampered cards, unsafe models, incompatible models.
        StoreError, CorpusError, VectorsError: bad input.
        EmbcacheError: bad output path or options.
    """
    t0 = time.perf_counter()
    if not model_dirs:
        raise EmbcacheError("Invalid value for `--models`. Expected one or more run folders.")
    out_path = Path(out)
    fmt = output_format(out_path)
    if not out_path.parent.is_dir():
        raise EmbcacheError(f"Output folder {out_path.parent} does not exist (for --out {out})")
    if metrics_dir is not None:  # checked up front: never predictions without their metrics
        try:
            Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EmbcacheError(f"Cannot use --metrics-dir {metrics_dir}: {e.strerror}") from None
    if top_k < 1:
        raise EmbcacheError(f"Invalid value for `top_k`. Expected a positive integer. Received: top_k={top_k}")
    # Cheap checks first, from the cards alone: a bad card or incompatible models fail before
    # any model loads or any document is embedded.
    runs = [Run(path=Path(d), name=Path(d).name, card=read_card(d), model=None) for d in model_dirs]
    _model_names(runs)
    expected = check_compatible(runs)
    group = _ensemble_group(runs)
    weights = ensemble_weights(group, ensemble) if group else None

    tmp_dir = None
    if store_state(input_path) in ("complete", "incomplete"):
        store = open_store(input_path, require_complete=True)
        diff = expected.contract_differences(store.meta)
        if diff:
            raise StoreError(f"Store {input_path} was embedded differently from what the models "
                             f"expect ({'; '.join(diff)})")
        _load_models(runs)
    else:
        if vectors_path is None:
            raise EmbcacheError(f"Scoring raw documents ({input_path}) needs --vectors: the file "
                                f"the models were trained with ({expected.vectors.source})")
        target = keep_store
        if target is None:
            tmp_dir = tempfile.mkdtemp(prefix="embcache-score-")
            target = os.path.join(tmp_dir, "score.zarr")
        # The one embedding pass overlaps with importing Keras and loading the models.
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                embedding = pool.submit(_embed_input, expected, corpus or CorpusSpec(input_path),
                                        vectors_path, target, progress, cache_dir)
                _load_models(runs)  # on failure, the pool waits for the embedding
                store = embedding.result()
        except BaseException:
            if tmp_dir:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        split = None
    try:
        summary = _score_store(runs, store, out_path, fmt, split=split, top_k=top_k,
                               batch_size=batch_size, metrics_dir=metrics_dir, progress=progress,
                               weights=weights, method=ensemble)
    finally:
        if tmp_dir:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    summary.kept_store = keep_store
    return summary


def _load_models(runs: list[Run]) -> None:
    """Load each run's model (Keras safe mode), reusing the card already read and verified."""
    for run in runs:
        run.model = load_run(run.path, card=run.card).model


def _embed_input(meta: StoreMeta, corpus: CorpusSpec, vectors_path: str, target: str,
                 progress: bool, cache_dir: str | None):
    """Embed raw documents with exactly the models' settings; check the vectors fingerprint."""
    from dataclasses import replace

    from cache.meta import SplitSettings
    from cache.vectors import load_vectors
    from jobs.embed_corpus import embed_corpus

    table = load_vectors(vectors_path, cache_dir=cache_dir)
    if table.fingerprint != meta.vectors.fingerprint:
        raise ModelError(f"Vectors {vectors_path} (fingerprint {table.fingerprint[:12]}) are not "
                         f"the ones the models were trained with ({meta.vectors.source}, "
                         f"fingerprint {meta.vectors.fingerprint[:12]})")
    corpus = replace(corpus, strip_headers=meta.strip_headers)
    embed_corpus(corpus, vectors_path, target, settings=meta.settings,
                 split=SplitSettings(val_frac=0.0, test_frac=0.0), overwrite=True,
                 progress=progress, cache_dir=cache_dir)
    return open_store(target)


def _score_store(runs: list[Run], store, out_path: Path, fmt: str, *, split: str | None,
                 top_k: int, batch_size: int, metrics_dir: str | None,
                 progress: bool, weights: np.ndarray | None = None,
                 method: str = "weighted") -> ScoreSummary:
    from tqdm import tqdm

    from cache.stream import make_dataset, plan_split

    plan = plan_split(store, split)
    if plan.num_docs == 0:
        raise StoreError(f"Store {store.url} has no documents"
                         + (f" in the {split} split" if split else ""))
    labelled = store.labelled
    ensemble = _ensemble_group(runs)
    confusions = {}
    truth_maps = {}
    if labelled:
        names = store.label_names
        for run in runs:
            index = {n: i for i, n in enumerate(run.label_names)}
            truth_maps[run.name] = np.array([index.get(n, -1) for n in names], dtype=np.int64)
            confusions[run.name] = Confusion(run.label_names)
        if ensemble:
            confusions["ensemble"] = Confusion(ensemble[0].label_names)
            truth_maps["ensemble"] = truth_maps[ensemble[0].name]
    # Batches come bucketed by length; `seq` puts each row back at its place in the input.
    ds = make_dataset(store, split=split, batch_size=batch_size, with_labels=labelled, plan=plan,
                      with_seq=True, max_wait=_MAX_WAIT)
    predict = _predict_all([r.model for r in runs], store.dim)
    doc_ids = store.array("doc_ids")
    split_codes = store.array("split")
    columns = ["doc_id"]
    for name in [r.name for r in runs] + (["ensemble"] if ensemble else []):
        for k in range(1, top_k + 1):
            suffix = "" if k == 1 else f"_{k}"
            columns += [f"{name}_label{suffix}", f"{name}_prob{suffix}"]
    ids_iter = _doc_ids_in_order(doc_ids, split_codes, split, store)
    rows = InputOrder(columns[1:])
    bar = tqdm(total=plan.num_docs, unit="doc", disable=not progress, file=sys.stderr,
               desc="score", dynamic_ncols=True)
    _remove_stale_partials(out_path)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with open_writer(tmp, fmt, columns) as writer, contextlib.redirect_stdout(sys.stderr):
            for batch in ds:
                features, labels = batch if labelled else (batch, None)
                seq = features.pop("seq").numpy()
                cols: dict[str, list] = {}
                probs = {}
                for run, p in zip(runs, predict(features)):
                    probs[run.name] = p = p.numpy()
                    _add_topk(cols, run.name, p, run.label_names, top_k)
                if ensemble:
                    p = np.tensordot(weights, np.stack([probs[r.name] for r in ensemble]), axes=1)
                    probs["ensemble"] = p
                    _add_topk(cols, "ensemble", p, ensemble[0].label_names, top_k)
                if labelled:
                    y = labels.numpy()
                    for name, conf in confusions.items():
                        conf.add(truth_maps[name][y], probs[name].argmax(axis=1))
                rows.add(seq, cols)
                ready, n = rows.ready()
                if n:
                    writer.write({"doc_id": [next(ids_iter) for _ in range(n)], **ready})
                bar.update(len(seq))
        if rows.waiting:
            raise StoreError(f"Store {store.url}: {rows.waiting} documents were not scored")
        os.replace(tmp, out_path)  # atomic: a failed run leaves no partial predictions file
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        bar.close()
    metrics = {}
    if labelled:
        how = None
        if ensemble:
            how = {"method": method,
                   "weights": {r.name: round(float(w), 6) for r, w in zip(ensemble, weights)}}
        metrics = write_metrics(confusions, Path(metrics_dir) if metrics_dir else out_path.parent,
                                models=[r.name for r in runs], ensemble=how)
    return ScoreSummary(out=str(out_path), docs=plan.num_docs, models=[r.name for r in runs],
                        seconds=0.0, metrics=metrics)


def _remove_stale_partials(out_path: Path) -> None:
    """Delete hidden partial files of ``out_path`` left by runs that were killed (their process
    is gone); a live concurrent run's file is left alone."""
    for tmp in out_path.parent.glob(f".{out_path.name}.*.tmp"):
        pid = tmp.name[len(out_path.name) + 2:-len(".tmp")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except PermissionError:  # another user's live process
            pass


# A bucket's short batch leaves once its oldest document has waited this many documents: rows
# wait at most that long to be written in input order (memory: that many rows of predictions).
_MAX_WAIT = 4096


class InputOrder:
    """Prediction rows arrive by length bucket; ``ready()`` releases them in input order."""

    def __init__(self, columns: list[str]):
        self.columns, self.rows, self.next = columns, {}, 0

    def add(self, seq: np.ndarray, cols: dict[str, list]) -> None:
        values = [cols[c] for c in self.columns]
        for j, s in enumerate(seq.tolist()):
            self.rows[s] = tuple(v[j] for v in values)

    def ready(self) -> tuple[dict[str, list], int]:
        out: list[tuple] = []
        while self.next in self.rows:
            out.append(self.rows.pop(self.next))
            self.next += 1
        return {c: [r[i] for r in out] for i, c in enumerate(self.columns)}, len(out)

    @property
    def waiting(self) -> int:
        return len(self.rows)


def _predict_all(models: list, dim: int):
    """One compiled function running every model on a batch of any size and length: traced once,
    whatever shapes the length buckets give (``predict_on_batch`` would trace per shape)."""
    import tensorflow as tf

    spec = {"embedded": tf.TensorSpec([None, None, dim], tf.float32),
            "lengths": tf.TensorSpec([None], tf.int32)}

    @tf.function(input_signature=[spec])
    def predict(features):
        return [m(features, training=False) for m in models]

    return predict


def _doc_ids_in_order(doc_ids, split_codes, split: str | None, store):
    """Document ids in stream order (the store's order, filtered by split), chunk by chunk."""
    from cache.store import SPLIT_NAMES

    c = store.chunk_docs
    for start in range(0, store.num_docs, c):
        ids = doc_ids[start:start + c]
        if split is not None:
            ids = ids[split_codes[start:start + c] == SPLIT_NAMES.index(split)]
        yield from (str(i) for i in ids)


def _add_topk(cols: dict, name: str, probs: np.ndarray, label_names: list[str], k: int) -> None:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    for j in range(k):
        suffix = "" if j == 0 else f"_{j + 1}"
        idx = order[:, j] if j < probs.shape[1] else None
        cols[f"{name}_label{suffix}"] = ([label_names[i] for i in idx] if idx is not None
                                         else [""] * len(probs))
        cols[f"{name}_prob{suffix}"] = (np.round(probs[np.arange(len(probs)), idx], 6).tolist()
                                        if idx is not None else [None] * len(probs))


def dump_metrics_table(metrics: dict) -> str:
    rows = [("model", "accuracy", "macro-F1", "docs")]
    entries = list(metrics.get("models", {}).items())
    if "ensemble" in metrics:
        entries.append(("ensemble", metrics["ensemble"]))
    for name, m in entries:
        rows.append((name, f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", f"{m['docs']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)

