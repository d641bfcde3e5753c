"""Static subword tables (model2vec, sentence-transformers StaticEmbedding, a table file with its
tokenizer.json) as a store's vectors, built tiny in tmp folders; WordLlama itself is checked in
test_realdata.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import ModelError, VectorsError
from embcache.cache.settings import EmbedSettings
from embcache.cache.store import open_store
from embcache.jobs.embed_corpus import embed_corpus
from tests.helpers import PIECES, WORDS, wordpiece

EMBCACHE = str(Path(sys.executable).with_name("embcache"))
TEXTS = ["Héllo wörld, café!", "", "The Cat SAT on the mat.", "supercali " * 60,
         "zzz qqq unknown", "ÀÉÎ õü çñ dog", "a good day, a bad night!"]


def write_corpus(path: Path, texts=TEXTS, labels=("a", "b")) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "label": labels[i % len(labels)]}) + "\n")
    return path


def stored_docs(store_path) -> list[np.ndarray]:
    """Every document's kept token vectors as float32, in store order."""
    from embcache.cache.rows import decode_rows
    from embcache.cache.stream import read_rows

    store = open_store(str(store_path))
    offsets, lengths = store.array("offsets")[:], store.array("lengths")[:]
    return [decode_rows(read_rows(store, int(o), int(o + n)), store.dim, store.dtype)
            for o, n in zip(offsets, lengths)]


def save_model2vec(folder: Path, table_dtype: str, vocab_quantized: bool, seed: int = 0) -> Path:
    from model2vec import StaticModel

    rng = np.random.default_rng(seed)
    tok = wordpiece()
    n = len(PIECES)
    if vocab_quantized:  # model2vec's vocabulary quantisation: fewer rows, a mapping and weights
        rows, mapping = 7, rng.integers(0, 7, size=n).astype(np.int64)
        weights = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    else:
        rows, mapping, weights = n, None, None
    vectors = rng.normal(size=(rows, 6)).astype(np.float32)
    if table_dtype == "int8":  # as model2vec's quantize_embeddings: scaled, no scale kept
        vectors = np.round(vectors / np.abs(vectors).max() * 127).astype(np.int8)
    else:
        vectors = vectors.astype(table_dtype)
    StaticModel(vectors, tok, weights=weights, token_mapping=mapping).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("table_dtype, vocab_quantized", [("float32", False), ("float16", True),
                                                          ("int8", False), ("int8", True)])
def test_model2vec_vectors_equal_encode_as_sequence(tmp_path, table_dtype, vocab_quantized):
    from model2vec import StaticModel

    folder = save_model2vec(tmp_path / "m2v", table_dtype, vocab_quantized)
    out = tmp_path / "m.zarr"
    summary = embed_corpus(CorpusSpec(str(write_corpus(tmp_path / "c.jsonl")), label_column="label"),
                           str(folder), str(out), progress=False, workers=1,
                           settings=EmbedSettings(max_len=50))
    own = StaticModel.from_pretrained(str(folder)).encode_as_sequence(TEXTS)
    got = stored_docs(out)
    for text, want, have in zip(TEXTS, own, got):
        want = np.asarray(want, np.float32)[-50:]  # truncating "pre": the end is kept
        assert have.shape == want.shape, text
        np.testing.assert_allclose(have, want.astype(np.float16).astype(np.float32), rtol=1e-3,
                                   atol=1e-3)
    assert got[1].shape == (0, 6)  # empty text, and "zzz qqq unknown": unknown tokens dropped
    assert got[4].shape == (0, 6)
    meta = open_store(str(out)).meta
    assert meta.subword["layout"] == "model2vec" and meta.subword["dropped_id"] == 1
    assert meta.subword["fingerprint"] == meta.vectors.fingerprint
    assert summary.oov_tokens > 0  # unknown tokens counted
    assert meta.settings.tokenizer.name == "huggingface-tokenizers"


