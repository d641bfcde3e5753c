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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import EmbcacheError, ModelError, StoreError, writing
from embcache.cache.hooks import pause_point
from embcache.cache.locks import reading
from embcache.cache.precision import Precision, check_precision, precision_line
from embcache.cache.store import SPLIT_NAMES, Store, open_store, store_state
from embcache.cache.tfenv import quiet_tensorflow
from embcache.jobs.ensemble import (
    ENSEMBLES,
    EnsembleFit,
    ensemble_group,
    ensemble_weights,
    expand_ensembles,
    fit_ensemble,
    pool,
    unique_names,
    write_ensemble,
)
from embcache.jobs.metrics import Confusion, write_metrics
from embcache.jobs.outputs import open_writer, output_format
from embcache.jobs.predict import doc_ids_in_order
from embcache.jobs.runs import Run, load_run, read_card
from embcache.jobs.views import make_views


@dataclass
class ScoreSummary:
    out: str
    docs: int
    models: list[str]
    seconds: float
    metrics: dict = field(default_factory=dict)
    kept_store: str | None = None
    ensemble_card: str | None = None  # the fitted ensemble's card (``ensemble="fit"``)

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


@dataclass(frozen=True)
class ScoreConfig:
    """The score options' defaults, in one place (``score()`` and the CLI read them here)."""

    batch_size: int = 64
    top_k: int = 1
    ensemble: str = ENSEMBLES[0]
    precision: str = "auto"  # each model as it trained (see Scorer), float32 where bf16 is not native


