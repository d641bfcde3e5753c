"""Real-data checks against DATA_DIR (required in CI, skipped with a reason elsewhere)."""

import numpy as np
import pytest

from embcache.cache.corpus import CorpusSpec
from embcache.cache.settings import EmbedSettings
from embcache.cache.store import open_store
from embcache.cache.vectors import load_vectors
from embcache.jobs.embed_corpus import embed_corpus
from tests.helpers import real_data_dir

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def data():
    return real_data_dir()


@pytest.fixture(scope="module")
def glove(data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("glove-cache")
    table = load_vectors(data / "glove.6B.50d.txt.gz", cache_dir=cache)
    return table, cache


@pytest.mark.slow
def test_full_glove_parses(glove):
    table, _ = glove
    assert (table.size, table.dim, table.duplicates) == (400_000, 50, 0)
    assert table.words[:3] == ["the", ",", "."]
    np.testing.assert_allclose(table.vectors[0][:3], [0.418, 0.24968, -0.41242], rtol=1e-6)


@pytest.mark.slow
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
    # Ragged: only the kept tokens are stored, each block in whole `tokens` chunks of its own,
    # packed into shards (one object each: 20 blocks of 1,024 documents, 5 to a shard, so that 4
    # shard groups share the workers): the shards' indexes list exactly those chunks.
    from embcache.cache.shards import EMPTY, shard_index

    lengths, stats = store.array("lengths")[:], store.array("chunk_stats")[:]
    assert lengths.sum() == stats[:, 3].sum() == store.meta.totals.kept_tokens < 0.8 * 19_997 * 200
    per_block = -(-stats[:, 3] // store.meta.token_chunk)
    shards = sorted(p for p in (out / "tokens").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert store.meta.shard_blocks == 5 and len(shards) == store.meta.num_shards == 4
    inner = store.meta.shard_blocks * store.meta.block_rows // store.meta.token_chunk
    indexes = [shard_index(p.read_bytes(), inner) for p in shards]
    assert sum(int((i[:, 0] != EMPTY).sum()) for i in indexes) == per_block.sum()


@pytest.mark.slow
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


@pytest.mark.slow
def test_minilm_sentence_transformers_folder_as_distributed(data, tmp_path):
    """all-MiniLM-L6-v2 as distributed (tokenizer.json, no vocab.txt): embcache derives what
    keras-hub needs without writing into the folder; ids are BERT uncased's; the vectors of a
    short corpus are the backbone's own."""
    import zipfile

    from embcache.cache.encoder import Encoder, resolve

    folder = tmp_path / "minilm"
    with zipfile.ZipFile(data / "all-MiniLM-L6-v2.zip") as z:
        z.extractall(folder)
    before = sorted(p.name for p in folder.iterdir())
    assert "vocab.txt" not in before
    enc = Encoder(resolve(str(folder), cache_dir=str(tmp_path / "cache")))
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written there
    assert (enc.dim, enc.max_len, len(enc.tokenizer.get_vocabulary())) == (384, 256, 30522)
    ids, _, _ = enc.token_ids(["Hello world", ""])
    assert ids[0].tolist() == [101, 7592, 2088, 102] and ids[1].tolist() == [101, 102]
    # The zip itself works too, and names the same encoder.
    zipped = Encoder(resolve(str(data / "all-MiniLM-L6-v2.zip"), cache_dir=str(tmp_path / "cache")))
    assert zipped.identity()["fingerprint"] == enc.identity()["fingerprint"]
    corpus = tmp_path / "c"
    for label, text in (("a", "The engine needs new spark plugs."), ("b", "Our goalie made 40 saves.")):
        (corpus / label).mkdir(parents=True)
        (corpus / label / "1").write_text(text)
    out = tmp_path / "m.zarr"
    embed_corpus(CorpusSpec(str(corpus)), None, str(out), encoder=str(folder),
                 cache_dir=str(tmp_path / "cache"), progress=False, precision="float32")
    store = open_store(str(out))
    assert store.dim == 384 and store.meta.encoder["architecture"] == "BertBackbone"
    ids, _, _ = enc.token_ids(["Our goalie made 40 saves."])
    alone = enc.encode(ids)[0]
    row = [str(x) for x in store.array("doc_ids")[:]].index("b/1")
    o, n = int(store.array("offsets")[row]), int(store.array("lengths")[row])
    np.testing.assert_allclose(store.array("tokens")[o:o + n].astype(np.float32), alone,
                               rtol=1e-2, atol=1e-2)


TRICKY = ["Café naïve résumé, Ångström and Øresund", "CamelCase WORDS and lower words", "",
          "an over-long text " * 400, "emoji 🙂 and CJK 漢字 and tabs\tand\nnewlines"]


@pytest.mark.slow
def test_minilm_ids_are_the_models_own_tokenizer_json(data, tmp_path):
    """The encoder tokenizes with the folder's own tokenizer.json (accents stripped: `café` is
    `cafe`, not [UNK] as keras-hub's WordPiece tokenizer makes it)."""
    from tokenizers import Tokenizer

    from embcache.cache.encoder import Encoder, resolve

    enc = Encoder(resolve(str(data / "all-MiniLM-L6-v2.zip"), cache_dir=str(tmp_path / "cache"),
                          max_len=256))
    own = Tokenizer.from_file(str(next((tmp_path / "cache").rglob("tokenizer.json"))))
    own.no_truncation()
    own.no_padding()
    ids, _, unknown = enc.token_ids(TRICKY)
    for text, got in zip(TRICKY, ids):
        want = own.encode(text).ids  # [CLS] ... [SEP] by its own post-processor
        if len(want) > 256:
            want = want[:255] + [102]
        assert got.tolist() == want, text
    assert own.token_to_id("cafe") in ids[0].tolist() and 100 not in ids[0].tolist()


@pytest.mark.slow
def test_wordllama_table_ids_and_vectors(data, tmp_path):
    """WordLlama as shipped (a table file and its tokenizer.json): ids equal `tokenizers`' own
    (no special tokens added), each token's vector is its table row."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from embcache.cache.subword import load_subword

    folder = data / "wordllama-l2-supercat-256"
    table_file = folder / "l2_supercat_256.safetensors"
    tok_file = folder / "l2_supercat_tokenizer_config.json"
    table = load_subword(table_file, str(tok_file), cache_dir=tmp_path / "cache")
    own = Tokenizer.from_file(str(tok_file))
    own.no_truncation()
    ids, total, unknown = table.token_ids(TRICKY)
    for text, got in zip(TRICKY, ids):
        assert got.tolist() == own.encode(text, add_special_tokens=False).ids, text[:40]
    assert ids[2].tolist() == [] and len(ids[3]) > 1000 and unknown == 0
    assert ids[0].tolist() != own.encode(TRICKY[0].lower(), add_special_tokens=False).ids  # cased
    weights = load_file(str(table_file))["embedding.weight"]
    assert (table.dim, table.meta["rows"]) == (256, 32000)
    out = tmp_path / "ag.zarr"
    spec = CorpusSpec(str(data / "ag_news_csv" / "test.csv"), text_columns=("1", "2"),
                      label_column="0", header=False)
    embed_corpus(spec, str(table_file), str(out), tokenizer=str(tok_file), progress=False,
                 cache_dir=str(tmp_path / "cache"), settings=EmbedSettings(max_len=64))
    store = open_store(str(out))
    assert store.num_docs == 7600 and store.dim == 256 and store.meta.subword["layout"] == "table"
    import csv

    with open(data / "ag_news_csv" / "test.csv", encoding="utf-8") as f:
        first = next(csv.reader(f))
    want = own.encode(f"{first[1]} {first[2]}", add_special_tokens=False).ids[-64:]
    n = int(store.array("lengths")[0])
    np.testing.assert_array_equal(store.array("tokens")[0:n], weights[want])