def save_static_embedding(folder: Path, nested: bool, seed: int = 0) -> np.ndarray:
    from safetensors.numpy import save_file

    table = np.random.default_rng(seed).normal(size=(len(PIECES), 5)).astype(np.float32)
    where = folder / "0_StaticEmbedding" if nested else folder
    where.mkdir(parents=True)
    save_file({"embedding.weight": table}, str(where / "model.safetensors"))
    wordpiece().save(str(where / "tokenizer.json"))
    (folder / "modules.json").write_text("[]")
    return table


@pytest.mark.parametrize("nested", [False, True])
def test_static_embedding_folder_rows_are_the_tokens_rows(tmp_path, nested):
    table = save_static_embedding(tmp_path / "st", nested)
    out = tmp_path / "s.zarr"
    embed_corpus(CorpusSpec(str(write_corpus(tmp_path / "c.jsonl")), label_column="label"),
                 str(tmp_path / "st"), str(out), progress=False, workers=1,
                 settings=EmbedSettings(max_len=20, truncating="post", dtype="float32"))
    tok = wordpiece()
    for text, have in zip(TEXTS, stored_docs(out)):
        ids = tok.encode(text, add_special_tokens=False).ids[:20]  # [UNK] kept: it has a row
        np.testing.assert_array_equal(have, table[ids])
    assert open_store(str(out)).meta.subword["layout"] == "static-embedding"


