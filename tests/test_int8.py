"""int8 stores: one scale per token vector, dequantised where batches are made (in the graph),
identically on every path (streamed in process, producer process, in-memory split, scorer)."""

from __future__ import annotations

import numpy as np
import pytest

from embcache.cache.dataset import Batching
from embcache.cache.held import InMemorySplit
from embcache.cache.held_dataset import memory_dataset
from embcache.cache.rows import decode_rows, encode_rows, join_rows, split_rows
from embcache.cache.store import open_store
from embcache.cache.stream import plan_split, read_padded
from tests.helpers import make_folder_corpus, stream


@pytest.fixture(scope="module")
def stores(tmp_path_factory, vectors_file):
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.settings import EmbedSettings
    from embcache.jobs.embed_corpus import SplitSettings, embed_corpus

    root = tmp_path_factory.mktemp("int8")
    make_folder_corpus(root / "corpus", docs_per_label=40, labels=("a", "b", "c"))
    out = {}
    for dtype in ("float32", "float16", "int8"):
        out[dtype] = root / f"{dtype}.zarr"
        embed_corpus(CorpusSpec(str(root / "corpus")), str(vectors_file[0]), str(out[dtype]),
                     workers=1, chunk_docs=16, progress=False,
                     settings=EmbedSettings(max_len=40, dtype=dtype, oov="unk"),
                     split=SplitSettings(val_frac=0.2, test_frac=0.2))
    return out


def test_quantisation_round_trip_and_packing():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 7)).astype(np.float32) * rng.uniform(0.01, 100, size=(50, 1))
    v[3] = 0.0
    rows = encode_rows(v, "int8")
    assert rows.shape == (50, 9) and rows.dtype == np.int8
    back = decode_rows(rows, 7, "int8")
    bound = np.abs(v).max(axis=1, keepdims=True) / 254 * 1.01  # half a step, float16 scale
    assert (np.abs(back - v) <= bound + 1e-12).all()
    assert (back[3] == 0).all()
    parts = split_rows(rows, 7, "int8")
    assert parts["tokens"].dtype == np.int8 and parts["scales"].dtype == np.float16
    np.testing.assert_array_equal(join_rows(parts["tokens"], parts["scales"]), rows)
    assert (np.abs(parts["tokens"]).max(axis=1)[np.arange(50) != 3] == 127).all()


def test_int8_store_holds_the_quantised_vectors_and_a_scale_each(stores):
    f32, q = open_store(str(stores["float32"])), open_store(str(stores["int8"]))
    assert q.dtype == "int8" and q.array("tokens").dtype == np.int8
    assert q.array("scales").dtype == np.float16 and q.row_width == q.dim + 2
    np.testing.assert_array_equal(f32.array("lengths")[:], q.array("lengths")[:])
    padded = read_padded(f32, 0, f32.num_docs)
    want = decode_rows(encode_rows(padded.reshape(-1, f32.dim), "int8"), f32.dim, "int8")
    np.testing.assert_array_equal(read_padded(q, 0, q.num_docs), want.reshape(padded.shape))
    # (store bytes on real data: make bench-vectors; tiny stores are all metadata)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["in-process", "producer", "in-memory"])
def test_batches_are_dequantised_in_the_graph_identically_on_every_path(stores, path):
    f32, q = open_store(str(stores["float32"])), open_store(str(stores["int8"]))
    plan = plan_split(q, "train")
    args = dict(split="train", batch_size=6, shuffle=True, seed=2, shuffle_docs=10, plan=plan)
    if path == "in-memory":
        rows = InMemorySplit(q, plan, "train")
        assert rows.nbytes == (int(rows.lengths.sum()) + 1) * (q.dim + 2)
        got = memory_dataset(rows, Batching(batch_size=6, shuffle=True, seed=2, shuffle_docs=10))
    else:
        got = stream(q, in_process=path == "in-process", **args)
    reference = stream(f32, in_process=True, **args)
    n = 0
    for (fq, yq), (fr, yr) in zip(got, reference):
        x = fr["embedded"].numpy()
        expect = decode_rows(encode_rows(x.reshape(-1, x.shape[-1]), "int8"), x.shape[-1], "int8")
        np.testing.assert_array_equal(fq["embedded"].numpy(), expect.reshape(x.shape))
        np.testing.assert_array_equal(fq["lengths"].numpy(), fr["lengths"].numpy())
        np.testing.assert_array_equal(yq.numpy(), yr.numpy())
        n += 1
    assert n == plan.num_batches(6, merge_tail=True)


@pytest.mark.slow
def test_int8_trains_and_scores_text_as_its_store(stores, tmp_path, vectors_file):
    import embcache
    from embcache.cache.corpus import iter_documents

    run = tmp_path / "ft"
    embcache.train(str(stores["int8"]), "fasttext", str(run),
                   config=embcache.TrainConfig(epochs=2, batch_size=8))
    card = (run / "model.json").read_text()
    assert '"dtype": "int8"' in card
    scorer = embcache.Scorer([str(run)], vectors=str(vectors_file[0]))
    from_store = scorer.classify(str(stores["int8"]))
    corpus = stores["int8"].parent / "corpus"
    texts = {d.doc_id: d.text for d in iter_documents(
        embcache.CorpusSpec(str(corpus)))}
    ids = list(from_store["doc_id"])[:12]
    from_text = scorer.classify([texts[i] for i in ids])
    np.testing.assert_allclose(from_text["ft_prob"], from_store["ft_prob"][:12],
                               rtol=1e-5)
