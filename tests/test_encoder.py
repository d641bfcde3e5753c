"""Frozen transformer encoders (keras-hub) as a store's vectors, with a tiny random backbone
saved as a preset (no download); the real MiniLM check is in test_realdata.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import ModelError
from embcache.cache.store import open_store, store_state
from embcache.jobs.embed_corpus import embed_corpus
from tests.helpers import WORDS, assert_same_store, kill_after_chunks, make_folder_corpus

EMBCACHE = str(Path(sys.executable).with_name("embcache"))
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "caf", "##e", "##s", "super",
         "##cal", "##i", "hello", "world", ",", "!", "."]


def save_tiny_encoder(folder: Path, seed: int) -> Path:
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(VOCAB), num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16,
                                             max_sequence_length=64)
    backbone.save_to_preset(str(folder))
    keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return save_tiny_encoder(root / "tiny", 0), save_tiny_encoder(root / "other", 1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("enccorpus") / "corpus"
    make_folder_corpus(root, docs_per_label=30, labels=("a", "b"))
    return root


TEXTS = ["Héllo wörld, café!", "", "supercalifragilistic " * 40, "The cat sat on the mat.",
         "ÀÉÎ õü çñ", "dog"]


@pytest.mark.slow
def test_token_ids_equal_keras_hubs_own_tokenizer(encoders):
    import keras_hub

    from embcache.cache.encoder import Encoder, resolve

    enc = Encoder(resolve(str(encoders[0]), max_len=32))
    own = keras_hub.models.Tokenizer.from_preset(str(encoders[0]))
    ids, total, unknown = enc.token_ids(TEXTS)
    for text, got in zip(TEXTS, ids):
        want = [own.cls_token_id, *np.asarray(own(text)).tolist(), own.sep_token_id]
        if len(want) > 32:  # truncated at the end, the start and end tokens kept
            want = want[:31] + [own.sep_token_id]
        assert got.tolist() == want, text
    assert ids[1].tolist() == [own.cls_token_id, own.sep_token_id]  # empty text
    assert total == sum(len(np.asarray(own(t))) + 2 for t in TEXTS)
    assert unknown == sum(int((np.asarray(own(t)) == own.token_to_id("[UNK]")).sum())
                          for t in TEXTS) > 0


@pytest.mark.slow
def test_vectors_equal_the_backbone_alone_whatever_the_batch(encoders, corpus, tmp_path):
    import keras_hub

    out = tmp_path / "e.zarr"
    embed_corpus(CorpusSpec(str(corpus)), None, str(out), encoder=str(encoders[0]),
                 encoder_batch=5, progress=False, chunk_docs=16, precision="float32")
    store = open_store(str(out))
    assert store.dim == 8 and store.meta.encoder["architecture"] == "BertBackbone"
    assert store.meta.vectors.fingerprint == store.meta.encoder["fingerprint"]
    for key in ("weights_sha256", "vocab_sha256", "config", "tokenizer", "max_len",
                "special_tokens"):
        assert store.meta.encoder[key]
    backbone = keras_hub.models.Backbone.from_preset(str(encoders[0]))
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(encoders[0]))
    texts = {d.doc_id: d.text for d in
             __import__("embcache.cache.corpus", fromlist=["x"]).iter_documents(CorpusSpec(str(corpus)))}
    doc_ids = [str(x) for x in store.array("doc_ids")[:]]
    offsets, lengths = store.array("offsets")[:], store.array("lengths")[:]
    tokens = store.array("tokens")
    for i in range(0, len(doc_ids), 7):
        ids = [tokenizer.cls_token_id, *np.asarray(tokenizer(texts[doc_ids[i]])).tolist(),
               tokenizer.sep_token_id][:256]
        alone = backbone({"token_ids": np.array([ids]), "segment_ids": np.zeros((1, len(ids)), int),
                          "padding_mask": np.ones((1, len(ids)), int)})["sequence_output"]
        got = tokens[int(offsets[i]):int(offsets[i]) + int(lengths[i])]
        assert got.shape == (len(ids), 8)
        # The lexical channel: the tokenizer's own ids, start and end tokens included.
        stored = store.read("token_ids", int(offsets[i]), int(offsets[i]) + int(lengths[i]))
        assert stored.tolist() == ids
        np.testing.assert_allclose(got.astype(np.float32), np.asarray(alone)[0], rtol=2e-3,
                                   atol=2e-3)


@pytest.mark.slow
def test_embed_train_score_round_trip_and_another_encoder_is_refused(encoders, corpus, tmp_path):
    store = tmp_path / "e.zarr"
    r = subprocess.run([EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--encoder",
                        str(encoders[0]), "--out", str(store), "--max-len", "40", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr == ""  # no TensorFlow start-up lines
    info = subprocess.run([EMBCACHE, "info", str(store)], capture_output=True, text=True).stdout
    assert "encoder      " in info and "BertBackbone" in info and "[CLS] and [SEP] kept" in info
    r = subprocess.run([EMBCACHE, "train", "--store", str(store), "--model", "fasttext,kim_cnn",
                        "--epochs", "2", "--batch-size", "8", "-q", "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    raw = tmp_path / "new.txt"
    raw.write_text("the cat sat on the mat\nthe dog ran far away home\n")
    runs = f"{tmp_path / 'runs' / 'fasttext'},{tmp_path / 'runs' / 'kim_cnn'}"
    r = subprocess.run([EMBCACHE, "score", "--models", runs, "--input", str(raw), "--encoder",
                        str(encoders[0]), "--out", str(tmp_path / "p.csv"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd

    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == 2 and set(pred["fasttext_label"]) <= {"a", "b"}
    # The same through the Python API, texts embedded in memory: the same labels.
    import embcache

    scorer = embcache.Scorer(runs.split(","), encoder=str(encoders[0]))
    again = scorer.classify(["the cat sat on the mat", "the dog ran far away home"])
    assert again["fasttext_label"].tolist() == pred["fasttext_label"].tolist()
    np.testing.assert_allclose(again["fasttext_prob"], pred["fasttext_prob"], rtol=1e-4)
    # Another encoder (same architecture and vocabulary, other weights) is refused by name.
    r = subprocess.run([EMBCACHE, "score", "--models", runs, "--input", str(raw), "--encoder",
                        str(encoders[1]), "--out", str(tmp_path / "q.csv"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().startswith(f"Error: Encoder {encoders[1]} (fingerprint ")
    assert "is not the one the models were trained on" in r.stderr
    assert not (tmp_path / "q.csv").exists()
    with pytest.raises(ModelError, match="is not the one the models were trained on"):
        embcache.Scorer(runs.split(","), encoder=str(encoders[1])).classify(["the cat"])
    r = subprocess.run([EMBCACHE, "score", "--models", runs, "--input", str(raw), "--out",
                        str(tmp_path / "q.csv"), "-q"], capture_output=True, text=True)
    assert r.returncode == 1 and "needs --encoder" in r.stderr


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_store(encoders, tmp_path):
    corpus = tmp_path / "corpus"
    make_folder_corpus(corpus, docs_per_label=200, labels=("a", "b"))
    cmd = [EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--encoder", str(encoders[0]),
           "--chunk-docs", "4", "--max-len", "32", "-q"]
    reference = tmp_path / "ref.zarr"
    subprocess.run(cmd + ["--out", str(reference)], check=True, capture_output=True)
    out = tmp_path / "killed.zarr"
    kill_after_chunks(cmd + ["--out", str(out)], out, chunks=10, timeout=120)
    assert store_state(str(out)) == "incomplete"
    done = subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True, text=True)
    assert "resumed" in done.stdout
    assert_same_store(reference, out)


@pytest.mark.slow
def test_missing_extra_is_one_error_line(tmp_path, corpus):
    fake = tmp_path / "fake"
    (fake / "keras_hub").mkdir(parents=True)
    (fake / "keras_hub" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'keras_hub'\", name='keras_hub')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--encoder",
                        str(tmp_path), "--out", str(tmp_path / "x.zarr"), "-q"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "Error: --encoder needs keras-hub and safetensors (keras_hub is not installed): pip "
        f"install -e '{Path(__file__).resolve().parents[1]}[encoders]'"]
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_bad_encoder_paths_are_one_line(tmp_path, corpus):
    (tmp_path / "empty").mkdir()
    for spec, message in [(str(tmp_path / "nope" / "x"), "Encoder not found"),
                          (str(tmp_path / "empty"), "is neither a keras-hub preset folder")]:
        r = subprocess.run([EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--encoder", spec,
                            "--out", str(tmp_path / "x.zarr"), "-q"], capture_output=True,
                           text=True)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert message in r.stderr


@pytest.mark.slow
def test_dask_workers_write_the_single_process_store(encoders, corpus, tmp_path):
    pytest.importorskip("dask.distributed")  # the dask extra (installed by the Makefile)
    single, dask = tmp_path / "single.zarr", tmp_path / "dask.zarr"
    common = dict(encoder=str(encoders[0]), chunk_docs=16, progress=False)
    embed_corpus(CorpusSpec(str(corpus)), None, str(single), **common)
    embed_corpus(CorpusSpec(str(corpus)), None, str(dask), scheduler="local:2", **common)
    assert_same_store(single, dask)


def save_tiny_hf_bert(folder: Path, vocab=VOCAB, table_rows: int | None = None, seed=0) -> Path:
    """A Hugging Face format BERT folder as sentence-transformers ships them (config.json,
    model.safetensors without a `bert.` prefix, tokenizer.json, no vocab.txt), random weights;
    its tokenizer.json lower-cases and strips accents as BERT's own does."""
    from safetensors.numpy import save_file

    from tests.helpers import wordpiece

    rng = np.random.default_rng(seed)
    h, inter, rows = 8, 16, table_rows or len(vocab)
    t = {"embeddings.word_embeddings.weight": (rows, h), "embeddings.position_embeddings.weight":
         (64, h), "embeddings.token_type_embeddings.weight": (2, h),
         "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
         "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)}
    p = "encoder.layer.0."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense"):
        t[p + name + ".weight"], t[p + name + ".bias"] = (h, h), (h,)
    t.update({p + "attention.output.LayerNorm.weight": (h,), p + "attention.output.LayerNorm.bias":
              (h,), p + "intermediate.dense.weight": (inter, h), p + "intermediate.dense.bias":
              (inter,), p + "output.dense.weight": (h, inter), p + "output.dense.bias": (h,),
              p + "output.LayerNorm.weight": (h,), p + "output.LayerNorm.bias": (h,)})
    folder.mkdir(parents=True)
    save_file({k: (rng.normal(size=s) * 0.2).astype(np.float32) for k, s in t.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": rows, "hidden_size": h,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": inter,
        "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    tok = wordpiece(vocab)
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab.index("[CLS]")),
                                                 ("[SEP]", vocab.index("[SEP]"))])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_the_folders_own_tokenizer_json_decides_the_ids(encoders, tmp_path):
    from embcache.cache.encoder import Encoder, resolve
    from tests.helpers import wordpiece

    folder = save_tiny_hf_bert(tmp_path / "hf")
    enc = Encoder(resolve(str(folder), max_len=32, cache_dir=tmp_path / "cache"))
    hf = wordpiece(VOCAB)
    ids, total, unknown = enc.token_ids(TEXTS)
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    for text, got in zip(TEXTS, ids):
        want = [cls, *hf.encode(text, add_special_tokens=False).ids, sep]
        if len(want) > 32:
            want = want[:31] + [sep]
        assert got.tolist() == want, text
    # `café` keeps its accent in keras-hub's tokenizer ([UNK]); the model's own strips it.
    assert VOCAB.index("caf") in ids[0].tolist() and VOCAB.index("[UNK]") not in ids[0].tolist()
    assert enc.identity()["tokenizer"]["class"] == "tokenizers.Tokenizer"
    # truncating "pre" keeps the end of a long document (start and end tokens stay).
    pre = Encoder(resolve(str(folder), max_len=32, truncating="pre", cache_dir=tmp_path / "cache"))
    long_ids = pre.token_ids([TEXTS[2]])[0][0].tolist()
    body = hf.encode(TEXTS[2], add_special_tokens=False).ids
    assert long_ids == [cls, *body[-30:], sep]
    assert pre.identity()["fingerprint"] != enc.identity()["fingerprint"]


