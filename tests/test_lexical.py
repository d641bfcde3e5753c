"""The lexical channel: token ids stored beside the vectors, read only by models that take them,
the ``tfidf`` model and the ``wide`` variants, and scoring raw text with the store's ids."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.helpers import cli, one_error_line, small_store


@pytest.fixture(scope="module")
def built(tmp_path_factory, vectors_file):
    """A store with token ids (96 documents, 6 blocks) and a trained tfidf run."""
    root = tmp_path_factory.mktemp("lexical")
    store = small_store(root, vectors_file[0], docs_per_label=32, val_frac=0.25, test_frac=0.25)
    code, out = cli("train", "--store", store, "--model", "tfidf", "--epochs", "2",
                    "--out", root / "runs" / "tfidf", "-q")
    assert code == 0, out
    return root, store, vectors_file[0]


def _store_ids(store, doc: int) -> np.ndarray:
    first = int(store.read("offsets", doc, doc + 1)[0])
    n = int(store.read("lengths", doc, doc + 1)[0])
    return store.read("token_ids", first, first + n)


@pytest.mark.slow
def test_store_holds_each_kept_words_hash_and_verifies(built):
    import embcache
    from embcache.cache.corpus import CorpusSpec, iter_documents
    from embcache.cache.lexical import WORD_HASH, word_id
    from embcache.cache.tokenize import make_tokenizer

    root, url, _ = built
    store = embcache.open_store(str(url))
    assert store.meta.lexical == {"ids": WORD_HASH}
    assert store.meta.totals.chunks["token_ids"] == store.meta.totals.chunks["tokens"]
    tokenize = make_tokenizer(store.meta.settings.tokenizer)
    texts = {d.doc_id: d.text for d in iter_documents(CorpusSpec(str(root / "corpus")))}
    doc_ids = store.read("doc_ids")
    for doc in (0, 17, 95):
        words = tokenize(texts[str(doc_ids[doc])])[-160:]  # truncating "pre", max_len 160
        assert _store_ids(store, doc).tolist() == [word_id(w) for w in words]
    assert embcache.verify(str(url)).ok


@pytest.mark.slow
def test_a_damaged_token_ids_chunk_is_named_and_repaired(built, tmp_path):
    import embcache

    copy = tmp_path / "s.zarr"
    shutil.copytree(built[1], copy)
    chunk = sorted((copy / "token_ids" / "c").iterdir())[1]
    chunk.write_bytes(b"garbage" * 10)
    report = embcache.verify(str(copy))
    assert not report.ok and [f.array for f in report.faults] == ["token_ids"]
    assert "token_ids/c/1 is damaged" in report.faults[0].line()


@pytest.mark.slow
def test_models_without_ids_never_read_them(built, tmp_path):
    """With every token_ids chunk garbled, a vectors-only pass runs as before (it reads none of
    them: no cost for models without ids); a pass with ids names the damage."""
    import embcache

    copy = tmp_path / "s.zarr"
    shutil.copytree(built[1], copy)
    plain = [f["embedded"].numpy() for f, _ in embcache.dataset(str(copy), "train", batch_size=8)]
    for chunk in (copy / "token_ids" / "c").iterdir():
        chunk.write_bytes(b"garbage" * 10)
    store = embcache.open_store(str(copy))
    again = [f["embedded"].numpy()
             for f, _ in embcache.dataset(store, "train", batch_size=8)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, again)) and len(plain) == len(again)
    with pytest.raises(embcache.ChunkError, match="token_ids"), embcache.pipeline_errors():
        list(embcache.dataset(store, "train", batch_size=8, token_ids=True))


@pytest.mark.slow
def test_lexical_models_alone_never_read_the_vectors(built, tmp_path):
    """A group of lexical models reads the ids alone: with every ``tokens`` chunk garbled,
    ``tfidf`` trains to the same weights as on the intact store."""
    import embcache

    copy = tmp_path / "s.zarr"
    shutil.copytree(built[1], copy)
    for chunk in (copy / "tokens" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage" * 10)
    runs = [embcache.train(str(store), "tfidf", str(tmp_path / name), progress=False,
                           config={"epochs": 2, "seed": 3})
            for name, store in (("intact", built[1]), ("garbled", copy))]
    assert runs[0].metrics == runs[1].metrics
    weights = [embcache.load_run(r.out).model.get_layer("lexical").kernel.numpy() for r in runs]
    np.testing.assert_array_equal(*weights)


def test_lexical_gathers_read_only_the_rows_they_need():
    """``sparse_rows`` reads a variable's rows with ``ResourceGather``: no whole read
    (``ReadVariableOp``), which TensorFlow copies whole once a scatter has updated the variable
    (the lexical kernel and its Adam moments: that copy was most of a training step)."""
    import keras
    import tensorflow as tf

    from embcache.models.optimizers import sparse_rows

    var = keras.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
    fn = tf.function(lambda rows: sparse_rows(var, rows))
    np.testing.assert_array_equal(fn(tf.constant([4, 1])).numpy(), [[8, 9], [2, 3]])
    ops = {op.type for op in fn.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph
           .get_operations()}
    assert "ResourceGather" in ops and "ReadVariableOp" not in ops


@pytest.mark.slow
def test_dataset_ids_are_the_stored_ids_padded_as_the_vectors(built):
    import embcache

    store = embcache.open_store(str(built[1]))
    seen = 0
    for features, _ in embcache.dataset(store, "val", batch_size=4, token_ids=True, shuffle=False):
        ids, lengths = features["token_ids"].numpy(), features["lengths"].numpy()
        emb = features["embedded"].numpy()
        assert ids.shape == emb.shape[:2]
        for row, n in zip(ids, lengths):
            assert not row[:len(row) - n].any()  # "pre" padding: zeros first
            seen += 1
    assert seen == store.split_counts["val"]


@pytest.mark.slow
def test_graph_tfidf_equals_numpy_tfidf(built):
    """HashedTfidf's logits equal sublinear TF-IDF over the same hashed features, computed in
    NumPy from the counting pass (the kernel set to random values)."""
    import keras

    import embcache
    from embcache.cache.lexical import count_split, doc_features
    from embcache.cache.stream import plan_split
    from embcache.models.layers import HashedTfidf

    store = embcache.open_store(str(built[1]))
    df = count_split(store, plan_split(store, "train"), "train")
    vocab, idf = df.vocabulary(4096, min_df=2)
    assert 0 < len(vocab) < 4096 and (df.counts[vocab] >= 2).all()
    layer = HashedTfidf(3, max_features=4096, padding="pre", scale=1.0)
    layer.build((None, None))
    layer.adapt(vocab, idf)
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4096, 3)).astype(np.float32)
    layer.kernel.assign(kernel)
    docs = [_store_ids(store, d) for d in (0, 1, 2, 40)]
    width = max(map(len, docs))
    x = np.zeros((len(docs), width), np.int32)
    for i, d in enumerate(docs):
        x[i, width - len(d):] = d
    got = keras.ops.convert_to_numpy(layer(x, np.array([len(d) for d in docs], np.int32)))
    for i, d in enumerate(docs):
        _, buckets = doc_features(d, np.array([len(d)]))
        feats, counts = np.unique(buckets, return_counts=True)
        row = np.searchsorted(vocab, feats)
        hit = (row < len(vocab)) & (vocab[np.minimum(row, len(vocab) - 1)] == feats)
        w = (1 + np.log(counts[hit])) * idf[row[hit]]
        w = w / np.linalg.norm(w)
        np.testing.assert_allclose(got[i], w @ kernel[row[hit]], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tfidf_run_scores_raw_text_as_its_store(built, tmp_path):
    """Raw text gets the same ids as the store: the Scorer's probabilities for the corpus's
    texts equal those for the store's documents."""
    import embcache
    from embcache.cache.corpus import CorpusSpec, iter_documents
    from embcache.cache.embed import BlockEmbedder, oov_vector
    from embcache.cache.vectors import load_vectors

    root, url, vectors = built
    store = embcache.open_store(str(url))
    texts = {d.doc_id: d.text for d in iter_documents(CorpusSpec(str(root / "corpus")))}
    ids = [str(i) for i in store.read("doc_ids")]
    table = load_vectors(str(vectors))
    emb = BlockEmbedder(table, store.meta.settings, oov_vector(table, store.meta.settings))
    result = emb.embed([texts[i] for i in ids[:16]])
    starts = result.starts()
    for d in range(16):
        assert result.ids[starts[d]:starts[d] + result.lengths[d]].tolist() == \
            _store_ids(store, d).tolist()
    scorer = embcache.Scorer([root / "runs" / "tfidf"], vectors=str(vectors))
    from_store = scorer.classify(str(url)).set_index("doc_id")
    from_text = scorer.classify([texts[i] for i in ids])
    np.testing.assert_allclose(from_text["tfidf_prob"].to_numpy(),
                               from_store.loc[ids, "tfidf_prob"].to_numpy(), rtol=1e-5)
    assert (from_text["tfidf_label"].to_numpy() == from_store.loc[ids, "tfidf_label"]).all()