class Scorer:
    """Models loaded once, then used again and again: classify lists of strings, raw document
    files or stores in the same process (a notebook, a service, a batch job's loop).

    Example::

        scorer = embcache.Scorer(["runs/cnn", "runs/fasttext"], vectors="glove.6B.50d.txt.gz")
        scorer.classify(["The Senate passed the bill", "He scored twice in the final"])
        scorer.classify("news20.zarr", split="test")

    Each run folder's card is verified (checksums) before anything it names is imported or
    loaded; models load in Keras safe mode; every model runs on each batch through one compiled
    function, traced once. The vectors (needed for text and raw files, not for stores) are
    loaded on first use, memory-mapped from the vectors cache.

    Args:
        runs: run folders from ``embcache train``; their models must have been trained on
            identically embedded data.
        vectors: the vectors file, or static subword table (a model2vec or StaticEmbedding
            folder, or a table file), the models were trained with (checked by fingerprint).
        tokenizer: with a subword table file: its tokenizer.json (checked by sha256).
        encoder: for models trained on a transformer encoder's store: that encoder (a folder,
            .zip or preset name; checked by fingerprint, its weights and vocabulary included).
        ensemble: ``"weighted"`` (by each card's validation accuracy) or ``"mean"``; models sharing
            the first model's labels are averaged into an ``ensemble`` column.
        precision: ``"auto"`` runs each model as it trained (a bfloat16 one in float32 where
            bfloat16 is not native); ``"float32"``/``"bfloat16"`` converts every model.

    Raises:
        ModelError: a missing, tampered or foreign card, an unsafe model, incompatible models,
            a model module that cannot be imported.
    """

    def __init__(self, runs: Sequence[str | Path], *, vectors: str | Sequence[str] | None = None,
                 encoder: str | None = None, tokenizer: str | None = None,
                 cache_dir: str | None = None,
                 batch_size: int = ScoreConfig.batch_size,
                 ensemble: str = ScoreConfig.ensemble, load: bool = True,
                 stores: Sequence[str] | None = None, precision: str = ScoreConfig.precision):
        if isinstance(runs, (str, Path)):
            runs = [runs]
        if not runs:
            raise EmbcacheError("Invalid value for `runs` (--models). Expected one or more run "
                                "folders.")
        if batch_size < 1:
            raise EmbcacheError("Invalid value for `batch_size`. Expected a positive integer. "
                                f"Received: batch_size={batch_size}")
        # Cheap checks first, from the cards alone: a bad card or incompatible models fail
        # before any model loads or any document is embedded.
        paths, self.fitted = expand_ensembles(runs)
        self.runs = [Run(path=Path(d), name=Path(d).name, card=read_card(d), model=None)
                     for d in paths]
        unique_names(self.runs)
        self.views = make_views(self.runs, vectors=vectors, encoder=encoder, tokenizer=tokenizer,
                                cache_dir=cache_dir)
        self.meta = self.views[0].meta
        self.stores = [str(s) for s in (stores or [])]
        if self.fitted is not None:
            ensemble = "fit"
        self.group = ensemble_group(self.runs)
        # "fit": equal weights until :meth:`fit` has learnt the pool on the validation split.
        self.weights = (ensemble_weights(self.group, "mean" if ensemble == "fit" else ensemble)
                        if self.group else None)
        if self.fitted is not None and [r.name for r in self.group] != self.fitted.members:
            raise ModelError(f"The ensemble's members ({', '.join(self.fitted.members)}) do not "
                             "share one label set; fit it again")
        self.ensemble, self.batch_size = ensemble, batch_size
        self.cache_dir = cache_dir
        self.precision = check_precision(precision)
        self.precisions: dict[str, Precision] = {}  # per model, once loaded
        if load:
            self.load()

    def precision_line(self) -> str:
        """``Precision: ...`` of the loaded models (see :func:`precision_line`)."""
        return precision_line(list(self.precisions.items()))

    @property
    def names(self) -> list[str]:
        """The models' column names (run folder names, made unique)."""
        return [r.name for r in self.runs]

    def load(self) -> None:
        """Load every model (once) and build, per representation, the compiled function that
        runs its models."""
        quiet_tensorflow()
        from embcache.models.precision import for_scoring

        for run in self.runs:
            if run.model is None:
                run.model, self.precisions[run.name] = for_scoring(
                    load_run(run.path, card=run.card).model, self.precision)
        for view in self.views:
            view.load()

    def columns(self, top_k: int, truth: bool = False) -> list[str]:
        """The output's columns; ``truth``: a labelled store's true label, after ``doc_id``."""
        cols = ["doc_id"] + (["true_label"] if truth else [])
        for name in self.names + (["ensemble"] if self.group else []):
            for k in range(1, top_k + 1):
                suffix = "" if k == 1 else f"_{k}"
                cols += [f"{name}_label{suffix}", f"{name}_prob{suffix}"]
        return cols

    def classify(self, data, *, split: str | None = None, top_k: int = 1,
                 progress: bool = False):
        """Classify ``data`` and return a ``pandas.DataFrame``, one row per document in input
        order: ``doc_id`` (a Series' index is kept as it), ``true_label`` for a labelled store,
        then ``<model>_label`` and ``<model>_prob`` for each model (and ``_2``... up to
        ``top_k``), and the ``ensemble`` columns.

        Args:
            data: a list of strings (``doc_id`` is the position), a store (path, URL or
                :class:`~embcache.cache.store.Store`; ``split`` picks one of its splits), or a
                raw document file or folder (embedded into a temporary store first). With runs
                of several representations, a store input is joined by doc id to the stores of
                the others (``stores=``, or those their cards name).

        The result is held in memory (a few dozen bytes per document and model); to score a
        corpus of any size into a file with bounded memory, use :func:`score`.
        """
        import pandas as pd

        _check_top_k(top_k)
        if isinstance(data, str) and "://" not in data and not Path(data).exists():
            raise EmbcacheError(f"Invalid value for `data`: {data[:60]!r} is not a file, folder or "
                                "store; to classify one text, pass a list: classify([text])")
        if isinstance(data, (str, os.PathLike, Store)):
            rows = []
            with self._as_stores(data, split) as stores:
                for ids, cols in self._rows(stores, split, top_k, progress=progress):
                    rows.append(pd.DataFrame({"doc_id": ids, **cols}))
                columns = self.columns(top_k, truth=stores[0].labelled)
            return (pd.concat(rows, ignore_index=True) if rows
                    else pd.DataFrame(columns=columns))[columns]
        if split is not None:
            raise EmbcacheError("Invalid value for `split`: it picks a split of a store; texts "
                                f"have none. Received: split={split!r}")
        texts = list(data)
        if not all(isinstance(t, str) for t in texts):
            bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
            raise EmbcacheError(f"Scorer.classify takes a list of strings, a store or a file; the "
                                f"list holds a {bad}")
        # A pandas Series keeps its index as the documents' ids; a list numbers them.
        ids = list(data.index) if isinstance(data, pd.Series) else list(range(len(texts)))
        return pd.DataFrame(self._classify_texts(texts, ids, top_k))[self.columns(top_k)]

    # -- inputs ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _as_stores(self, data, split: str | None, *, corpus: CorpusSpec | None = None,
                   keep_store: str | None = None, progress: bool = False):
        """One complete, compatible store per representation for ``data``, in view order: a
        store input and, for the other views, their stores joined to it by doc id; or raw
        input (read as ``corpus`` says) embedded once per view, the first into ``keep_store``
        or a temporary store, the others into temporary stores, removed afterwards. The
        embedding overlaps with loading the models."""
        if isinstance(data, Store) or store_state(str(data)) in ("complete", "incomplete"):
            if not isinstance(data, Store) and corpus is not None \
                    and corpus != CorpusSpec(corpus.path):
                given = sorted(k for k, v in vars(corpus).items()
                               if k != "path" and v != getattr(CorpusSpec(corpus.path), k))
                raise EmbcacheError(f"{data} is a store; corpus options apply to raw input only "
                                    f"(given: {', '.join(f'`{k}=`' for k in given)}): leave "
                                    "them out")
            store = data if isinstance(data, Store) else open_store(str(data),
                                                                    require_complete=True)
            yield self._joined_stores(store, split)
            return
        path = str(data)
        if split is not None:
            raise EmbcacheError(f"`split={split}` applies to a store; {path} is raw input, "
                                "which has no splits")
        for view in self.views:
            view.require_source(f"raw documents ({path})")
        tmp_dir = tempfile.mkdtemp(prefix="embcache-score-")
        targets = [keep_store or os.path.join(tmp_dir, "score.zarr")]
        targets += [os.path.join(tmp_dir, f"score-{i}.zarr") for i in range(1, len(self.views))]

        def embed_all():
            return [v.embed_input(corpus or CorpusSpec(path), t, progress)
                    for v, t in zip(self.views, targets)]

        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                embedding = pool.submit(embed_all)
                self.load()  # on failure, the pool waits for the embedding
                stores = embedding.result()
            yield stores
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    def _joined_stores(self, store, split: str | None) -> list:
        """``store`` for the view it fits and, for each other view, its store (named in
        ``stores=`` or, failing that, the store its first run's card names), checked to hold the
        same documents in the same order.

        Raises:
            StoreError: no view fits ``store``; another view's store is missing, embedded
                differently, or holds other documents.
        """
        fits = [i for i, v in enumerate(self.views) if not v.meta.contract_differences(store.meta)]
        if not fits:
            self.views[0].check_store(store)  # raises, naming the differences
        out: list = [None] * len(self.views)
        out[fits[0]] = store
        named = None
        for i, view in enumerate(self.views):
            if out[i] is not None:
                continue
            if named is None:
                named = [open_store(s, require_complete=True) for s in self.stores]
            match = [s for s in named if not view.meta.contract_differences(s.meta)]
            if match:
                other = match[0]
            else:
                url = view.runs[0].card.get("store_url")
                if not url or store_state(str(url)) != "complete":
                    raise StoreError(f"Models {', '.join(r.name for r in view.runs)} were trained "
                                     f"on {view.source}; no store of it was given "
                                     f"(`stores=`, --stores) and the one their card names "
                                     f"({url}) is not there")
                other = open_store(str(url), require_complete=True)
                view.check_store(other)
            try:
                check_same_documents(store, other)
            except StoreError as e:
                first = self.views[fits[0]].runs[0]
                diff = "; ".join(first.meta.contract_differences(view.meta))
                text = str(e)
                raise StoreError(f"Models {first.name} and {view.runs[0].name} were trained on "
                                 f"differently embedded data ({diff}), and "
                                 f"{text[0].lower()}{text[1:]}") from None
            out[i] = other
        return out

    # -- the work ----------------------------------------------------------------------------
    def _classify_texts(self, texts: list[str], ids: list, top_k: int) -> dict[str, list]:
        """Embed in memory (no store), ``_TEXT_PIECE`` texts at a time, once per
        representation, and score: the same bucketing
        (:func:`~embcache.cache.stream.bucket_blocks`) and the same scoring loop as a store's;
        memory is one piece's rows per representation plus the results."""
        from embcache.cache.corpus import strip_usenet_header
        from embcache.cache.stream import text_batches

        self.load()

        def stream(view):
            meta = view.meta
            prepare = ((lambda part: [strip_usenet_header(t) for t in part])
                       if meta.strip_headers else None)  # as the corpus readers do
            with_ids = view.with_ids
            batches = text_batches(view.text_embedder(), texts, max_len=meta.max_len,
                                   padding=meta.padding, dim=meta.dim, dtype=meta.dtype,
                                   batch_size=self.batch_size, piece=_TEXT_PIECE,
                                   max_wait=_MAX_WAIT, prepare=prepare, with_ids=with_ids)
            return ((_text_features(x, n, with_ids), None, seq) for x, n, _y, seq in batches)

        out: dict[str, list] = {c: [] for c in self.columns(top_k)}
        for part_ids, cols in self._scored([stream(v) for v in self.views], iter(ids), top_k,
                                           labels=None):
            out["doc_id"] += part_ids
            for c, values in cols.items():
                out[c] += values
        return out

    def ensemble_weights(self) -> dict[str, float]:
        """Each ensemble member's weight (for a fitted pool, its share of the vote)."""
        weights = self.fitted.weights if self.fitted is not None else self.weights
        return {r.name: round(float(w), 6) for r, w in zip(self.group, weights)}

    def fit(self, out_dir: str | Path, *, store=None, progress: bool = False) -> EnsembleFit:
        """Learn the ensemble on the validation split (:func:`embcache.jobs.ensemble.
        fit_ensemble`: a temperature per member and weights, guarded by cross-fitting) and
        save it as an ensemble card in ``out_dir``; later scoring with ``out_dir`` among the
        runs reuses it, and ``embcache runs`` lists it. ``store``: the store whose val split
        fits it (default: the one the first run's card names), joined by doc id to the other
        representations' stores as for scoring. Memory: the val split's probabilities, per
        member.

        Raises:
            EmbcacheError: fewer than two members sharing a label set.
            StoreError: the stores cannot be read or joined.
        """
        if not self.group:
            raise EmbcacheError("An ensemble needs two or more models sharing one label set")
        url = store or self.runs[0].card.get("store_url")
        source = url if isinstance(url, Store) else open_store(str(url), require_complete=True)
        collect: dict[str, list] = {}
        with self._as_stores(source, "val") as stores:
            for _ in self._rows(stores, "val", 1, progress=progress, collect=collect):
                pass
            labels = stores[0].label_names
        index = {n: i for i, n in enumerate(self.group[0].label_names)}
        truth = np.array([index.get(labels[i], -1) for i in np.concatenate(collect["_truth"])])
        probs = {n: np.concatenate(v) for n, v in collect.items() if n != "_truth"}
        fitted = fit_ensemble([r.name for r in self.group], probs, truth)
        write_ensemble(Path(out_dir), fitted, self.group)
        self.fitted, self.ensemble = fitted, "fit"
        return fitted

    def combine(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities from its members' (``self.group``): a weighted mean, or
        for a fitted ensemble its log-linear pool (:func:`embcache.jobs.ensemble.pool`)."""
        stacked = np.stack([probs[r.name] for r in self.group])
        if self.fitted is not None:
            return pool(stacked, self.fitted.coefficients, linear=self.fitted.linear)
        return np.tensordot(self.weights, stacked, axes=1)

    def _columns(self, probs: dict[str, np.ndarray], top_k: int) -> dict[str, list]:
        cols: dict[str, list] = {}
        for run in self.runs:
            _add_topk(cols, run.name, probs[run.name], run.label_names, top_k)
        if self.group:
            probs["ensemble"] = p = self.combine(probs)
            _add_topk(cols, "ensemble", p, self.group[0].label_names, top_k)
        return cols

    def _scored(self, streams: list, ids, top_k: int, *, labels: list[str] | None,
                confusions: dict | None = None, bar=None, collect: dict | None = None):
        """The one scoring loop, for texts and stores: one stream of ``(features, y, seq)``
        batches (in length buckets) per representation, each through its view's models; the
        streams advance together (the one behind reads next), and rows are released in input
        order once every view has scored them (they wait at most ``_MAX_WAIT`` documents per
        view: memory, that many rows). Yields ``(doc_ids, columns)``. ``labels``: a labelled
        store's label names (the first stream's ``y`` then holds the true labels, written as
        ``true_label`` and counted into ``confusions``, per model, when given). ``collect``:
        gets each run's probabilities and the truth, in input order (fitting an ensemble)."""
        truth_maps = {}
        if labels is not None and confusions is not None:
            for run in self.runs:
                index = {n: i for i, n in enumerate(run.label_names)}
                truth_maps[run.name] = np.array([index.get(n, -1) for n in labels], dtype=np.int64)
                confusions[run.name] = Confusion(run.label_names)
            if self.group:
                confusions["ensemble"] = Confusion(self.group[0].label_names)
                truth_maps["ensemble"] = truth_maps[self.group[0].name]
        rows = JoinedRows(len(streams))
        iters = [iter(s) for s in streams]
        live, seen = list(range(len(iters))), [0] * len(iters)
        while live:
            k = min(live, key=lambda i: seen[i])
            try:
                features, y, seq = next(iters[k])
            except StopIteration:
                live.remove(k)
                continue
            rows.add(k, seq, self.views[k].probabilities(features), y if k == 0 else None)
            seen[k] += len(seq)
            if bar is not None and k == 0:
                bar.update(len(seq))
            probs, truth, n = rows.ready()
            if not n:
                continue
            cols = self._columns(probs, top_k)
            if collect is not None:
                for name, p in probs.items():
                    collect.setdefault(name, []).append(p)
                if truth is not None:
                    collect.setdefault("_truth", []).append(truth)
            if labels is not None:
                cols["true_label"] = [labels[i] for i in truth.tolist()]
                for name, conf in (confusions or {}).items():
                    conf.add(truth_maps[name][truth], probs[name].argmax(axis=1))
            yield [next(ids) for _ in range(n)], cols
        if rows.waiting:
            raise EmbcacheError(f"{rows.waiting} documents were not scored")

    def _rows(self, stores: list, split: str | None, top_k: int, *,
              confusions: dict | None = None, progress: bool = False,
              collect: dict | None = None):
        """Stream every view's store once through :meth:`_scored`: every batch goes through
        every model of its view before the next is read."""
        from tqdm import tqdm

        from embcache.cache.dataset import Batching, pipeline_errors, streamed_dataset
        from embcache.cache.stream import plan_split

        self.load()
        plans = [plan_split(s, split) for s in stores]
        if plans[0].num_docs == 0:
            raise StoreError(f"Store {stores[0].url} has no documents"
                             + (f" in the {split} split" if split else ""))
        labelled = stores[0].labelled  # the true label is a column; metrics only when asked

        def batches(view, store, plan, first: bool):
            with_labels = labelled and first
            # Batches come bucketed by length; `seq` puts each row back at its place.
            ds = streamed_dataset(store, split, batching=Batching(
                batch_size=self.batch_size, with_labels=with_labels, with_seq=True,
                with_ids=view.with_ids), plan=plan, max_wait=_MAX_WAIT)
            for batch in ds:
                features, y = batch if with_labels else (batch, None)
                seq = features.pop("seq").numpy()
                yield features, (y.numpy() if with_labels else None), seq

        bar = tqdm(total=plans[0].num_docs, unit="doc", disable=not progress, file=sys.stderr,
                   desc="score", dynamic_ncols=True)
        with contextlib.ExitStack() as held:
            for s in stores:  # no store is replaced while it is streamed (see cache.locks)
                held.enter_context(reading(str(s.url)))
            held.enter_context(contextlib.closing(bar))
            held.enter_context(pipeline_errors())
            streams = [batches(v, s, p, i == 0)
                       for i, (v, s, p) in enumerate(zip(self.views, stores, plans))]
            yield from self._scored(streams, doc_ids_in_order(split, stores[0]), top_k,
                                    labels=stores[0].label_names if labelled else None,
                                    confusions=confusions, bar=bar, collect=collect)

    def write(self, data, out: str | Path, *, split: str | None = None, top_k: int = 1,
              corpus: CorpusSpec | None = None, keep_store: str | None = None,
              metrics_dir: str | None = None, progress: bool = False) -> ScoreSummary:
        """Score ``data`` into the file ``out`` (.csv, .jsonl or .parquet; written aside and
        renamed, so it is whole or absent), with memory bounded whatever its size; with labels,
        metrics.json and confusion plots go to ``metrics_dir`` (default: beside ``out``).

        Args:
            data: a store (path, URL or :class:`~embcache.cache.store.Store`; ``split`` picks
                one of its splits), or raw documents (a file or folder, read as ``corpus``
                says), embedded once into ``keep_store`` or a temporary store.
        """
        t0 = time.perf_counter()
        out_path = Path(out)
        fmt = output_format(out_path)
        _check_top_k(top_k)
        confusions: dict = {}
        _remove_stale_partials(out_path)
        tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
        docs = 0
        try:
            with self._as_stores(data, split, corpus=corpus, keep_store=keep_store,
                                 progress=progress) as stores, \
                    writing(f"predictions {out_path}"), \
                    open_writer(tmp, fmt, self.columns(top_k, truth=stores[0].labelled)) as writer, \
                    contextlib.redirect_stdout(sys.stderr):
                for ids, cols in self._rows(stores, split, top_k, confusions=confusions,
                                            progress=progress):
                    writer.write({"doc_id": ids, **cols})
                    docs += len(ids)
                    pause_point("score:rows-written")
            os.replace(tmp, out_path)  # atomic: a failed run leaves no partial predictions file
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        metrics = {}
        if confusions:
            how = None
            if self.group:
                how = {"method": self.ensemble, "weights": self.ensemble_weights()}
            metrics = write_metrics(confusions,
                                    Path(metrics_dir) if metrics_dir else out_path.parent,
                                    models=self.names, ensemble=how)
        return ScoreSummary(out=str(out_path), docs=docs, models=self.names,
                            seconds=time.perf_counter() - t0, metrics=metrics)


