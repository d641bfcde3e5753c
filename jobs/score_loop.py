"""The scoring loop, for texts and stores alike: one stream of batches per representation, each
through its view's models, rows released in input order once every view has scored them, then
the ensemble and the top-k columns. A mixin of :class:`embcache.jobs.score.Scorer`."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import numpy as np

from embcache.cache.errors import EmbcacheError, StoreError
from embcache.cache.locks import reading
from embcache.jobs.ensemble import EnsembleFit, pool
from embcache.jobs.metrics import Confusion

# Texts a Scorer embeds at once (memory: their kept tokens' vectors, about 25 MB at 20
# Newsgroups' mean length and 50 dimensions).
_TEXT_PIECE = 1024


# A bucket's short batch leaves once its oldest document has waited this many documents: rows
# wait at most that long to be written in input order (memory: that many rows of predictions).
_MAX_WAIT = 4096


@dataclass(frozen=True)
class Output:
    """What each model and the ensemble write per document: their ``top_k`` labels, each with
    its probability (``<name>_label``, ``<name>_prob``, then ``_2``...), and with
    ``probabilities`` every label's probability (``<name>_p_<label>``, in the run's label
    order)."""

    top_k: int = 1
    probabilities: bool = False

    @classmethod
    def checked(cls, top_k: int, probabilities: bool) -> Output:
        """The columns asked for, checked (one line naming the argument)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise EmbcacheError("Invalid value for `top_k`. Expected a positive integer. "
                                f"Received: top_k={top_k!r}")
        if not isinstance(probabilities, bool):
            raise EmbcacheError("Invalid value for `probabilities`. Expected True or False. "
                                f"Received: probabilities={probabilities!r}")
        return cls(top_k, probabilities)

    def columns(self, name: str, label_names: list[str]) -> list[str]:
        cols = []
        for k in range(1, self.top_k + 1):
            suffix = "" if k == 1 else f"_{k}"
            cols += [f"{name}_label{suffix}", f"{name}_prob{suffix}"]
        if self.probabilities:
            cols += [f"{name}_p_{label}" for label in label_names]
        return cols

    def add(self, cols: dict, name: str, probs: np.ndarray, label_names: list[str]) -> None:
        _add_topk(cols, name, probs, label_names, self.top_k)
        if self.probabilities:
            rounded = np.round(probs, 6)
            for j, label in enumerate(label_names):
                cols[f"{name}_p_{label}"] = rounded[:, j].tolist()


def _text_features(x, lengths, with_ids: bool) -> dict:
    """A batch of :func:`~embcache.cache.stream.text_batches` as the models' features."""
    if with_ids:
        x, ids = x
        return {"embedded": x, "lengths": lengths, "token_ids": ids}
    return {"embedded": x, "lengths": lengths}