@pytest.mark.slow
def test_wide_kim_cnn_trains_with_a_plain_model_and_says_so(built, tmp_path):
    root, url, _ = built
    code, out = cli("train", "--store", url, "--model", "kim_cnn", "--grid", "wide=[false,true]",
                    "--epochs", "1", "--out", tmp_path / "runs", "-q")
    assert code == 0, out
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    cards = {n: json.loads((tmp_path / "runs" / n / "model.json").read_text()) for n in runs}
    wide = [n for n in runs if "wide=true" in n.lower()]
    assert len(wide) == 1 and cards[wide[0]]["hyperparameters"]["wide"] is True
    code, out = cli("score", "--models", ",".join(str(tmp_path / "runs" / n) for n in runs),
                    "--input", url, "--split", "test", "--out", tmp_path / "p.csv", "-q")
    assert code == 0, out


@pytest.mark.slow
def test_a_store_without_ids_is_refused_by_id_models_only(built, tmp_path):
    """A store written before the lexical channel: id models refuse it in one line saying how
    to rebuild; the others train from it as before."""
    copy = tmp_path / "old.zarr"
    shutil.copytree(built[1], copy)
    shutil.rmtree(copy / "token_ids")
    meta = json.loads((copy / "zarr.json").read_text())
    del meta["attributes"]["lexical"]
    del meta["attributes"]["chunks"]["token_ids"]
    (copy / "zarr.json").write_text(json.dumps(meta))
    code, out = cli("train", "--store", copy, "--model", "tfidf", "--epochs", "1",
                    "--out", tmp_path / "r1")
    assert code != 0
    line = one_error_line(out)
    assert "has no token ids" in line and "--overwrite" in line
    assert not (tmp_path / "r1").exists()
    code, out = cli("train", "--store", copy, "--model", "fasttext", "--epochs", "1",
                    "--out", tmp_path / "r2", "-q")
    assert code == 0, out


