import subprocess
import sys

import numpy as np
import pytest
import zarr

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import StoreError
from embcache.cache.meta import StoreMeta
from embcache.cache.settings import EmbedSettings
from embcache.cache.store import open_store, store_state
from embcache.cache.stream import read_padded
from embcache.cache.tokenize import make_tokenizer
from embcache.jobs.embed_corpus import embed_corpus
from tests.helpers import assert_same_store, kill_after_chunks, make_folder_corpus, read_all


def expected_sequence(text, table, max_len, padding="pre", truncating="pre", oov=None):
    toks = make_tokenizer()(text)
    rows = [table.get(t, oov) for t in toks]
    if len(rows) > max_len:
        rows = rows[-max_len:] if truncating == "pre" else rows[:max_len]
    pad = [np.zeros(8, np.float32)] * (max_len - len(rows))
    rows = [np.zeros(8, np.float32) if r is None else r for r in rows]
    return np.array(pad + rows if padding == "pre" else rows + pad, dtype=np.float32), len(rows)


@pytest.mark.parametrize("padding, truncating", [("pre", "pre"), ("post", "post"), ("pre", "post")])
def test_store_holds_keras_padded_sequences(tmp_path, folder_corpus, vectors_file, padding, truncating):
    vec_path, table = vectors_file
    out = tmp_path / "s.zarr"
    settings = EmbedSettings(max_len=12, padding=padding, truncating=truncating, dtype="float32")
    summary = embed_corpus(CorpusSpec(str(folder_corpus), strip_headers=True), str(vec_path),
                           str(out), settings=settings, chunk_docs=5, workers=1, progress=False)
    store = open_store(str(out), require_labels=True)
    assert summary.docs == store.num_docs == 24
    assert store.label_names == ["neg", "pos"]
    emb, lengths = read_padded(store, 0, store.num_docs), store.array("lengths")[:]
    offsets, tokens = store.array("offsets")[:], store.array("tokens")
    ids, labels = store.array("doc_ids")[:], store.array("labels")[:]
    for i, doc_id in enumerate(ids):
        label, name = str(doc_id).split("/")
        text = (folder_corpus / label / name).read_text()
        text = text[text.find("\n\n"):]
        seq, n = expected_sequence(text, table, 12, padding, truncating)
        np.testing.assert_allclose(emb[i], seq, rtol=1e-6)  # padded by the reader
        assert lengths[i] == n
        # Stored ragged: exactly the kept tokens, in order, at the document's offset.
        kept = seq[12 - n:] if padding == "pre" else seq[:n]
        np.testing.assert_allclose(tokens[offsets[i]:offsets[i] + n], kept, rtol=1e-6)
        assert labels[i] == ["neg", "pos"].index(label)
    # Each block of 5 documents starts its own run of rows: whole chunks of `tokens`, one writer.
    assert (offsets[::5] % store.meta.token_chunk == 0).all()
    assert (np.diff(offsets[:5]) == lengths[:4]).all()
    meta = store.meta
    assert meta.complete and meta.padding == padding and meta.settings.truncating == truncating
    assert meta.vectors.dim == 8 and meta.settings.tokenizer.lower is True
    assert 0 < meta.totals.oov_rate < 1 and meta.totals.num_tokens == summary.tokens
    assert sum(meta.totals.split_counts.values()) == 24
    # The attributes are the metadata's, and read back to the same object.
    attrs = dict(store.group.attrs)
    assert attrs["oov_rate"] == meta.totals.oov_rate
    assert "job" not in attrs and "corpus_vocab_size" not in attrs  # no copies, no bench figures
    assert StoreMeta.from_attrs(attrs, "store") == meta


@pytest.mark.parametrize("policy", ["zero", "unk", "mean"])
def test_oov_policies(tmp_path, vectors_file, policy):
    vec_path, table = vectors_file
    corpus = tmp_path / "docs.txt"
    corpus.write_text("cat zzz dog\n")
    out = tmp_path / f"{policy}.zarr"
    embed_corpus(CorpusSpec(str(corpus)), str(vec_path), str(out), workers=1, progress=False,
                 settings=EmbedSettings(max_len=4, oov=policy, dtype="float32", seed=3))
    emb = read_padded(open_store(str(out)), 0, 1)[0]
    np.testing.assert_array_equal(emb[0], 0)  # padding is always zeros
    np.testing.assert_allclose(emb[1], table["cat"], rtol=1e-6)
    oov = emb[2]
    if policy == "zero":
        np.testing.assert_array_equal(oov, 0)
    elif policy == "mean":
        np.testing.assert_allclose(oov, np.mean(list(table.values()), axis=0), rtol=1e-4, atol=1e-6)
    else:
        assert np.abs(oov).sum() > 0 and not any(np.allclose(oov, v) for v in table.values())
    assert open_store(str(out)).meta.totals.oov_tokens == 1


def test_float16_default_and_unlabelled_input(tmp_path, vectors_file):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("the cat\nthe dog\n")
    out = tmp_path / "u.zarr"
    embed_corpus(CorpusSpec(str(corpus)), str(vectors_file[0]), str(out), workers=1, progress=False)
    store = open_store(str(out))
    assert store.array("tokens").dtype == np.float16
    assert store.array("lengths")[:].tolist() == [2, 2]
    assert store.array("tokens")[:4].shape == (4, 8) and read_padded(store, 0, 2).shape == (2, 1000, 8)
    assert not store.labelled and "labels" not in store.group
    with pytest.raises(StoreError, match="has no labels"):
        open_store(str(out), require_labels=True)


