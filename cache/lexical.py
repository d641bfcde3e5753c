"""The lexical channel: each kept token's id, stored beside its vector (``token_ids``), and the
hashed n-gram features that the lexical models (``tfidf``, ``nb``, the ``wide`` variants) learn
from.

A token's id is the tokenizer's own id for subword tables and encoders, and for word vectors a
stable hash of the word (:func:`word_id`), not its vocabulary row: out-of-vocabulary words keep
distinct ids, and they are often the most telling words (names, part numbers, jargon).

Features are unigrams and bigrams of adjacent ids, identified by a bucket of a prime-sized hash
space (:data:`BUCKETS`): ``key mod BUCKETS``, where a unigram's key is its id and a bigram's is
``2**31 + (a * 1000003 + b) mod (2**31 - 1)``. The same integer arithmetic runs here, in NumPy,
to count document frequencies over a store's split, and in the graph
(:class:`embcache.models.layers.HashedTfidf`), so the two always agree. All values stay below
2**63: no step depends on how an overflow wraps.

NumPy only.
"""

from __future__ import annotations

import zlib

import numpy as np

# Hash space of the features: a prime near 2**24 (16.7M buckets). Measured on 20 Newsgroups
# (16,012 training documents, 420k features kept at min_df=2): ~4M distinct unigrams and bigrams,
# so about one in nine meets another in its bucket. A document-frequency count over it is one
# int64 array of 134 MB, whatever the corpus's size.
BUCKETS = 16_777_213
BIGRAM_BASE = 1 << 31
_PAIR_PRIME = 2_147_483_647  # 2**31 - 1
_PAIR_MULT = 1_000_003
# What ``token_ids`` holds, recorded in the store's ``lexical`` attribute.
WORD_HASH = "crc32(utf-8 word) & 0x7fffffff"
TOKENIZER_IDS = "tokenizer ids"


def word_id(word: str) -> int:
    """A word's stable id: the CRC-32 of its UTF-8 bytes, as a non-negative int32. The same on
    every machine and Python (unlike ``hash``); about 120 pairs collide among a million words."""
    return zlib.crc32(word.encode("utf-8", "surrogateescape")) & 0x7FFFFFFF


class WordIds:
    """``word -> id`` through a bounded memo (each word hashed once per process, not per
    occurrence; the memo is cleared when it reaches ``limit`` words: memory stays bounded on a
    corpus of any vocabulary)."""

    def __init__(self, limit: int = 1 << 20):
        self.memo: dict[str, int] = {}
        self.limit = limit

    def __call__(self, words: list[str]) -> np.ndarray:
        memo = self.memo
        if len(memo) > self.limit:
            memo.clear()
        out = np.empty(len(words), dtype=np.int32)
        for i, w in enumerate(words):
            v = memo.get(w)
            if v is None:
                v = memo[w] = word_id(w)
            out[i] = v
        return out


