"""Scoring's input: a store (joined by doc id to the stores of the other representations) or raw
documents (embedded once per representation into temporary stores), as one store per view.
A mixin of :class:`embcache.jobs.score.Scorer`."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import EmbcacheError, StoreError
from embcache.cache.meta import SPLIT_NAMES
from embcache.cache.store import Store, open_store, store_state


class InputMixin:
    """What turns ``data`` into the stores the scoring loop reads."""

    views: list
    stores: list[str]

    def load(self) -> None:
        raise NotImplementedError

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
                                     f"(`stores=`) and the one their card names "
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