# Texts a Scorer embeds at once (memory: their kept tokens' vectors, about 25 MB at 20
# Newsgroups' mean length and 50 dimensions).
_TEXT_PIECE = 1024


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise EmbcacheError(f"Invalid value for `top_k`. Expected a positive integer. Received: top_k={top_k}")


def score(
    model_dirs: list[str],
    input_path: str,
    out: str,
    *,
    corpus: CorpusSpec | None = None,
    vectors_path: str | Sequence[str] | None = None,
    encoder: str | None = None,
    tokenizer: str | None = None,
    stores: Sequence[str] | None = None,
    ensemble_out: str | None = None,
    split: str | None = None,
    top_k: int = ScoreConfig.top_k,
    batch_size: int = ScoreConfig.batch_size,
    keep_store: str | None = None,
    metrics_dir: str | None = None,
    progress: bool = False,
    cache_dir: str | None = None,
    ensemble: str = ScoreConfig.ensemble,
    precision: str = ScoreConfig.precision,
) -> ScoreSummary:
    """Score ``input_path`` (a store, or raw documents in ``corpus``'s format) with every model
    into the file ``out``: one embedding pass, one read of the store, memory bounded whatever
    the number of documents. (:class:`Scorer` keeps the models loaded between calls.)

    Runs of several representations (trained on different stores of the same documents) score
    together: raw input is embedded once per representation (``vectors_path`` may name several
    files; ``encoder`` serves an encoder's store), and a store input is joined by doc id to the
    other representations' ``stores`` (default: those their cards name). ``ensemble="fit"``
    first fits the ensemble on the validation split (:meth:`Scorer.fit`) and saves its card to
    ``ensemble_out`` (default: ``ensemble/`` beside the first run). ``precision``: see Scorer.

    Raises:
        ModelError: missing/tampered cards, unsafe models, incompatible models.
        StoreError, CorpusError, VectorsError: bad input.
        EmbcacheError: bad output path or options.
    """
    t0 = time.perf_counter()
    out_path = Path(out)
    output_format(out_path)
    if not out_path.parent.is_dir():
        raise EmbcacheError(f"Output folder {out_path.parent} does not exist (for `out={out}`)")
    if metrics_dir is not None:  # checked up front: never predictions without their metrics
        try:
            Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EmbcacheError(f"Cannot use `metrics_dir={metrics_dir}`: {e.strerror}") from None
    _check_top_k(top_k)
    scorer = Scorer(model_dirs, vectors=vectors_path, encoder=encoder, tokenizer=tokenizer,
                    cache_dir=cache_dir, stores=stores,
                    batch_size=batch_size, ensemble=ensemble, load=False, precision=precision)
    scorer.load()
    if progress:
        print(scorer.precision_line(), file=sys.stderr)
    card = _fit_first(scorer, ensemble_out, model_dirs, input_path, progress)
    summary = scorer.write(input_path, out_path, split=split, top_k=top_k, corpus=corpus,
                           keep_store=keep_store, metrics_dir=metrics_dir, progress=progress)
    summary.seconds, summary.kept_store = time.perf_counter() - t0, keep_store
    summary.ensemble_card = card
    return summary