def doc_features(ids: np.ndarray, lengths: np.ndarray, ngrams: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The feature buckets of documents stored back to back: ``ids`` (rows,) and their
    ``lengths`` -> ``(doc, bucket)`` int64 arrays, one entry per n-gram occurrence."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(lengths)
    doc = np.repeat(np.arange(n, dtype=np.int64), np.asarray(lengths, dtype=np.int64))
    keys, docs = [ids % BUCKETS], [doc]
    if ngrams >= 2 and len(ids) > 1:
        same = doc[1:] == doc[:-1]
        a, b = ids[:-1][same], ids[1:][same]
        keys.append((BIGRAM_BASE + (a * _PAIR_MULT + b) % _PAIR_PRIME) % BUCKETS)
        docs.append(doc[1:][same])
    return np.concatenate(docs), np.concatenate(keys)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a sorted array and where each run of them starts: a comparison,
    no hashing (NumPy 2's ``np.unique`` took a hash path measured 4x slower on these int64
    keys). ``np.diff(np.r_[starts, len(values)])`` is each one's count."""
    if not len(values):
        return values, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[starts], starts


def _counted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values, sorted, and how often each occurs."""
    values = np.sort(values)
    distinct, starts = _runs(values)
    return distinct, np.diff(np.r_[starts, len(values)])


class DocumentFrequencies:
    """Documents containing each feature bucket, counted block by block (one pass over a
    split). Memory: the count array (``BUCKETS`` int64, 134 MB) and one block's features."""

    def __init__(self, ngrams: int = 2):
        self.ngrams = ngrams
        self.counts = np.zeros(BUCKETS, dtype=np.int64)
        self.num_docs = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        doc, bucket = doc_features(ids, lengths, self.ngrams)
        present = _runs(np.sort(doc * BUCKETS + bucket))[0] % BUCKETS  # each (doc, feature) once
        # Each bucket's documents in this block, added where they fall: a bincount over all
        # BUCKETS would allocate and add 134 MB per block (measured: most of the count's time).
        buckets, docs = _counted(present)
        self.counts[buckets] += docs
        self.num_docs += len(lengths)

    def vocabulary(self, max_features: int, min_df: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """The kept features, as sklearn's ``TfidfVectorizer(min_df=..., max_features=...,
        smooth_idf=True)`` keeps them: buckets seen in at least ``min_df`` documents, the most
        frequent ``max_features`` of them (ties: the lower bucket), sorted by bucket, and each
        one's ``idf = ln((1 + n) / (1 + df)) + 1``."""
        kept = np.flatnonzero(self.counts >= min_df)
        if len(kept) > max_features:
            order = np.lexsort((kept, -self.counts[kept]))[:max_features]
            kept = np.sort(kept[order])
        df = self.counts[kept].astype(np.float64)
        idf = np.log((1.0 + self.num_docs) / (1.0 + df)) + 1.0
        return kept.astype(np.int64), idf.astype(np.float32)


def tfidf_weights(ids: np.ndarray, lengths: np.ndarray, vocab: np.ndarray, idf: np.ndarray,
                  ngrams: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each document's kept features and their weights, as the lexical layers compute them in the
    graph: ``(doc, row, weight)``, one entry per distinct kept feature of a document, ``row`` its
    index in ``vocab`` (sorted buckets), ``weight`` its sublinear TF-IDF ``(1 + ln tf) * idf``,
    L2-normalised per document. Features outside ``vocab`` weigh nothing."""
    doc, bucket = doc_features(ids, lengths, ngrams)
    key, tf = _counted(doc * BUCKETS + bucket)
    doc, bucket = key // BUCKETS, key % BUCKETS
    row = np.searchsorted(vocab, bucket)
    hit = row < len(vocab)
    hit[hit] = vocab[row[hit]] == bucket[hit]
    doc, row, tf = doc[hit], row[hit], tf[hit]
    weight = (1.0 + np.log(tf.astype(np.float64))) * idf[row]
    norm = np.bincount(doc, weight * weight, minlength=len(lengths))
    return doc, row, weight / np.sqrt(np.maximum(norm[doc], 1e-12))


class ClassFeatureSums:
    """Each class's sum of its documents' TF-IDF weights per kept feature, and its documents
    (what multinomial naive Bayes is fitted from), added block by block. Memory: ``len(vocab)``
    x classes float64 (420k features x 20 classes: 67 MB) and one block's features."""

    def __init__(self, vocab: np.ndarray, idf: np.ndarray, num_classes: int, ngrams: int = 2):
        self.vocab, self.idf, self.ngrams = vocab, idf, ngrams
        self.sums = np.zeros((len(vocab), num_classes), dtype=np.float64)
        self.docs = np.zeros(num_classes, dtype=np.int64)

    def add(self, ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> None:
        k = self.sums.shape[1]
        labels = np.asarray(labels, dtype=np.int64)
        doc, row, weight = tfidf_weights(ids, lengths, self.vocab, self.idf, self.ngrams)
        cell, index = np.unique(row * k + labels[doc], return_inverse=True)
        self.sums.reshape(-1)[cell] += np.bincount(index, weight, minlength=len(cell))
        self.docs += np.bincount(labels, minlength=k)


def _split_blocks(store, plan, split: str | None, labels: bool = False):
    """One split's documents block by block: ``(ids, lengths, labels or None)``, read from
    ``offsets``, ``lengths``, ``split`` (and ``labels``) and the block's ``token_ids`` rows,
    never the vectors. Memory: one block."""
    from embcache.cache.meta import SPLIT_NAMES

    if not store.meta.has_token_ids:
        store.reading_ids()  # raises the one-line "rebuild" error
    c = store.chunk_docs
    for chunk in plan.chunks.tolist():
        lo, hi = chunk * c, min((chunk + 1) * c, store.num_docs)
        offsets, lengths = store.read("offsets", lo, hi), store.read("lengths", lo, hi)
        first, end = int(offsets[0]), int(offsets[-1] + lengths[-1])
        ids = store.read("token_ids", first, end) if end > first else np.zeros(0, np.int32)
        y = store.read("labels", lo, hi) if labels else None
        if split is not None:
            # A block's documents lie back to back from `first`: one mask over its rows.
            keep = store.read("split", lo, hi) == SPLIT_NAMES.index(split)
            ids, lengths = ids[np.repeat(keep, lengths)], lengths[keep]
            y = y[keep] if y is not None else None
        yield ids, lengths, y


def count_split(store, plan, split: str | None, ngrams: int = 2,
                progress=None) -> DocumentFrequencies:
    """Document frequencies over one split of a store with the lexical channel, read block by
    block (:func:`_split_blocks`). Memory: the counts and one block. ``progress(n)``: called
    with each block's documents."""
    df = DocumentFrequencies(ngrams)
    for ids, lengths, _ in _split_blocks(store, plan, split):
        df.add(ids, lengths)
        if progress is not None:
            progress(len(lengths))
    return df


def class_sums(store, plan, split: str, vocab: np.ndarray, idf: np.ndarray, num_classes: int,
               ngrams: int = 2) -> ClassFeatureSums:
    """:class:`ClassFeatureSums` over one labelled split, in one pass (:func:`_split_blocks`).
    Memory: the sums and one block."""
    sums = ClassFeatureSums(vocab, idf, num_classes, ngrams)
    for ids, lengths, labels in _split_blocks(store, plan, split, labels=True):
        sums.add(ids, lengths, labels)
    return sums
