"""embcache's linear baseline: sublinear TF-IDF over hashed unigrams and bigrams of the lexical
channel, L2-normalised, then a softmax (the field's TF-IDF + logistic regression, in the graph).

It reads only ``token_ids`` and ``lengths``: the store must hold the lexical channel. Its
document frequencies come from the training split, counted once before the first epoch, and are
saved with the run (:class:`embcache.models.layers.HashedTfidf`). Every dense built-in model
can add these logits to its own with ``--param wide=true``.
"""

import keras

from embcache.models.layers import HashedTfidf, inputs
from embcache.models.registry import register


@register("tfidf")
def build(*, max_len: int, dim: int, num_classes: int, padding: str = "pre",
          max_features: int = 1 << 19, min_df: int = 2, ngrams: int = 2, scale: float = 10.0):
    """``max_features``/``min_df``: which features the training split's count keeps (as
    scikit-learn's ``TfidfVectorizer``); ``ngrams``: 1 (unigrams) or 2 (and bigrams);
    ``scale``: the logits' factor, the lexical weights' learning-rate factor under Adam."""
    ins = inputs(dim, token_ids=True)
    lexical = HashedTfidf(num_classes, max_features=max_features, ngrams=ngrams, padding=padding,
                          scale=scale, min_df=min_df, name="lexical")
    logits = lexical(ins["token_ids"], ins["lengths"])
    return keras.Model({"token_ids": ins["token_ids"], "lengths": ins["lengths"]},
                       keras.layers.Softmax(name="probabilities", dtype="float32")(logits), name="tfidf")