def test_row_sparse_adam_updates_only_touched_rows():
    import keras
    import tensorflow as tf

    from embcache.models.optimizers import Adam

    var = keras.Variable(np.ones((5, 2), np.float32))
    dense = keras.Variable(np.ones((5, 2), np.float32))
    opt, ref = Adam(0.1), keras.optimizers.Adam(0.1)
    grad = tf.IndexedSlices(tf.constant([[1.0, -2.0], [3.0, 4.0]]), tf.constant([1, 3]),
                            dense_shape=tf.constant([5, 2]))
    opt.apply_gradients([(grad, var)])
    ref.apply_gradients([(tf.convert_to_tensor(grad), dense)])
    v, d = var.numpy(), dense.numpy()
    np.testing.assert_allclose(v[[0, 2, 4]], 1.0)
    np.testing.assert_allclose(v[[1, 3]], d[[1, 3]], rtol=1e-6)  # first step: Adam's own


@pytest.mark.slow
def test_nb_is_multinomial_naive_bayes_counted_before_one_epoch(built, tmp_path):
    """``nb`` is scikit-learn's MultinomialNB on the lexical features (the NumPy twin of the
    graph's TF-IDF): the same log probabilities and priors, and its scores are MNB's on the test
    split. It has nothing to learn by gradient: one epoch, whatever ``--epochs`` says."""
    import keras
    from scipy.sparse import csr_matrix
    from sklearn.naive_bayes import MultinomialNB

    import embcache
    from embcache.cache.lexical import _split_blocks, count_split, tfidf_weights
    from embcache.cache.meta import SPLIT_NAMES
    from embcache.cache.stream import plan_split

    root, url, _ = built
    run = tmp_path / "nb"
    code, out = cli("train", "--store", url, "--model", "nb", "--epochs", "4", "--param",
                    "alpha=0.1", "--out", run, "-q")
    assert code == 0, out
    assert len((run / "history.csv").read_text().splitlines()) == 2  # a header and one epoch
    store = embcache.open_store(str(url))
    vocab, idf = count_split(store, plan_split(store, "train"), "train").vocabulary(1 << 19)

    def features(split):
        rows, labels = [], []
        for ids, lengths, y in _split_blocks(store, plan_split(store, split), split, labels=True):
            doc, row, w = tfidf_weights(ids, lengths, vocab, idf)
            rows.append(csr_matrix((w, (doc, row)), shape=(len(lengths), len(vocab))))
            labels.append(y)
        from scipy.sparse import vstack
        return vstack(rows), np.concatenate(labels)

    x, y = features("train")
    mnb = MultinomialNB(alpha=0.1).fit(x, y)
    model = keras.saving.load_model(run / "model.keras")
    layer = model.get_layer("lexical")
    assert not model.trainable_weights
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    np.testing.assert_allclose(kernel[:len(vocab)], mnb.feature_log_prob_.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.bias), mnb.class_log_prior_,
                               rtol=1e-6)
    xt, _ = features("test")
    scored = embcache.Scorer([run]).classify(str(url), split="test")
    test_ids = store.read("doc_ids")[store.read("split") == SPLIT_NAMES.index("test")]
    assert scored["doc_id"].astype(str).tolist() == [str(i) for i in test_ids]
    np.testing.assert_allclose(scored["nb_prob"].to_numpy(), mnb.predict_proba(xt).max(axis=1),
                               rtol=1e-4)
    names = np.array(store.label_names)
    assert (scored["nb_label"].to_numpy() == names[mnb.predict(xt)]).all()


@pytest.mark.slow
def test_nb_leaves_a_group_after_one_epoch_the_others_train_on(built, tmp_path):
    root, url, _ = built
    code, out = cli("train", "--store", url, "--model", "nb,fasttext", "--epochs", "2",
                    "--out", tmp_path / "g", "-q")
    assert code == 0, out
    epochs = {m: len((tmp_path / "g" / m / "history.csv").read_text().splitlines()) - 1
              for m in ("nb", "fasttext")}
    assert epochs == {"nb": 1, "fasttext": 2}
