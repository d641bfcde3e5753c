"""Ensembles across representations: runs trained on different stores of the same documents
score together (store input joined by doc id, raw text embedded once per representation), and
``--ensemble fit`` learns a pool on the validation split, saved as a card that later scoring
reuses and ``embcache runs`` lists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import cli, small_store


@pytest.fixture(scope="module")
def two(tmp_path_factory, vectors_file):
    """One corpus in two representations (max_len 160 and 40, the same split), a fasttext
    run on the first and a tfidf run on the second."""
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.settings import EmbedSettings
    from embcache.jobs.embed_corpus import SplitSettings, embed_corpus

    root = tmp_path_factory.mktemp("ensemble")
    a = small_store(root, vectors_file[0], docs_per_label=30, val_frac=0.3, test_frac=0.3)
    b = root / "short.zarr"
    embed_corpus(CorpusSpec(str(root / "corpus")), str(vectors_file[0]), str(b), workers=1,
                 chunk_docs=16, progress=False, settings=EmbedSettings(max_len=40),
                 split=SplitSettings(val_frac=0.3, test_frac=0.3))
    for store, model, out in ((a, "fasttext", "fast160"), (b, "tfidf", "tfidf40")):
        code, text = cli("train", "--store", store, "--model", model, "--epochs", "2",
                         "--out", root / "runs" / out, "-q")
        assert code == 0, text
    return root, a, b, vectors_file[0]


@pytest.mark.slow
def test_a_store_input_joins_the_other_representations_store(two):
    import embcache

    root, a, b, _ = two
    runs = [root / "runs" / "fast160", root / "runs" / "tfidf40"]
    both = embcache.Scorer(runs).classify(str(a), split="test").set_index("doc_id")
    alone_a = embcache.Scorer(runs[:1]).classify(str(a), split="test").set_index("doc_id")
    alone_b = embcache.Scorer(runs[1:]).classify(str(b), split="test").set_index("doc_id")
    assert list(both.index) == list(alone_a.index) == list(alone_b.index)
    np.testing.assert_allclose(both["fast160_prob"], alone_a["fast160_prob"], rtol=1e-5)
    np.testing.assert_allclose(both["tfidf40_prob"], alone_b["tfidf40_prob"], rtol=1e-5)
    assert "ensemble_label" in both and (both["true_label"] == alone_a["true_label"]).all()
    # The other store named explicitly gives the same; a store of other documents is refused.
    named = embcache.Scorer(runs, stores=[str(b)]).classify(str(a), split="test")
    np.testing.assert_allclose(named["ensemble_prob"], both["ensemble_prob"], rtol=1e-6)


@pytest.mark.slow
def test_raw_text_is_embedded_once_per_representation(two):
    import embcache
    from embcache.cache.corpus import CorpusSpec, iter_documents

    root, a, _b, vectors = two
    runs = [root / "runs" / "fast160", root / "runs" / "tfidf40"]
    scorer = embcache.Scorer(runs, vectors=str(vectors))
    store_rows = scorer.classify(str(a)).set_index("doc_id")
    docs = {d.doc_id: d.text for d in iter_documents(CorpusSpec(str(root / "corpus")))}
    ids = list(store_rows.index)
    text_rows = scorer.classify([docs[i] for i in ids])
    for col in ("fast160_prob", "tfidf40_prob", "ensemble_prob"):
        np.testing.assert_allclose(text_rows[col].to_numpy(), store_rows[col].to_numpy(),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fit_saves_a_card_that_scoring_and_runs_reuse(two, tmp_path):
    root, a, _b, _ = two
    models = f"{root}/runs/fast160,{root}/runs/tfidf40"
    code, text = cli("score", "--models", models, "--input", a, "--split", "test",
                     "--ensemble", "fit", "--ensemble-out", tmp_path / "ens",
                     "--out", tmp_path / "p1.csv", "-q")
    assert code == 0, text
    card = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert [m["name"] for m in card["members"]] == ["fast160", "tfidf40"]
    assert card["chosen"] in ("fit", "geometric", "mean", "single")
    assert set(card["fit"]["cross_fit"]) == {"fit", "geometric", "mean", "single"}
    assert len(card["temperatures"]) == 2 and abs(sum(card["weights"]) - 1) < 1e-5
    code, text = cli("score", "--models", tmp_path / "ens", "--input", a, "--split", "test",
                     "--out", tmp_path / "p2.csv", "-q")
    assert code == 0, text
    p1, p2 = (np.genfromtxt(tmp_path / f, delimiter=",", names=True, dtype=None,
                            encoding="utf-8") for f in ("p1.csv", "p2.csv"))
    np.testing.assert_allclose(p1["ensemble_prob"], p2["ensemble_prob"], rtol=1e-6)
    code, text = cli("runs", tmp_path, "--plot", "none")
    assert code == 0 and "ensemble (" in text, text


def test_the_fit_prefers_the_informative_member():
    from embcache.jobs.ensemble import fit_ensemble

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    good = np.full((600, 3), 0.1)
    good[np.arange(600), np.where(rng.random(600) < 0.8, y, (y + 1) % 3)] = 0.8
    noise = rng.dirichlet(np.ones(3), 600)
    fit = fit_ensemble(["good", "noise"], {"good": good, "noise": noise}, y)
    assert fit.coefficients[0] > fit.coefficients[1]
    assert fit.report["val_accuracy"] >= fit.report["member_val_accuracy"]["good"] - 0.01
