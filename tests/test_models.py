"""The contract every registered model keeps: build from a store's shape, train a step, save and
load (safe mode) with identical predictions, and no Embedding layer."""

import keras
import numpy as np
import pytest

from embcache import models
from embcache.cache.errors import ModelError

MAX_LEN, DIM, CLASSES = 160, 8, 3


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, MAX_LEN, n).astype("int32")
    x = rng.normal(size=(n, MAX_LEN, DIM)).astype("float32")
    ids = rng.integers(0, 50, size=(n, MAX_LEN)).astype("int32")  # a 50-word vocabulary
    for i, k in enumerate(lengths):
        x[i, : MAX_LEN - k] = 0.0  # pre-padding
        ids[i, : MAX_LEN - k] = 0
    return ({"embedded": x, "lengths": lengths, "token_ids": ids},
            rng.integers(0, CLASSES, n).astype("int32"))


def feed(model, x: dict) -> dict:
    """The features ``model`` takes (the lexical ones only where it reads ids)."""
    from embcache.models.registry import model_features

    return model_features(model, x)


def adapt(model) -> None:
    """The lexical layers' vocabulary from the batch's ids (as training counts it), and naive
    Bayes fitted to the batch."""
    from embcache.cache.lexical import ClassFeatureSums, DocumentFrequencies
    from embcache.models.layers import HashedNaiveBayes, HashedTfidf

    x, y = batch()
    ids = np.concatenate([row[MAX_LEN - k:] for row, k in zip(x["token_ids"], x["lengths"])])
    df = DocumentFrequencies()
    df.add(ids, x["lengths"])
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, HashedTfidf):
            vocab, idf = df.vocabulary(layer.max_features, min_df=1)
            layer.adapt(vocab, idf)
        if isinstance(layer, HashedNaiveBayes):
            sums = ClassFeatureSums(vocab, idf, CLASSES)
            sums.add(ids, x["lengths"], y)
            layer.fit_counts(sums.sums, sums.docs)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_model_contract(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build(name, max_len=MAX_LEN, dim=DIM, num_classes=CLASSES)
    assert not any(isinstance(layer, keras.layers.Embedding) for layer in model.layers)
    check_contract(model, tmp_path / f"{name}.keras")


def check_contract(model, path):
    from embcache.models.optimizers import Adam

    assert not any(isinstance(layer, keras.layers.Embedding) for layer in model.layers)
    adapt(model)
    model.compile(optimizer=Adam(), loss="sparse_categorical_crossentropy")
    x, y = batch()
    x = feed(model, x)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    changed = any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # A model fitted by counting (nb) has nothing a training step may change.
    assert changed == bool(model.trainable_weights)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (6, CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), probs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "kim_cnn", "bilstm", "gru", "fasttext", "transformer"])
def test_wide_variants_keep_the_contract(name, tmp_path):
    """``wide=true``: the lexical logits join the model's own; trained, saved and loaded with
    its adapted vocabulary and idf."""
    from embcache.models.registry import takes_token_ids

    keras.utils.set_random_seed(0)
    model = models.build(name, max_len=MAX_LEN, dim=DIM, num_classes=CLASSES, wide=True)
    assert takes_token_ids(model) and model.get_layer("lexical") is not None
    check_contract(model, tmp_path / f"{name}-wide.keras")