def _fit_first(scorer: Scorer, ensemble_out: str | None, model_dirs: list[str], input_path: str,
               progress: bool) -> str | None:
    """``ensemble="fit"`` without a fitted ensemble among the runs: fit it on the validation
    split (of ``input_path`` when it is a store, else of the store the first card names) and
    save its card; returns the card's path."""
    if scorer.ensemble != "fit" or scorer.fitted is not None:
        return None
    target = Path(ensemble_out) if ensemble_out else Path(model_dirs[0]).parent / "ensemble"
    fit_store = input_path if store_state(str(input_path)) == "complete" else None
    scorer.fit(target, store=fit_store, progress=progress)
    return str(target / "ensemble.json")


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


def _text_features(x, lengths, with_ids: bool) -> dict:
    """A batch of :func:`~embcache.cache.stream.text_batches` as the models' features."""
    if with_ids:
        x, ids = x
        return {"embedded": x, "lengths": lengths, "token_ids": ids}
    return {"embedded": x, "lengths": lengths}


class JoinedRows:
    """Prediction rows arrive by length bucket, from each representation's stream on its own;
    ``ready()`` releases, in input order, the rows every stream has scored."""

    def __init__(self, streams: int):
        self.streams, self.rows, self.next = streams, {}, 0

    def add(self, k: int, seq: np.ndarray, probs: dict[str, np.ndarray], y) -> None:
        for j, s in enumerate(seq.tolist()):
            row = self.rows.setdefault(s, [0, {}, None])
            row[0] += 1
            row[1].update({name: p[j] for name, p in probs.items()})
            if y is not None:
                row[2] = int(y[j])

    def ready(self) -> tuple[dict[str, np.ndarray], np.ndarray | None, int]:
        out: list = []
        while self.rows.get(self.next, (0,))[0] == self.streams:
            out.append(self.rows.pop(self.next))
            self.next += 1
        if not out:
            return {}, None, 0
        probs = {name: np.stack([r[1][name] for r in out]) for name in out[0][1]}
        truth = (np.array([r[2] for r in out], dtype=np.int64) if out[0][2] is not None
                 else None)
        return probs, truth, len(out)

    @property
    def waiting(self) -> int:
        return len(self.rows)


