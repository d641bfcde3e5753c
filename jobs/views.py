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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embcache.cache.errors import EmbcacheError, ModelError, StoreError
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
    embedder: Any = field(default=None, repr=False)

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
    def require_source(self, what: str) -> str:
        if self.meta.encoder is not None:
            if self.encoder is None:
                raise EmbcacheError(f"Scoring {what} needs `encoder=`: the encoder the models were "
                                    f"trained on ({self.meta.encoder.get('source')})")
            return self.encoder
        if self.vectors is None:
            raise EmbcacheError(f"Scoring {what} needs `vectors=`: the file the models were "
                                f"trained with ({self.meta.vectors.source})")
        return self.vectors

    def encoder_model(self):
        """The view's encoder, loaded once and checked against the cards by fingerprint."""
        from embcache.cache.embed import get_encoder
        from embcache.cache.encoder import require_keras_hub, resolve

        spec = self.require_source("text")
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

    def vectors_table(self):
        """The view's word vectors or subword table, checked against the cards."""
        from embcache.cache.subword import load_subword
        from embcache.cache.vectors import load_vectors

        if self.meta.encoder is not None:
            raise EmbcacheError(f"The models were trained on a transformer encoder's store "
                                f"({self.meta.encoder.get('source')}): pass `encoder=`, not "
                                "`vectors=`")
        vectors = self.require_source("text")
        if self.meta.subword is not None:
            table = load_subword(vectors, self.tokenizer, cache_dir=self.cache_dir)
        else:
            if self.tokenizer is not None:
                raise EmbcacheError("`tokenizer=` is for models trained on a static subword "
                                    f"table; these were trained on word vectors "
                                    f"({self.meta.vectors.source})")
            table = load_vectors(vectors, cache_dir=self.cache_dir)
        if table.fingerprint != self.meta.vectors.fingerprint:
            raise ModelError(f"Vectors {vectors} (fingerprint {table.fingerprint[:12]}) are not "
                             f"the ones the models were trained with ({self.meta.vectors.source}, "
                             f"fingerprint {self.meta.vectors.fingerprint[:12]})")
        return table

    def text_embedder(self):
        """The store writer's embedder for the view's source, built once."""
        from embcache.cache.embed import BlockEmbedder, EncoderEmbedder, SubwordEmbedder, oov_vector

        if self.embedder is None and self.meta.encoder is not None:
            self.embedder = EncoderEmbedder(self.encoder_model()[1], self.meta.settings)
        elif self.embedder is None and self.meta.subword is not None:
            self.embedder = SubwordEmbedder(self.vectors_table(), self.meta.settings)
        elif self.embedder is None:
            table = self.vectors_table()
            self.embedder = BlockEmbedder(table, self.meta.settings,
                                          oov_vector(table, self.meta.settings))
        return self.embedder

    def embed_input(self, corpus, target: str, progress: bool = False):
        """Embed raw documents with exactly the view's settings into the store ``target``."""
        from dataclasses import replace

        from embcache.cache.meta import SplitSettings
        from embcache.cache.store import open_store
        from embcache.jobs.embed_corpus import embed_corpus

        source = self.require_source(f"raw documents ({corpus.path})")
        corpus = replace(corpus, strip_headers=self.meta.strip_headers)
        common = dict(settings=self.meta.settings, split=SplitSettings(val_frac=0.0, test_frac=0.0),
                      overwrite=True, progress=progress, cache_dir=self.cache_dir)
        if self.meta.encoder is not None:
            ref, _enc = self.encoder_model()  # checks the fingerprint before anything is written
            embed_corpus(corpus, None, target, encoder=source, encoder_batch=ref.batch_size,
                         **common)
        else:
            self.vectors_table()  # checks the fingerprint before anything is written
            embed_corpus(corpus, source, target, tokenizer=self.tokenizer, **common)
        return open_store(target)

    def check_store(self, store) -> None:
        diff = self.meta.contract_differences(store.meta)
        if diff:
            raise StoreError(f"Store {store.url} was embedded differently from what the models "
                             f"expect ({'; '.join(diff)})")


def contract_key(meta: StoreMeta) -> str:
    return json.dumps(meta.contract(), sort_keys=True, default=str)


def make_views(runs: list[Run], *, vectors: str | Sequence[str] | None, encoder: str | None,
               tokenizer: str | None, cache_dir: str | None) -> list[View]:
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
    given = [vectors] if isinstance(vectors, (str, Path)) else list(vectors or [])
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
        word_views[0].tokenizer = tokenizer  # as before: a wrong one is refused by vectors_table
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
    return None  # refused in one line when text needs it (require_source)