class LoopMixin:
    """The loop over batches; the scorer gives it its runs, views, ensemble and batch size."""

    runs: list
    views: list
    group: list
    fitted: EnsembleFit | None
    weights: np.ndarray | None
    batch_size: int

    def load(self) -> None:
        raise NotImplementedError

    def columns(self, output: Output, truth: bool = False) -> list[str]:
        raise NotImplementedError

    def _classify_texts(self, texts: list[str], ids: list, output: Output) -> dict[str, list]:
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

        out: dict[str, list] = {c: [] for c in self.columns(output)}
        for part_ids, cols in self._scored([stream(v) for v in self.views], iter(ids), output,
                                           labels=None):
            out["doc_id"] += part_ids
            for c, values in cols.items():
                out[c] += values
        return out

    def combine(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities from its members' (``self.group``): a weighted mean, or
        for a fitted ensemble its log-linear pool (:func:`embcache.jobs.ensemble.pool`)."""
        stacked = np.stack([probs[r.name] for r in self.group])
        if self.fitted is not None:
            return pool(stacked, self.fitted.coefficients, linear=self.fitted.linear)
        assert self.weights is not None  # a group has its weights
        return np.tensordot(self.weights, stacked, axes=1)

    def _columns(self, probs: dict[str, np.ndarray], output: Output) -> dict[str, list]:
        cols: dict[str, list] = {}
        for run in self.runs:
            output.add(cols, run.name, probs[run.name], run.label_names)
        if self.group:
            probs["ensemble"] = p = self.combine(probs)
            output.add(cols, "ensemble", p, self.group[0].label_names)
        return cols

    def _truth_maps(self, labels: list[str] | None, confusions: dict | None) -> dict:
        """Per model, the store's label index -> the model's (-1: a label it does not know);
        each model's (and the ensemble's) confusion matrix set up in ``confusions``."""
        truth_maps: dict[str, np.ndarray] = {}
        if labels is not None and confusions is not None:
            for run in self.runs:
                index = {n: i for i, n in enumerate(run.label_names)}
                truth_maps[run.name] = np.array([index.get(n, -1) for n in labels], dtype=np.int64)
                confusions[run.name] = Confusion(run.label_names)
            if self.group:
                confusions["ensemble"] = Confusion(self.group[0].label_names)
                truth_maps["ensemble"] = truth_maps[self.group[0].name]
        return truth_maps

    def _scored(self, streams: list, ids, output: Output, *, labels: list[str] | None,
                confusions: dict | None = None, bar=None, collect: dict | None = None):
        """The one scoring loop, for texts and stores: one stream of ``(features, y, seq)``
        batches (in length buckets) per representation, each through its view's models; the
        streams advance together (the one behind reads next), and rows are released in input
        order once every view has scored them (they wait at most ``_MAX_WAIT`` documents per
        view: memory, that many rows). Yields ``(doc_ids, columns)``. ``labels``: a labelled
        store's label names (the first stream's ``y`` then holds the true labels, written as
        ``true_label`` and counted into ``confusions``, per model, when given). ``collect``:
        gets each run's probabilities and the truth, in input order (fitting an ensemble)."""
        truth_maps = self._truth_maps(labels, confusions)
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
            scored = self.views[k].probabilities(features)
            if k == 0:  # each document's tokens, once: from the first representation
                scored.update(token_counts(features))
            rows.add(k, seq, scored, y if k == 0 else None)
            seen[k] += len(seq)
            if bar is not None and k == 0:
                bar.update(len(seq))
            probs, truth, n = rows.ready()
            if not n:
                continue
            counts = {c: probs.pop(c).tolist() for c in COUNT_COLUMNS}
            cols = self._columns(probs, output)
            cols.update(counts)
            if collect is not None:
                for name, p in probs.items():
                    collect.setdefault(name, []).append(p)
                if truth is not None:
                    collect.setdefault("_truth", []).append(truth)
            if labels is not None and truth is not None:
                cols["true_label"] = [labels[i] for i in truth.tolist()]
                for name, conf in (confusions or {}).items():
                    conf.add(truth_maps[name][truth], probs[name].argmax(axis=1))
            yield [next(ids) for _ in range(n)], cols
        if rows.waiting:
            raise EmbcacheError(f"{rows.waiting} documents were not scored")

    def _rows(self, stores: list, split: str | None, output: Output, *,
              confusions: dict | None = None, progress: bool = False,
              collect: dict | None = None, plans: list | None = None,
              docs: tuple[int, int] | None = None, in_process: bool | None = None):
        """Stream every view's store once through :meth:`_scored`: every batch goes through
        every model of its view before the next is read. ``plans`` and ``docs``: a part of
        the pass only (:mod:`embcache.jobs.score_dask`), the documents at positions
        ``docs[0] <= i < docs[1]``, whose chunks ``plans`` (one per store) hold;
        ``in_process``: see :func:`~embcache.cache.dataset.streamed_dataset`."""
        from tqdm.auto import tqdm

        from embcache.cache.dataset import Batching, pipeline_errors, streamed_dataset
        from embcache.cache.stream import plan_split

        self.load()
        if plans is None:
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
                with_ids=view.with_ids), plan=plan, max_wait=_MAX_WAIT, in_process=in_process)
            for batch in ds:
                features, y = batch if with_labels else (batch, None)
                seq = features.pop("seq").numpy()
                yield features, (y.numpy() if y is not None else None), seq

        bar = tqdm(total=plans[0].num_docs, unit="doc", disable=not progress, file=sys.stderr,
                   desc="score", dynamic_ncols=True)
        with contextlib.ExitStack() as held:
            for s in stores:  # no store is replaced while it is streamed (see cache.locks)
                held.enter_context(reading(str(s.url)))
            held.enter_context(contextlib.closing(bar))
            held.enter_context(pipeline_errors())
            streams = [batches(v, s, p, i == 0)
                       for i, (v, s, p) in enumerate(zip(self.views, stores, plans))]
            ids = stores[0].split_doc_ids(split, *(docs or (0, None)))
            yield from self._scored(streams, ids, output,
                                    labels=stores[0].label_names if labelled else None,
                                    confusions=confusions, bar=bar, collect=collect)


# After each document's predictions: its kept tokens (after truncation), and those of them that
# carried a vector (an out-of-vocabulary word is embedded as zeros under the default `oov`
# policy): a text of unknown words shows as known_tokens 0, whatever label it was given.
COUNT_COLUMNS = ("tokens", "known_tokens")


def token_counts(features: dict) -> dict[str, np.ndarray]:
    """``tokens`` and ``known_tokens`` (rows with a non-zero vector) of a batch's documents."""
    import tensorflow as tf

    known = tf.math.count_nonzero(tf.reduce_any(tf.not_equal(features["embedded"], 0.0), axis=-1),
                                  axis=-1)
    return {"tokens": np.asarray(features["lengths"], np.int64),
            "known_tokens": known.numpy().astype(np.int64)}


class JoinedRows:
    """Prediction rows arrive by length bucket, from each representation's stream on its own;
    ``ready()`` releases, in input order, the rows every stream has scored."""

    def __init__(self, streams: int):
        self.streams, self.next = streams, 0
        self.rows: dict[int, list] = {}

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



def _add_topk(cols: dict, name: str, probs: np.ndarray, label_names: list[str], k: int) -> None:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    for j in range(k):
        suffix = "" if j == 0 else f"_{j + 1}"
        idx = order[:, j] if j < probs.shape[1] else None
        cols[f"{name}_label{suffix}"] = ([label_names[i] for i in idx] if idx is not None
                                         else [""] * len(probs))
        cols[f"{name}_prob{suffix}"] = (np.round(probs[np.arange(len(probs)), idx], 6).tolist()
                                        if idx is not None else [None] * len(probs))


