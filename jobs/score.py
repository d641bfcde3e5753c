"""The score job: many models, one embedding pass, one read of the store.

Raw input is embedded once, with the vectors and tokenizer settings of the models' cards, into a
scoring store (temporary, or kept). Then the store is streamed once: every batch goes through
every model before the next batch is read, and its predictions are written out at once. Memory:
one batch per model plus the prefetch queue, whatever the number of documents."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import EmbcacheError, ModelError, StrPath, path_arg, renamed, writing
from embcache.cache.hooks import pause_point
from embcache.cache.precision import Precision, check_precision, precision_line
from embcache.cache.store import Store, open_store, store_state
from embcache.cache.tfenv import quiet_tensorflow
from embcache.jobs.ensemble import (
    EnsembleFit,
    ensemble_group,
    ensemble_weights,
    expand_ensembles,
    fit_ensemble,
    unique_names,
    write_ensemble,
)
from embcache.jobs.executors import parse_scheduler
from embcache.jobs.metrics import write_metrics
from embcache.jobs.outputs import ScoreConfig, ScoreSummary, open_writer, output_format, remove_stale_partials
from embcache.jobs.runs import Run, load_run, read_card
from embcache.jobs.score_dask import PART_DOCS, DistributedMixin, check_part_docs, shared_path
from embcache.jobs.score_input import InputMixin
from embcache.jobs.score_loop import COUNT_COLUMNS, LoopMixin, Output
from embcache.jobs.views import make_views

if TYPE_CHECKING:
    import pandas as pd


class Scorer(InputMixin, LoopMixin, DistributedMixin):
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

    def __init__(self, runs: StrPath | Sequence[StrPath], *,
                 vectors: StrPath | Sequence[StrPath] | None = None,
                 encoder: str | None = None, tokenizer: StrPath | None = None,
                 cache_dir: StrPath | None = None,
                 batch_size: int = ScoreConfig.batch_size,
                 ensemble: str = ScoreConfig.ensemble, load: bool = True,
                 stores: Sequence[StrPath] | None = None,
                 precision: str = ScoreConfig.precision) -> None:
        if isinstance(runs, (str, os.PathLike)):
            runs = [runs]
        if not runs:
            raise EmbcacheError("Invalid value for `runs`. Expected one or more run "
                                "folders.")
        if batch_size < 1:
            raise EmbcacheError("Invalid value for `batch_size`. Expected a positive integer. "
                                f"Received: batch_size={batch_size}")
        # Cheap checks first, from the cards alone: a bad card or incompatible models fail
        # before any model loads or any document is embedded.
        paths, self.fitted = expand_ensembles(runs)
        # what a Dask worker rebuilds this scorer from (an ensemble card's folder stands alone)
        self._run_args = [shared_path(r) for r in runs]
        self.runs = [Run(path=Path(d), name=Path(d).name, card=read_card(d), model=None)
                     for d in paths]
        unique_names(self.runs)
        self.views = make_views(
            self.runs, vectors=vectors, encoder=encoder,
            tokenizer=None if tokenizer is None else path_arg(tokenizer, "tokenizer"),
            cache_dir=None if cache_dir is None else path_arg(cache_dir, "cache_dir"))
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

    def columns(self, output: Output, truth: bool = False) -> list[str]:
        """The output's columns; ``truth``: a labelled store's true label, after ``doc_id``."""
        cols = ["doc_id"] + (["true_label"] if truth else [])
        for run in self.runs:
            cols += output.columns(run.name, run.label_names)
        if self.group:
            cols += output.columns("ensemble", self.group[0].label_names)
        cols += list(COUNT_COLUMNS)
        return cols

    def classify(self, data, *, split: str | None = None, top_k: int = 1,
                 probabilities: bool = False, progress: bool = False) -> pd.DataFrame:
        """Classify ``data`` and return a ``pandas.DataFrame``, one row per document in input
        order: ``doc_id`` (a Series' index is kept as it), ``true_label`` for a labelled store,
        then ``<model>_label`` and ``<model>_prob`` for each model (and ``_2``... up to
        ``top_k``), and the ``ensemble`` columns. With ``probabilities``, also every label's
        probability: ``<model>_p_<label>`` (and ``ensemble_p_<label>``). Last, ``tokens`` (kept
        tokens) and ``known_tokens`` (those with a vector: an unknown word is a zero vector), from
        the first run's representation: a confident label on few known tokens is a guess.

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

        output = Output.checked(top_k, probabilities)
        if isinstance(data, str) and "://" not in data and not Path(data).exists():
            raise EmbcacheError(f"Invalid value for `data`: {data[:60]!r} is not a file, folder or "
                                "store; to classify one text, pass a list: classify([text])")
        if isinstance(data, (str, os.PathLike, Store)):
            rows = []
            with self._as_stores(data, split) as stores:
                for ids, cols in self._rows(stores, split, output, progress=progress):
                    rows.append(pd.DataFrame({"doc_id": ids, **cols}))
                columns = self.columns(output, truth=stores[0].labelled)
            return (pd.concat(rows, ignore_index=True) if rows
                    else pd.DataFrame(columns=columns))[columns]
        if split is not None:
            raise EmbcacheError("Invalid value for `split`: it picks a split of a store; texts "
                                f"have none. Received: split={split!r}")
        if not isinstance(data, Iterable) or isinstance(data, bytes):
            raise EmbcacheError("Invalid value for `data`. Expected a list of strings, a store or "
                                f"a file. Received: data={data!r}"[:300])
        texts = list(data)
        if not all(isinstance(t, str) for t in texts):
            bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
            raise EmbcacheError(f"Scorer.classify takes a list of strings, a store or a file; the "
                                f"list holds a {bad}")
        # A pandas Series keeps its index as the documents' ids; a list numbers them.
        ids = list(data.index) if isinstance(data, pd.Series) else list(range(len(texts)))
        return pd.DataFrame(self._classify_texts(texts, ids, output))[self.columns(output)]

    def ensemble_weights(self) -> dict[str, float]:
        """Each ensemble member's weight (for a fitted pool, its share of the vote)."""
        weights = self.fitted.weights if self.fitted is not None else self.weights
        return {r.name: round(float(w), 6)
                for r, w in zip(self.group, weights if weights is not None else [])}

    @renamed(out_dir="out")
    def fit(self, out: StrPath, *, store: Store | StrPath | None = None,
            progress: bool = False) -> EnsembleFit:
        """Learn the ensemble on the validation split (:func:`embcache.jobs.ensemble.
        fit_ensemble`: a temperature per member and weights, guarded by cross-fitting) and
        save it as an ensemble card in ``out``; later scoring with ``out`` among the
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
            for _ in self._rows(stores, "val", Output(), progress=progress, collect=collect):
                pass
            labels = stores[0].label_names
        index = {n: i for i, n in enumerate(self.group[0].label_names)}
        truth = np.array([index.get(labels[i], -1) for i in np.concatenate(collect["_truth"])])
        probs = {n: np.concatenate(v) for n, v in collect.items() if n != "_truth"}
        fitted = fit_ensemble([r.name for r in self.group], probs, truth)
        write_ensemble(Path(path_arg(out, "out")), fitted, self.group)
        self.fitted, self.ensemble = fitted, "fit"
        self._run_args = [shared_path(out)]
        return fitted

    def write(self, data, out: str | Path, *, split: str | None = None, top_k: int = 1,
              probabilities: bool = False, corpus: CorpusSpec | None = None,
              keep_store: str | None = None, metrics_dir: str | None = None,
              progress: bool = False, scheduler: str | None = None,
              part_docs: int = PART_DOCS) -> ScoreSummary:
        """Score ``data`` into the file ``out`` (.csv, .jsonl or .parquet; written aside and
        renamed, so it is whole or absent), with memory bounded whatever its size; with labels,
        metrics.json and confusion plots go to ``metrics_dir`` (default: beside ``out``).

        Args:
            data: a store (path, URL or :class:`~embcache.cache.store.Store`; ``split`` picks
                one of its splits), or raw documents (a file or folder, read as ``corpus``
                says), embedded once into ``keep_store`` or a temporary store.
            scheduler: ``"local:N"`` (N worker processes here) or a Dask scheduler's address
                (``"tcp://host:8786"``): parts of whole blocks are scored on the workers, each
                loading the models once, written as Parquet parts in ``<out>.parts/`` and
                assembled into ``out``; a stopped run, rerun, skips the parts already written
                (:mod:`embcache.jobs.score_dask`).
            part_docs: with ``scheduler``, documents per task (rounded up to whole blocks).
        """
        t0 = time.perf_counter()
        out_path = Path(out)
        fmt = output_format(out_path)
        output = Output.checked(top_k, probabilities)
        parsed = parse_scheduler(scheduler)
        check_part_docs(part_docs)
        confusions: dict = {}
        remove_stale_partials(out_path)
        if parsed is not None:
            return self._write_distributed(data, out_path, fmt, output, parsed, t0, split=split,
                                           corpus=corpus, keep_store=keep_store,
                                           metrics_dir=metrics_dir, progress=progress,
                                           part_docs=part_docs)
        tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
        docs = 0
        try:
            with self._as_stores(data, split, corpus=corpus, keep_store=keep_store,
                                 progress=progress) as stores, \
                    writing(f"predictions {out_path}"), \
                    open_writer(tmp, fmt, self.columns(output, truth=stores[0].labelled)) as writer, \
                    contextlib.redirect_stdout(sys.stderr):
                for ids, cols in self._rows(stores, split, output, confusions=confusions,
                                            progress=progress):
                    writer.write({"doc_id": ids, **cols})
                    docs += len(ids)
                    pause_point("score:rows-written")
            os.replace(tmp, out_path)  # atomic: a failed run leaves no partial predictions file
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return self._summary(out_path, docs, confusions, metrics_dir, t0)

    def _summary(self, out_path: Path, docs: int, confusions: dict, metrics_dir: str | None,
                 t0: float) -> ScoreSummary:
        """The run's summary, with metrics.json and the plots written when there are labels."""
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


def score(  # noqa: PLR0913 - a job's options, one keyword each (as its command's)
    runs: Sequence[StrPath],
    data: StrPath,
    out: StrPath,
    *,
    corpus: CorpusSpec | None = None,
    vectors: StrPath | Sequence[StrPath] | None = None,
    encoder: str | None = None,
    tokenizer: str | None = None,
    stores: Sequence[str] | None = None,
    ensemble_out: str | None = None,
    split: str | None = None,
    top_k: int = ScoreConfig.top_k,
    probabilities: bool = False,
    batch_size: int = ScoreConfig.batch_size,
    keep_store: str | None = None,
    metrics_dir: str | None = None,
    progress: bool = False,
    cache_dir: str | None = None,
    ensemble: str = ScoreConfig.ensemble,
    precision: str = ScoreConfig.precision,
    scheduler: str | None = None,
    part_docs: int = PART_DOCS,
) -> ScoreSummary:
    """Score ``data`` (a store, or raw documents in ``corpus``'s format) with every model
    into the file ``out``: one embedding pass, one read of the store, memory bounded whatever
    the number of documents. (:class:`Scorer` keeps the models loaded between calls.)

    Runs of several representations (trained on different stores of the same documents) score
    together: raw input is embedded once per representation (``vectors`` may name several
    files; ``encoder`` serves an encoder's store), and a store input is joined by doc id to the
    other representations' ``stores`` (default: those their cards name). ``ensemble="fit"``
    first fits the ensemble on the validation split (:meth:`Scorer.fit`) and saves its card to
    ``ensemble_out`` (default: ``ensemble/`` beside the first run). ``precision``: see Scorer.
    ``scheduler``: score on Dask, ``"local:N"`` or a scheduler's address (see
    :meth:`Scorer.write`; ``part_docs`` documents per task); the output is the single
    process's, row for row.

    Raises:
        ModelError: missing/tampered cards, unsafe models, incompatible models.
        StoreError, CorpusError, VectorsError: bad input.
        EmbcacheError: bad output path or options.
    """
    t0 = time.perf_counter()
    data = path_arg(data, "data")
    out_path = Path(path_arg(out, "out"))
    output_format(out_path)
    if not out_path.parent.is_dir():
        raise EmbcacheError(f"Output folder {out_path.parent} does not exist (for `out={out}`)")
    if metrics_dir is not None:  # checked up front: never predictions without their metrics
        try:
            Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EmbcacheError(f"Cannot use `metrics_dir={metrics_dir}`: {e.strerror}") from None
    Output.checked(top_k, probabilities)
    parse_scheduler(scheduler)
    check_part_docs(part_docs)
    scorer = Scorer(runs, vectors=vectors, encoder=encoder, tokenizer=tokenizer,
                    cache_dir=cache_dir, stores=stores,
                    batch_size=batch_size, ensemble=ensemble, load=False, precision=precision)
    scorer.load()
    if progress:
        print(scorer.precision_line(), file=sys.stderr)
    card = _fit_first(scorer, ensemble_out, scorer.runs[0].path, data, progress)
    summary = scorer.write(data, out_path, split=split, top_k=top_k,
                           probabilities=probabilities, corpus=corpus,
                           keep_store=keep_store, metrics_dir=metrics_dir, progress=progress,
                           scheduler=scheduler, part_docs=part_docs)
    summary.seconds, summary.kept_store = time.perf_counter() - t0, keep_store
    summary.ensemble_card = card
    return summary


def _fit_first(scorer: Scorer, ensemble_out: StrPath | None, first_run: Path, data: str,
               progress: bool) -> str | None:
    """``ensemble="fit"`` without a fitted ensemble among the runs: fit it on the validation
    split (of ``data`` when it is a store, else of the store the first card names) and
    save its card; returns the card's path."""
    if scorer.ensemble != "fit" or scorer.fitted is not None:
        return None
    target = Path(ensemble_out) if ensemble_out else first_run.parent / "ensemble"
    fit_store = data if store_state(data) == "complete" else None
    scorer.fit(target, store=fit_store, progress=progress)
    return str(target / "ensemble.json")