@pytest.mark.parametrize("name", ["bilstm", "gru", "fasttext", "transformer"])
def test_padding_does_not_leak(name):
    """Changing the values in padded positions must not change masked models' outputs."""
    keras.utils.set_random_seed(0)
    model = models.build(name, max_len=MAX_LEN, dim=DIM, num_classes=CLASSES)
    x, _ = batch()
    noisy = {"embedded": x["embedded"].copy(), "lengths": x["lengths"]}
    for i, k in enumerate(x["lengths"]):
        noisy["embedded"][i, : MAX_LEN - k] = 5.0
    np.testing.assert_allclose(model.predict(feed(model, x), verbose=0),
                               model.predict(feed(model, noisy), verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_registry_errors():
    # (names registered by other tests of this session may appear among them)
    with pytest.raises(ModelError, match="Unknown model 'nope'. Known models: bilstm, cnn, "
                                         "fasttext, gru, kim_cnn, .*transformer"):
        models.get("nope")
    with pytest.raises(ModelError, match="Model 'gru' has no hyperparameter 'filters'"):
        models.build("gru", max_len=10, dim=4, num_classes=2, filters=3)
    assert models.hyperparameters("cnn")["filters"] == 128


def pad_to(x: dict, length: int, padding: str = "pre") -> dict:
    """The same (pre-padded) documents padded to ``length`` steps on the ``padding`` side."""
    n, steps, dim = x["embedded"].shape
    out = np.zeros((n, length, dim), "float32")
    for i, k in enumerate(x["lengths"]):
        if k:
            rows = x["embedded"][i, steps - k:]
            if padding == "pre":
                out[i, length - k:] = rows
            else:
                out[i, :k] = rows
    ids = np.zeros((n, length), "int32")
    for i, k in enumerate(x["lengths"]):
        if k:
            if padding == "pre":
                ids[i, length - k:] = x["token_ids"][i, steps - k:]
            else:
                ids[i, :k] = x["token_ids"][i, steps - k:]
    return {"embedded": out, "lengths": x["lengths"], "token_ids": ids}


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_any_batch_length(name):
    """Every model takes batches of any length, shorter than its receptive field too (the cnn
    pads up to 149 steps itself), and the same documents give finite probabilities at each."""
    keras.utils.set_random_seed(0)
    model = models.build(name, max_len=MAX_LEN, dim=DIM, num_classes=CLASSES)
    x, _ = batch()
    x["lengths"] = np.minimum(x["lengths"], 3)
    for length in (3, 8, 40, 200, 1000):
        probs = model.predict_on_batch(feed(model, pad_to(x, length)))
        assert probs.shape == (6, CLASSES) and np.isfinite(probs).all(), length
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("name", ["bilstm", "gru", "fasttext", "transformer", "kim_cnn"])
def test_masked_models_ignore_the_batch_length(name, padding):
    """A document's probabilities from a masked model (kim_cnn: max over windows that hold a
    token) do not depend on how far its batch is padded."""
    keras.utils.set_random_seed(0)
    model = models.build(name, max_len=MAX_LEN, dim=DIM, num_classes=CLASSES, padding=padding)
    x, _ = batch()
    want = model.predict_on_batch(feed(model, pad_to(x, MAX_LEN, padding)))
    for length in (int(x["lengths"].max()), 400):
        np.testing.assert_allclose(model.predict_on_batch(feed(model, pad_to(x, length, padding))), want,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_cnn_with_an_edge_ignores_the_batch_length(padding):
    """With ``edge`` = receptive field - 1 zero steps before every document, no pooling window can
    reach further into the padding: cnn's output does not depend on the batch's length."""
    keras.utils.set_random_seed(0)
    model = models.build("cnn", max_len=MAX_LEN, dim=DIM, num_classes=CLASSES, padding=padding,
                         edge=148)
    x, _ = batch()
    want = model.predict_on_batch(feed(model, pad_to(x, MAX_LEN, padding)))
    for length in (int(x["lengths"].max()), 173, 400):
        np.testing.assert_allclose(model.predict_on_batch(feed(model, pad_to(x, length, padding))), want,
                                   rtol=1e-4, atol=1e-5)


def test_cnn_reads_the_last_token_at_every_batch_length():
    """cnn's pooling grid ends on the last step at any batch length (the batch is padded to the
    poolings' stride), so a document's final token always reaches its output."""
    keras.utils.set_random_seed(0)
    model = models.build("cnn", max_len=MAX_LEN, dim=DIM, num_classes=CLASSES)
    x, _ = batch()
    rows = x["lengths"] > 0
    for length in range(int(x["lengths"].max()), int(x["lengths"].max()) + 25, 4):
        a = pad_to(x, length)
        b = {"embedded": a["embedded"].copy(), "lengths": a["lengths"]}
        b["embedded"][:, -1] += 3.0  # pre padding: the last step is each document's last token
        pa, pb = model.predict_on_batch(feed(model, a)), model.predict_on_batch(feed(model, b))
        assert (np.abs(pa - pb).max(axis=1)[rows] > 1e-6).all(), length
