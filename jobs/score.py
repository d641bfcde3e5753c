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
from embcache.cache.store import Store, open_store, store_state
from embcache.cache.tfenv import quiet_tensorflow
from embcache.jobs.ensemble import ENSEMBLES, check_compatible, ensemble_group, ensemble_weights, unique_names
from embcache.jobs.locks import reading
from embcache.jobs.metrics import Confusion, write_metrics
from embcache.jobs.outputs import open_writer, output_format
from embcache.jobs.predict import any_token_ids, doc_ids_in_order, predict_all
from embcache.jobs.runs import Run, load_run, read_card


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


@dataclass(frozen=True)
class ScoreConfig:
    """The score options' defaults, in one place (``score()`` and the CLI read them here)."""

    batch_size: int = 64
    top_k: int = 1
    ensemble: str = ENSEMBLES[0]


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

    Raises:
        ModelError: a missing, tampered or foreign card, an unsafe model, incompatible models,
            a model module that cannot be imported.
    """

    def __init__(self, runs: Sequence[str | Path], *, vectors: str | None = None,
                 encoder: str | None = None, tokenizer: str | None = None,
                 cache_dir: str | None = None,
                 batch_size: int = ScoreConfig.batch_size,
                 ensemble: str = ScoreConfig.ensemble, load: bool = True):
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
        self.runs = [Run(path=Path(d), name=Path(d).name, card=read_card(d), model=None)
                     for d in runs]
        unique_names(self.runs)
        self.meta = check_compatible(self.runs)
        self.group = ensemble_group(self.runs)
        self.weights = ensemble_weights(self.group, ensemble) if self.group else None
        self.ensemble, self.batch_size = ensemble, batch_size
        self.vectors_path, self.encoder_spec, self.cache_dir = vectors, encoder, cache_dir
        self.tokenizer_path = tokenizer
        self._predict = None
        self._embedder = None
        if load:
            self.load()

    @property
    def names(self) -> list[str]:
        """The models' column names (run folder names, made unique)."""
        return [r.name for r in self.runs]

    def load(self) -> None:
        """Load every model (once) and build the compiled function that runs them all."""
        if self._predict is None:
            quiet_tensorflow()
            for run in self.runs:
                run.model = load_run(run.path, card=run.card).model
            self._predict = predict_all([r.model for r in self.runs], self.meta.dim)

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
                raw document file or folder (embedded into a temporary store first).

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
            with self._as_store(data, split) as store:
                for ids, cols in self._rows(store, split, top_k, progress=progress):
                    rows.append(pd.DataFrame({"doc_id": ids, **cols}))
                columns = self.columns(top_k, truth=store.labelled)
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
    def _as_store(self, data, split: str | None, *, corpus: CorpusSpec | None = None,
                  keep_store: str | None = None, progress: bool = False):
        """A complete, compatible store for ``data``: itself, or raw input (read as ``corpus``
        says) embedded into ``keep_store`` or a temporary store, removed afterwards. The one
        embedding pass overlaps with loading the models."""
        if isinstance(data, Store):
            self._check_store(data)
            yield data
            return
        path = str(data)
        if store_state(path) in ("complete", "incomplete"):
            if corpus is not None and corpus != CorpusSpec(corpus.path):
                given = sorted(k for k, v in vars(corpus).items()
                               if k != "path" and v != getattr(CorpusSpec(corpus.path), k))
                raise EmbcacheError(f"{path} is a store; corpus options apply to raw input only "
                                    f"(given: {', '.join(f'`{k}=`' for k in given)}): leave "
                                    "them out")
            store = open_store(path, require_complete=True)
            self._check_store(store)
            yield store
            return
        if split is not None:
            raise EmbcacheError(f"`split={split}` applies to a store; {path} is raw input, "
                                "which has no splits")
        self._require_vectors(f"raw documents ({path})")
        tmp_dir = None
        if keep_store is None:
            tmp_dir = tempfile.mkdtemp(prefix="embcache-score-")
            keep_store = os.path.join(tmp_dir, "score.zarr")
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                embedding = pool.submit(self.embed_input, corpus or CorpusSpec(path), keep_store,
                                        progress)
                self.load()  # on failure, the pool waits for the embedding
                store = embedding.result()
            yield store
        finally:
            if tmp_dir:
                shutil.rmtree(tmp_dir, ignore_errors=True)

    def _check_store(self, store) -> None:
        diff = self.meta.contract_differences(store.meta)
        if diff:
            raise StoreError(f"Store {store.url} was embedded differently from what the models "
                             f"expect ({'; '.join(diff)})")

    def _require_vectors(self, what: str) -> str:
        if self.meta.encoder is not None:
            if self.encoder_spec is None:
                raise EmbcacheError(f"Scoring {what} needs `encoder=`: the encoder the models were "
                                    f"trained on ({self.meta.encoder.get('source')})")
            return self.encoder_spec
        if self.vectors_path is None:
            raise EmbcacheError(f"Scoring {what} needs `vectors=`: the file the models were "
                                f"trained with ({self.meta.vectors.source})")
        return self.vectors_path

    def _encoder(self):
        """The models' encoder, loaded once and checked against their cards by fingerprint."""
        from embcache.cache.embed import get_encoder
        from embcache.cache.encoder import require_keras_hub, resolve

        spec = self._require_vectors("text")
        require_keras_hub()
        ref = resolve(spec, max_len=self.meta.max_len, cache_dir=self.cache_dir,
                      truncating=self.meta.settings.truncating)
        enc = get_encoder(ref)
        got, want = enc.identity()["fingerprint"], self.meta.vectors.fingerprint
        if got != want:
            raise ModelError(f"Encoder {spec} (fingerprint {got[:12]}) is not the one the models "
                             f"were trained on ({self.meta.encoder.get('source')}, fingerprint "
                             f"{want[:12]})")
        return ref, enc

    def embed_input(self, corpus: CorpusSpec, target: str, progress: bool = False):
        """Embed raw documents with exactly the models' settings into the store ``target``."""
        from dataclasses import replace

        from embcache.cache.meta import SplitSettings
        from embcache.jobs.embed_corpus import embed_corpus

        source = self._require_vectors(f"raw documents ({corpus.path})")
        corpus = replace(corpus, strip_headers=self.meta.strip_headers)
        common = dict(settings=self.meta.settings, split=SplitSettings(val_frac=0.0, test_frac=0.0),
                      overwrite=True, progress=progress, cache_dir=self.cache_dir)
        if self.meta.encoder is not None:
            ref, _enc = self._encoder()  # checks the fingerprint before anything is written
            embed_corpus(corpus, None, target, encoder=source, encoder_batch=ref.batch_size,
                         **common)
        else:
            self._vectors_table()  # checks the fingerprint before anything is written
            embed_corpus(corpus, source, target, tokenizer=self.tokenizer_path, **common)
        return open_store(target)

    def _vectors_table(self):
        """The models' word vectors or subword table, checked against their cards."""
        from embcache.cache.subword import load_subword
        from embcache.cache.vectors import load_vectors

        if self.meta.encoder is not None:
            raise EmbcacheError(f"The models were trained on a transformer encoder's store "
                                f"({self.meta.encoder.get('source')}): pass `encoder=`, not "
                                "`vectors=`")
        vectors = self._require_vectors("text")
        if self.meta.subword is not None:
            table = load_subword(vectors, self.tokenizer_path, cache_dir=self.cache_dir)
        else:
            if self.tokenizer_path is not None:
                raise EmbcacheError("`tokenizer=` is for models trained on a static subword "
                                    f"table; these were trained on word vectors "
                                    f"({self.meta.vectors.source})")
            table = load_vectors(vectors, cache_dir=self.cache_dir)
        if table.fingerprint != self.meta.vectors.fingerprint:
            raise ModelError(f"Vectors {vectors} (fingerprint {table.fingerprint[:12]}) are not "
                             f"the ones the models were trained with ({self.meta.vectors.source}, "
                             f"fingerprint {self.meta.vectors.fingerprint[:12]})")
        return table

    # -- the work ----------------------------------------------------------------------------
    def _text_embedder(self):
        """The store writer's embedder for the models' vectors, subword table or encoder, built
        once (checked against the cards by fingerprint)."""
        from embcache.cache.embed import BlockEmbedder, EncoderEmbedder, SubwordEmbedder, oov_vector

        if self._embedder is None and self.meta.encoder is not None:
            self._embedder = EncoderEmbedder(self._encoder()[1], self.meta.settings)
        elif self._embedder is None and self.meta.subword is not None:
            self._embedder = SubwordEmbedder(self._vectors_table(), self.meta.settings)
        elif self._embedder is None:
            table = self._vectors_table()
            self._embedder = BlockEmbedder(table, self.meta.settings,
                                           oov_vector(table, self.meta.settings))
        return self._embedder

    def _classify_texts(self, texts: list[str], ids: list, top_k: int) -> dict[str, list]:
        """Embed in memory (no store), ``_TEXT_PIECE`` texts at a time, and score: the same
        bucketing (:func:`~embcache.cache.stream.bucket_blocks`) and the same scoring loop as a
        store's; memory is one piece's rows plus the results."""
        from embcache.cache.corpus import strip_usenet_header
        from embcache.cache.stream import text_batches

        self.load()
        meta = self.meta
        prepare = ((lambda part: [strip_usenet_header(t) for t in part]) if meta.strip_headers
                   else None)  # as the corpus readers do for the training corpus
        with_ids = any_token_ids([r.model for r in self.runs])
        batches = text_batches(self._text_embedder(), texts, max_len=meta.max_len,
                               padding=meta.padding, dim=meta.dim, dtype=meta.dtype,
                               batch_size=self.batch_size, piece=_TEXT_PIECE, max_wait=_MAX_WAIT,
                               prepare=prepare, with_ids=with_ids)
        features = ((_text_features(x, n, with_ids), None, seq) for x, n, _y, seq in batches)
        out: dict[str, list] = {c: [] for c in self.columns(top_k)}
        for part_ids, cols in self._scored(features, iter(ids), top_k, labels=None):
            out["doc_id"] += part_ids
            for c, values in cols.items():
                out[c] += values
        return out

    def _predict_batch(self, features, top_k: int) -> tuple[dict[str, list], dict[str, np.ndarray]]:
        cols: dict[str, list] = {}
        probs: dict[str, np.ndarray] = {}
        for run, p in zip(self.runs, self._predict(features)):
            probs[run.name] = p = p.numpy()
            _add_topk(cols, run.name, p, run.label_names, top_k)
        if self.group:
            p = np.tensordot(self.weights, np.stack([probs[r.name] for r in self.group]), axes=1)
            probs["ensemble"] = p
            _add_topk(cols, "ensemble", p, self.group[0].label_names, top_k)
        return cols, probs

    def _scored(self, batches, ids, top_k: int, *, labels: list[str] | None,
                confusions: dict | None = None, bar=None):
        """The one scoring loop, for texts and stores: ``batches`` of ``(features, y, seq)`` (in
        length buckets) through every model; yields ``(doc_ids, columns)`` in input order as rows
        become ready (they wait at most ``_MAX_WAIT`` documents: memory, that many rows).
        ``labels``: a labelled store's label names (``y`` then holds the true labels, written as
        ``true_label`` and counted into ``confusions``, per model, when given)."""
        truth_maps = {}
        if labels is not None and confusions is not None:
            for run in self.runs:
                index = {n: i for i, n in enumerate(run.label_names)}
                truth_maps[run.name] = np.array([index.get(n, -1) for n in labels], dtype=np.int64)
                confusions[run.name] = Confusion(run.label_names)
            if self.group:
                confusions["ensemble"] = Confusion(self.group[0].label_names)
                truth_maps["ensemble"] = truth_maps[self.group[0].name]
        rows = InputOrder(self.columns(top_k, truth=labels is not None)[1:])
        for features, y, seq in batches:
            cols, probs = self._predict_batch(features, top_k)
            if labels is not None:
                cols["true_label"] = [labels[i] for i in y.tolist()]
                for name, conf in (confusions or {}).items():
                    conf.add(truth_maps[name][y], probs[name].argmax(axis=1))
            rows.add(seq, cols)
            ready, n = rows.ready()
            if n:
                yield [next(ids) for _ in range(n)], ready
            if bar is not None:
                bar.update(len(seq))
        if rows.waiting:
            raise EmbcacheError(f"{rows.waiting} documents were not scored")

    def _rows(self, store, split: str | None, top_k: int, *, confusions: dict | None = None,
              progress: bool = False):
        """Stream ``store`` once through :meth:`_scored`: every batch goes through every model
        before the next is read."""
        from tqdm import tqdm

        from embcache.cache.dataset import Batching, pipeline_errors, streamed_dataset
        from embcache.cache.stream import plan_split

        self.load()
        plan = plan_split(store, split)
        if plan.num_docs == 0:
            raise StoreError(f"Store {store.url} has no documents"
                             + (f" in the {split} split" if split else ""))
        labelled = store.labelled  # the true label is a column; metrics only when asked
        # Batches come bucketed by length; `seq` puts each row back at its place in the input.
        ds = streamed_dataset(store, split, batching=Batching(
            batch_size=self.batch_size, with_labels=labelled, with_seq=True,
            with_ids=any_token_ids([r.model for r in self.runs])), plan=plan,
            max_wait=_MAX_WAIT)

        def batches():
            for batch in ds:
                features, y = batch if labelled else (batch, None)
                seq = features.pop("seq").numpy()
                yield features, (y.numpy() if labelled else None), seq

        bar = tqdm(total=plan.num_docs, unit="doc", disable=not progress, file=sys.stderr,
                   desc="score", dynamic_ncols=True)
        # The store is not replaced while it is streamed (see jobs.locks).
        with reading(str(store.url)), contextlib.closing(bar), pipeline_errors():
            yield from self._scored(batches(), doc_ids_in_order(split, store), top_k,
                                    labels=store.label_names if labelled else None,
                                    confusions=confusions, bar=bar)

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
            with self._as_store(data, split, corpus=corpus, keep_store=keep_store,
                                progress=progress) as store, \
                    writing(f"predictions {out_path}"), \
                    open_writer(tmp, fmt, self.columns(top_k, truth=store.labelled)) as writer, \
                    contextlib.redirect_stdout(sys.stderr):
                for ids, cols in self._rows(store, split, top_k, confusions=confusions,
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
                how = {"method": self.ensemble,
                       "weights": {r.name: round(float(w), 6)
                                   for r, w in zip(self.group, self.weights)}}
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
    vectors_path: str | None = None,
    encoder: str | None = None,
    tokenizer: str | None = None,
    split: str | None = None,
    top_k: int = ScoreConfig.top_k,
    batch_size: int = ScoreConfig.batch_size,
    keep_store: str | None = None,
    metrics_dir: str | None = None,
    progress: bool = False,
    cache_dir: str | None = None,
    ensemble: str = ScoreConfig.ensemble,
) -> ScoreSummary:
    """Score ``input_path`` (a store, or raw documents in ``corpus``'s format) with every model
    into the file ``out``: one embedding pass, one read of the store, memory bounded whatever
    the number of documents. (:class:`Scorer` keeps the models loaded between calls.)

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
                    cache_dir=cache_dir,
                    batch_size=batch_size, ensemble=ensemble, load=False)
    summary = scorer.write(input_path, out_path, split=split, top_k=top_k, corpus=corpus,
                           keep_store=keep_store, metrics_dir=metrics_dir, progress=progress)
    summary.seconds = time.perf_counter() - t0
    summary.kept_store = keep_store
    return summary


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


def _add_topk(cols: dict, name: str, probs: np.ndarray, label_names: list[str], k: int) -> None:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    for j in range(k):
        suffix = "" if j == 0 else f"_{j + 1}"
        idx = order[:, j] if j < probs.shape[1] else None
        cols[f"{name}_label{suffix}"] = ([label_names[i] for i in idx] if idx is not None
                                         else [""] * len(probs))
        cols[f"{name}_prob{suffix}"] = (np.round(probs[np.arange(len(probs)), idx], 6).tolist()
                                        if idx is not None else [None] * len(probs))