@pytest.mark.slow
def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path, corpus):
    folder = save_tiny_hf_bert(tmp_path / "big", [*VOCAB, *(f"w{i}" for i in range(9))],
                               table_rows=len(VOCAB))
    r = subprocess.run([EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--encoder", str(folder),
                        "--out", str(tmp_path / "x.zarr"), "-q"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"Error: Encoder {folder}: its tokenizer has {len(VOCAB) + 9} tokens but its weights' "
        f"embedding table has {len(VOCAB)} rows: the tokenizer belongs to another model"]


@pytest.mark.slow
def test_oov_is_refused_and_truncating_recorded_truthfully(encoders, corpus, tmp_path):
    r = subprocess.run([EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--encoder",
                        str(encoders[0]), "--oov", "mean", "--out", str(tmp_path / "x.zarr"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "--oov mean applies to word vectors" in r.stderr
    out = tmp_path / "pre.zarr"
    embed_corpus(CorpusSpec(str(corpus)), None, str(out), encoder=str(encoders[0]),
                 progress=False, settings=__import__("embcache.cache.settings", fromlist=["x"])
                 .EmbedSettings(max_len=8, truncating="pre"))
    meta = open_store(str(out)).meta
    assert meta.settings.truncating == "pre" and meta.encoder["truncating"] == "pre"


@pytest.mark.slow
def test_compiled_forward_pass_equals_the_plain_one(encoders):
    from embcache.cache.encoder import Encoder, resolve

    texts = [" ".join(WORDS[: 3 + 2 * i]) for i in range(7)]
    xla = Encoder(resolve(str(encoders[0]), max_len=32, batch_size=4))
    plain = Encoder(resolve(str(encoders[0]), max_len=32, batch_size=4, jit_compile=False))
    ids = xla.token_ids(texts)[0]
    for a, b in zip(xla.encode(ids), plain.encode(ids)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert xla.identity() == plain.identity()  # compiling is not part of the encoder's identity


@pytest.mark.slow
def test_a_bfloat16_encoder_store_records_it_and_raw_text_is_re_encoded_at_it(encoders, corpus,
                                                                              tmp_path):
    """``precision="bfloat16"``: the backbone holds its weights and computes in bfloat16
    (emulated on a CPU without it, which works, slowly); the store's identity says so (a
    float32 store's identity has no such key, as before), its vectors are the float32 ones to
    bfloat16's precision, and scoring raw text re-encodes in bfloat16 whatever ``auto`` would
    run here: the same probabilities as the store's own rows."""
    import embcache

    wide, narrow = tmp_path / "f32.zarr", tmp_path / "bf16.zarr"
    for out, precision in ((wide, "float32"), (narrow, "bfloat16")):
        embed_corpus(CorpusSpec(str(corpus)), None, str(out), encoder=str(encoders[0]),
                     progress=False, chunk_docs=16, precision=precision,
                     settings={"max_len": 40})
    a, b = open_store(str(wide)), open_store(str(narrow))
    assert "precision" not in a.meta.encoder and b.meta.encoder["precision"] == "bfloat16"
    assert a.meta.vectors.fingerprint != b.meta.vectors.fingerprint
    assert a.meta.encoder["vocab_sha256"] == b.meta.encoder["vocab_sha256"]
    x, y = (s.array("tokens")[:].astype(np.float32) for s in (a, b))
    scale = np.abs(x).max()
    assert 0 < np.abs(x - y).max() < 0.05 * scale  # bfloat16 keeps ~3 significant digits
    embcache.train(str(narrow), "fasttext", str(tmp_path / "run"), config={"epochs": 1})
    scorer = embcache.Scorer([tmp_path / "run"], encoder=str(encoders[0]), precision="float32")
    from_store = scorer.classify(str(narrow)).set_index("doc_id")
    texts = {d.doc_id: d.text for d in
             __import__("embcache.cache.corpus", fromlist=["x"]).iter_documents(CorpusSpec(str(corpus)))}
    some = list(from_store.index[:6])
    from_text = scorer.classify([texts[i] for i in some])
    np.testing.assert_allclose(from_text["run_prob"], from_store.loc[some, "run_prob"],
                               atol=2e-3)
    with pytest.raises(embcache.EmbcacheError, match="`precision`"):
        embed_corpus(CorpusSpec(str(corpus)), None, str(tmp_path / "x.zarr"),
                     encoder=str(encoders[0]), precision="half")


@pytest.mark.slow
def test_a_killed_bfloat16_store_resumes_at_bfloat16_under_auto(encoders, tmp_path):
    """``--precision auto`` resuming a store encoded in bfloat16 on a machine where auto means
    float32: it goes on in bfloat16 (the store's precision) and ends as the uninterrupted
    bfloat16 store, never one store of two precisions nor a refusal."""
    corpus = tmp_path / "corpus"
    make_folder_corpus(corpus, docs_per_label=60, labels=("a", "b"))
    cmd = [EMBCACHE, "embed-corpus", "--corpus", str(corpus), "--encoder", str(encoders[0]),
           "--chunk-docs", "4", "--max-len", "32", "-q"]
    env_bf16 = ["--precision", "bfloat16"]
    reference = tmp_path / "ref.zarr"
    subprocess.run(cmd + env_bf16 + ["--out", str(reference)], check=True, capture_output=True)
    out = tmp_path / "killed.zarr"
    kill_after_chunks(cmd + env_bf16 + ["--out", str(out)], out, chunks=5, timeout=120)
    assert store_state(str(out)) == "incomplete"
    done = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "EMBCACHE_NATIVE_BF16": "0"})
    assert done.returncode == 0 and "resumed" in done.stdout, done.stderr[-2000:]
    assert open_store(str(out)).meta.encoder["precision"] == "bfloat16"
    assert_same_store(reference, out)