def test_complete_store_is_not_overwritten(tmp_path, folder_corpus, vectors_file):
    out = tmp_path / "s.zarr"
    args = (CorpusSpec(str(folder_corpus)), str(vectors_file[0]), str(out))
    embed_corpus(*args, workers=1, progress=False, settings=EmbedSettings(max_len=5))
    with pytest.raises(StoreError, match=r"already exists and is complete; pass `overwrite=True`"
                                         r" to rebuild it, or `repair=True`"):
        embed_corpus(*args, workers=1, progress=False, settings=EmbedSettings(max_len=5))
    kept = embed_corpus(*args, workers=1, progress=False, exist_ok=True,
                        settings=EmbedSettings(max_len=5))
    assert kept.line().endswith("is already complete: left as it is") and kept.docs == 24
    with pytest.raises(StoreError, match="at most one of `overwrite=True`, `repair=True`"):
        embed_corpus(*args, workers=1, progress=False, exist_ok=True, overwrite=True)
    embed_corpus(*args, workers=1, progress=False, overwrite=True, settings=EmbedSettings(max_len=6))
    assert open_store(str(out)).max_len == 6


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "corpus"
    make_folder_corpus(root, docs_per_label=300, labels=("a", "b", "c"))
    return root


@pytest.mark.slow
def test_worker_count_does_not_change_the_store(tmp_path, big_corpus, vectors_file):
    stores = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.zarr"
        embed_corpus(CorpusSpec(str(big_corpus)), str(vectors_file[0]), str(out), workers=workers,
                     chunk_docs=50, progress=False, settings=EmbedSettings(max_len=20))
        stores.append(out)
    assert_same_store(*stores)


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_store(tmp_path, big_corpus, vectors_file):
    reference = tmp_path / "ref.zarr"
    cmd = [sys.executable, "-m", "embcache.jobs.cli", "embed-corpus", "--corpus", str(big_corpus),
           "--vectors", str(vectors_file[0]), "--max-len", "300", "--chunk-docs", "3",
           "--workers", "1", "-q", "--oov", "unk"]
    subprocess.run(cmd + ["--out", str(reference)], check=True, capture_output=True)
    out = tmp_path / "killed.zarr"
    kill_after_chunks(cmd + ["--out", str(out)], out, chunks=20, timeout=60)
    assert store_state(str(out)) == "incomplete"
    with pytest.raises(StoreError, match="is incomplete .* Rerun the same command to resume it"):
        open_store(str(out))
    done = subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True, text=True)
    assert "resumed" in done.stdout
    assert_same_store(reference, out)
    for key in ("num_tokens", "oov_tokens", "kept_tokens"):
        assert (getattr(open_store(str(out)).meta.totals, key)
                == getattr(open_store(str(reference)).meta.totals, key))


@pytest.mark.slow
def test_a_second_writer_is_refused_and_the_first_loses_nothing(tmp_path, folder_corpus, vectors_file):
    """While one process writes a store (it holds the store's lock), another embed-corpus into the
    same --out exits 1 with one line and touches nothing; once the first is done, it may."""
    from click.testing import CliRunner

    from embcache.cache.locks import exclusive
    from embcache.jobs.cli import main

    out = tmp_path / "s.zarr"
    args = ["embed-corpus", "--corpus", str(folder_corpus), "--vectors", str(vectors_file[0]),
            "--out", str(out), "--max-len", "10", "-q"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = read_all(out)
    with exclusive(out, "held by this test"):
        r = CliRunner().invoke(main, args + ["--overwrite"])
    assert (r.exit_code, r.output.strip()) == (1, (
        f"Error: Store {out} is being written by another process right now (it holds "
        f"{tmp_path / '.s.zarr.lock'}); wait for it to finish, or write elsewhere"))
    after = read_all(out)
    assert after.keys() == before.keys()
    for k, v in after.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert CliRunner().invoke(main, args + ["--overwrite"]).exit_code == 0  # released


def test_resume_removes_temporary_chunk_files_of_a_killed_write(tmp_path, folder_corpus,
                                                                 vectors_file):
    """A kill in the middle of a chunk write leaves zarr's `<chunk>.<uuid>.partial`; resuming
    removes it (the block is written again), so the store ends as an uninterrupted one."""

    args = dict(chunk_docs=4, progress=False, settings=EmbedSettings(max_len=20), workers=1)
    reference, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    embed_corpus(CorpusSpec(str(folder_corpus)), str(vectors_file[0]), str(reference), **args)
    embed_corpus(CorpusSpec(str(folder_corpus)), str(vectors_file[0]), str(out), **args)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["complete"] = False
    group["chunk_stats"][2] = -1  # block 2 not committed: it is written again
    stale = out / "tokens" / "c" / "0" / "0.0123456789abcdef.partial"
    stale.write_bytes(b"half a chunk")
    embed_corpus(CorpusSpec(str(folder_corpus)), str(vectors_file[0]), str(out), **args)
    assert not stale.exists()
    assert_same_store(reference, out)