def save_table(tmp_path: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    from safetensors.numpy import save_file

    table = tmp_path / f"table{seed}.safetensors"
    save_file({"embedding.weight": np.random.default_rng(seed).normal(size=(rows, 4))
               .astype(np.float16)}, str(table))
    tok = tmp_path / "tokenizer.json"
    if not tok.exists():
        wordpiece().save(str(tok))
    return table, tok


def run(*args, **kw):
    return subprocess.run([EMBCACHE, *map(str, args)], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_bad_tables_and_options_are_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    table, tok = save_table(tmp_path, len(PIECES))
    small, _ = save_table(tmp_path, 5, seed=1)
    out = tmp_path / "x.zarr"
    cases = [
        ((table,), f"{table} is a table without its tokenizer: pass --tokenizer"),
        ((table, "--tokenizer", tmp_path / "nope.json"), "Tokenizer file not found"),
        ((small, "--tokenizer", tok), f"has {len(PIECES)} token ids but the table"),
        ((table, "--tokenizer", tok, "--oov", "mean"), "--oov mean applies to word vectors"),
        ((tmp_path, ), "is not a static subword model"),
        ((corpus, "--tokenizer", tok), "is not a readable safetensors file"),
    ]
    for args, message in cases:
        r = run("embed-corpus", "--corpus", corpus, "--out", out, "-q", "--vectors", *args)
        assert r.returncode == 1, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
        assert not out.exists()


@pytest.mark.slow
def test_table_with_tokenizer_round_trip_cli_and_scorer(tmp_path):
    import pandas as pd

    import embcache

    texts = [" ".join(np.random.default_rng(i).choice(WORDS, size=12)) for i in range(60)]
    corpus = write_corpus(tmp_path / "c.jsonl", texts)
    table, tok = save_table(tmp_path, len(PIECES))
    store = tmp_path / "s.zarr"
    r = run("embed-corpus", "--corpus", corpus, "--label-column", "label", "--vectors", table,
            "--tokenizer", tok, "--dtype", "int8", "--out", store, "-q")
    assert r.returncode == 0, r.stderr
    info = run("info", store).stdout
    assert "static subword table (table)" in info and "tokenizer.json sha256=" in info
    # The lexical channel holds the tokenizer's ids of each document's kept tokens.
    from tokenizers import Tokenizer

    opened = embcache.open_store(str(store))
    first = int(opened.read("offsets", 0, 1)[0])
    n = int(opened.read("lengths", 0, 1)[0])
    want = Tokenizer.from_file(str(tok)).encode(texts[0], add_special_tokens=False).ids
    assert opened.meta.lexical == {"ids": "tokenizer ids"}
    assert opened.read("token_ids", first, first + n).tolist() == want
    r = run("train", "--store", store, "--model", "fasttext,kim_cnn", "--epochs", "2",
            "--batch-size", "8", "-q", "--out", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    runs = [str(tmp_path / "runs" / m) for m in ("fasttext", "kim_cnn")]
    raw = tmp_path / "new.txt"
    raw.write_text("\n".join(texts[:5]) + "\n")
    r = run("score", "--models", ",".join(runs), "--input", raw, "--vectors", table,
            "--tokenizer", tok, "--out", tmp_path / "p.csv", "-q")
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "p.csv")
    scorer = embcache.Scorer(runs, vectors=str(table), tokenizer=str(tok))
    again = scorer.classify(texts[:5])
    assert again["kim_cnn_label"].tolist() == pred["kim_cnn_label"].tolist()
    np.testing.assert_allclose(again["kim_cnn_prob"], pred["kim_cnn_prob"], rtol=1e-4)
    # Texts embedded in memory equal the store's own documents, scored from the store.
    from_store = scorer.classify(str(store))
    first = [int(i) for i in from_store["doc_id"]][:5] == [1, 2, 3, 4, 5]
    assert first
    np.testing.assert_allclose(again["fasttext_prob"], from_store["fasttext_prob"][:5], rtol=1e-5)
    # Another table, or the same table with another tokenizer, is refused.
    other, _ = save_table(tmp_path, len(PIECES), seed=2)
    with pytest.raises(ModelError, match="are not the ones the models were trained with"):
        embcache.Scorer(runs, vectors=str(other), tokenizer=str(tok)).classify(["the cat"])
    tok2 = tmp_path / "other-tokenizer.json"
    wordpiece([*PIECES, "extra"]).save(str(tok2))
    with pytest.raises((ModelError, VectorsError)):
        embcache.Scorer(runs, vectors=str(table), tokenizer=str(tok2)).classify(["the cat"])
    r = run("score", "--models", ",".join(runs), "--input", raw, "--out", tmp_path / "q.csv", "-q")
    assert r.returncode == 1 and "needs --vectors" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_workers_dask_and_a_killed_run_resumed_write_the_single_process_store(tmp_path, dtype):
    from tests.helpers import assert_same_store, kill_after_chunks, make_folder_corpus

    corpus = tmp_path / "corpus"
    make_folder_corpus(corpus, docs_per_label=150, labels=("a", "b"))
    table, tok = save_table(tmp_path, len(PIECES))
    common = dict(tokenizer=str(tok), chunk_docs=10, progress=False,
                  settings=EmbedSettings(max_len=24, dtype=dtype))
    single = tmp_path / "single.zarr"
    embed_corpus(CorpusSpec(str(corpus)), str(table), str(single), workers=1, **common)
    pool = tmp_path / "pool.zarr"
    embed_corpus(CorpusSpec(str(corpus)), str(table), str(pool), workers=2, **common)
    assert_same_store(single, pool)
    if dtype == "float16":  # a killed run, resumed
        killed = tmp_path / "killed.zarr"
        cmd = [EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--vectors", str(table),
               "--tokenizer", str(tok), "--chunk-docs", "10", "--max-len", "24", "--workers", "1",
               "--out", str(killed), "-q"]
        kill_after_chunks(cmd, killed, chunks=5, timeout=120)
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0 and "resumed" in done.stdout, done.stderr
        assert_same_store(single, killed)
    else:
        pytest.importorskip("dask.distributed")  # the dask extra (installed by the Makefile)
        dask = tmp_path / "dask.zarr"
        embed_corpus(CorpusSpec(str(corpus)), str(table), str(dask), scheduler="local:2", **common)
        assert_same_store(single, dask)
