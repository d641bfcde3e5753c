"""Representations: the runs of a scoring call grouped by how their input was embedded.

Runs trained on identically embedded data (the same :meth:`StoreMeta.contract`: vectors,
tokenizer, ``max_len``, padding ...) form one :class:`View`. A view embeds raw input once for
all its models (its vectors, subword table or encoder, checked by fingerprint), streams one
store, and runs all its models on each batch through one compiled function. The scorer
(:mod:`embcache.jobs.score`) runs one view or several side by side over the same documents:
an ensemble across representations (GloVe, WordLlama, MiniLM, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embcache.cache.errors import EmbcacheError, StoreError, StrPath
from embcache.cache.meta import StoreMeta
from embcache.jobs.predict import any_token_ids, predict_all
from embcache.jobs.runs import Run


@dataclass
class View:
    """One representation: its store metadata, its runs, and what embeds text for them."""

    meta: StoreMeta
    runs: list[Run]
    vectors: str | None = None
    encoder: str | None = None
    tokenizer: str | None = None
    cache_dir: str | None = None
    predict: Any = field(default=None, repr=False)
    source_: Any = field(default=None, repr=False)  # the EmbeddingSource, once loaded

    @property
    def key(self) -> str:
        return contract_key(self.meta)

    @property
    def with_ids(self) -> bool:
        return any_token_ids([r.model for r in self.runs])

    @property
    def source(self) -> str:
        """What embedded the view's store, for messages: the encoder or vectors file."""
        if self.meta.encoder is not None:
            return str(self.meta.encoder.get("source"))
        return self.meta.vectors.source

    def load(self) -> None:
        if self.predict is None:
            self.predict = predict_all([r.model for r in self.runs], self.meta.dim)

    def probabilities(self, features) -> dict[str, Any]:
        """Each run's class probabilities (NumPy) for a batch of this view's features."""
        return {r.name: p.numpy() for r, p in zip(self.runs, self.predict(features))}

    # -- embedding raw input ---------------------------------------------------------------
    def embedding_source(self, what: str = "text"):
        """What embedded the view's store (:mod:`embcache.cache.sources`), loaded once from the
        file or encoder given and checked against the cards by fingerprint."""
        if self.source_ is None:
            from embcache.cache.sources import source_for

            self.source_ = source_for(self.meta, vectors=self.vectors, encoder=self.encoder,
                                      tokenizer=self.tokenizer, cache_dir=self.cache_dir,
                                      what=what)
        return self.source_

    def require_source(self, what: str) -> None:
        """Whether the file or encoder the view needs was given (nothing loads)."""
        from embcache.cache.sources import require_arguments

        require_arguments(self.meta, vectors=self.vectors, encoder=self.encoder,
                          tokenizer=self.tokenizer, what=what)

    def text_embedder(self):
        """The store writer's embedder for the view's source, built once."""
        return self.embedding_source().embedder()

    def embed_input(self, corpus, target: str, progress: bool = False):
        """Embed raw documents with exactly the view's settings into the store ``target``."""
        from dataclasses import replace

        from embcache.cache.meta import SplitSettings
        from embcache.cache.store import open_store
        from embcache.jobs.embed_corpus import embed_corpus

        # loaded and checked by fingerprint before anything is written
        source = self.embedding_source(f"raw documents ({corpus.path})")
        corpus = replace(corpus, strip_headers=self.meta.strip_headers)
        embed_corpus(corpus, None, target, source=source,
                     split=SplitSettings(val_frac=0.0, test_frac=0.0), overwrite=True,
                     progress=progress, cache_dir=self.cache_dir)
        return open_store(target)

    def check_store(self, store) -> None:
        diff = self.meta.contract_differences(store.meta)
        if diff:
            raise StoreError(f"Store {store.url} was embedded differently from what the models "
                             f"expect ({'; '.join(diff)})")


def contract_key(meta: StoreMeta) -> str:
    return json.dumps(meta.contract(), sort_keys=True, default=str)


def make_views(runs: list[Run], *, vectors: StrPath | Sequence[StrPath] | None,
               encoder: str | None, tokenizer: str | None, cache_dir: str | None) -> list[View]:
    """The runs grouped by representation, in order of first appearance, each given its
    source for raw input: ``encoder`` to a view built on an encoder, and to the others the
    one ``vectors`` file given, or of several the one whose file name their cards record
    (each is checked by fingerprint when it is used).

    Raises:
        EmbcacheError: several encoder views (one ``encoder=`` can serve one), or vectors that
            cannot be told apart.
    """
    views: dict[str, View] = {}
    for run in runs:
        key = contract_key(run.meta)
        if key not in views:
            views[key] = View(meta=run.meta, runs=[], cache_dir=cache_dir)
        views[key].runs.append(run)
    out = list(views.values())
    given = [vectors] if isinstance(vectors, (str, os.PathLike)) else list(vectors or [])
    word_views = [v for v in out if v.meta.encoder is None]
    encoder_views = [v for v in out if v.meta.encoder is not None]
    if len(encoder_views) > 1 and encoder is not None:
        raise EmbcacheError("These runs come from several encoders' stores; one `encoder=` can "
                            "serve only one: score them from their stores")
    for v in encoder_views:
        v.encoder = encoder
    for v in word_views:
        v.tokenizer = tokenizer if v.meta.subword is not None else None
        v.vectors = _pick_vectors(v, [str(g) for g in given], len(word_views))
    if tokenizer is not None and len(word_views) == 1:
        word_views[0].tokenizer = tokenizer  # as before: a wrong one is refused by embedding_source
    return out


def _pick_vectors(view: View, given: list[str], views: int) -> str | None:
    if not given:
        return None
    if len(given) == 1:  # one file for every word view (its fingerprint is checked on use)
        return given[0]
    want = Path(view.meta.vectors.source).name
    matches = [g for g in given if Path(g).name == want]
    if len(matches) == 1:
        return matches[0]
    if views == 1 and len(given) > 1:
        raise EmbcacheError(f"Several `vectors=` given ({', '.join(given)}) for models trained on "
                            f"one set ({view.meta.vectors.source}): give that one")
    return None  # refused in one line when text needs it (embedding_source)