def check_same_documents(a, b, slab: int = 1 << 16) -> None:
    """Refuse two stores that do not hold the same documents, in the same order and splits:
    the ensemble joins them by position. Reads ``doc_ids`` and ``split``, ``slab`` documents at
    a time.

    Raises:
        StoreError: one line naming both stores and the first document that differs.
    """
    if a.num_docs != b.num_docs:
        raise StoreError(f"Stores {a.url} and {b.url} hold different documents ({a.num_docs:,} "
                         f"vs {b.num_docs:,}); an ensemble across them needs stores of the same "
                         "documents: score them separately")
    for start in range(0, a.num_docs, slab):
        stop = min(start + slab, a.num_docs)
        ia, ib = a.read("doc_ids", start, stop), b.read("doc_ids", start, stop)
        sa, sb = a.read("split", start, stop), b.read("split", start, stop)
        bad = np.flatnonzero((ia != ib) | (sa != sb))
        if len(bad):
            k = int(bad[0])
            what = (f"{ia[k]!r} vs {ib[k]!r}" if ia[k] != ib[k] else
                    f"{ia[k]!r} is in the {SPLIT_NAMES[sa[k]]} vs the {SPLIT_NAMES[sb[k]]} split")
            raise StoreError(f"Stores {a.url} and {b.url} do not hold the same documents in the "
                             f"same order and splits (document {start + k:,}: {what}); an "
                             "ensemble across them needs stores of the same corpus and split "
                             "settings: score them separately")


def _add_topk(cols: dict, name: str, probs: np.ndarray, label_names: list[str], k: int) -> None:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    for j in range(k):
        suffix = "" if j == 0 else f"_{j + 1}"
        idx = order[:, j] if j < probs.shape[1] else None
        cols[f"{name}_label{suffix}"] = ([label_names[i] for i in idx] if idx is not None
                                         else [""] * len(probs))
        cols[f"{name}_prob{suffix}"] = (np.round(probs[np.arange(len(probs)), idx], 6).tolist()
                                        if idx is not None else [None] * len(probs))


