"""Real-data checks against DATA_DIR (required in CI, skipped with a reason elsewhere)."""

import numpy as np
import pytest

from embcache.cache.corpus import CorpusSpec
from embcache.cache.settings import EmbedSettings
from embcache.cache.store import open_store
from embcache.cache.vectors import load_vectors
from embcache.jobs.embed_corpus import embed_corpus
from tests.conftest import real_data_dir

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def data():
    return real_data_dir()


@pytest.fixture(scope="module")
def glove(data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("glove-cache")
    table = load_vectors(data / "glove.6B.50d.txt.gz", cache_dir=cache)
    return table, cache


def test_full_glove_parses(glove):
    table, _ = glove
    assert (table.size, table.dim, table.duplicates) == (400_000, 50, 0)
    assert table.words[:3] == ["the", ",", "."]
    np.testing.assert_allclose(table.vectors[0][:3], [0.418, 0.24968, -0.41242], rtol=1e-6)


def test_news20_store(data, glove, tmp_path):
    _, cache = glove
    out = tmp_path / "news20.zarr"
    summary = embed_corpus(CorpusSpec(str(data / "news20.tar.gz"), strip_headers=True),
                           str(data / "glove.6B.50d.txt.gz"), str(out), cache_dir=str(cache),
                           progress=False, settings=EmbedSettings(max_len=200))
    store = open_store(str(out), require_labels=True)
    assert summary.docs == store.num_docs == 19_997
    assert len(store.label_names) == 20 and store.label_names[0] == "alt.atheism"
    counts = np.bincount(store.array("labels")[:], minlength=20)
    assert counts.min() == 997 and counts.max() == 1000
    assert 0.03 < store.meta.totals.oov_rate < 0.12
    # Ragged: only the kept tokens are stored, each block in whole `tokens` chunks of its own.
    lengths, stats = store.array("lengths")[:], store.array("chunk_stats")[:]
    assert lengths.sum() == stats[:, 3].sum() == store.meta.totals.kept_tokens < 0.8 * 19_997 * 200
    per_block = -(-stats[:, 3] // store.meta.token_chunk)
    written = [p for p in (out / "tokens").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(written) == per_block.sum()


def test_ag_news_csv_store(data, glove, tmp_path):
    _, cache = glove
    out = tmp_path / "ag.zarr"
    spec = CorpusSpec(str(data / "ag_news_csv" / "test.csv"), text_columns=("1", "2"),
                      label_column="0", header=False,
                      label_names_file=str(data / "ag_news_csv" / "classes.txt"))
    embed_corpus(spec, str(data / "glove.6B.50d.txt.gz"), str(out), cache_dir=str(cache),
                 progress=False, settings=EmbedSettings(max_len=100))
    store = open_store(str(out), require_labels=True)
    assert store.num_docs == 7600
    assert store.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert np.bincount(store.array("labels")[:]).tolist() == [1900] * 4
