"""Multinomial naive Bayes over the lexical channel: the same hashed unigrams and bigrams and
L2-normalised sublinear TF-IDF as ``tfidf``, with class-conditional feature probabilities
counted in one pass over the training split instead of learned (scikit-learn's
``MultinomialNB`` on ``TfidfVectorizer`` features).

Alone it is about as accurate as ``tfidf`` and trains in the counting passes; beside it in an
ensemble it adds what a discriminative model misses (measured in BENCHMARKS.md). It reads only
``token_ids`` and ``lengths`` (:class:`embcache.models.layers.HashedNaiveBayes`); its one
epoch validates it.
"""

import keras

from embcache.models.layers import HashedNaiveBayes, inputs
from embcache.models.registry import register


@register("nb")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre",
          max_features: int = 1 << 19, min_df: int = 2, ngrams: int = 2, alpha: float = 0.01):
    """``max_features``/``min_df``/``ngrams``: the features kept, as ``tfidf``'s; ``alpha``: the
    additive smoothing of the feature counts (smaller trusts rare features more)."""
    ins = inputs(dim, token_ids=True)
    lexical = HashedNaiveBayes(num_classes, max_features=max_features, ngrams=ngrams,
                               padding=padding, min_df=min_df, alpha=alpha, name="lexical")
    logits = lexical(ins["token_ids"], ins["lengths"])
    return keras.Model({"token_ids": ins["token_ids"], "lengths": ins["lengths"]},
                       keras.layers.Softmax(name="probabilities", dtype="float32")(logits), name="nb")
