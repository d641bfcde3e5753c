import gzip
import struct
import zipfile

import numpy as np
import pytest

from embcache.cache.errors import VectorsError
from embcache.cache.vectors import load_vectors
from tests.helpers import DIM, WORDS, write_vectors


def check_table(table, expected):
    assert table.dim == DIM
    assert table.size == len(expected)
    for w, v in expected.items():
        np.testing.assert_allclose(table.vectors[table.index[w]], v, rtol=1e-6)


def test_glove_txt_gz_zip_share_a_fingerprint(tmp_path):
    txt = tmp_path / "v.txt"
    expected = write_vectors(txt)
    gz = tmp_path / "v.txt.gz"
    gz.write_bytes(gzip.compress(txt.read_bytes()))
    zp = tmp_path / "glove.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.write(txt, "glove.6B.8d.txt")
        z.writestr("readme.md", "hi")
    tables = [load_vectors(txt), load_vectors(gz), load_vectors(zp, member="glove.6B.8d.txt"),
              load_vectors(zp)]
    for t in tables:
        check_table(t, expected)
    assert len({t.fingerprint for t in tables}) == 1


def test_second_load_is_memory_mapped_from_the_cache(tmp_path, monkeypatch):
    import embcache.cache.vectors as vectors_module

    txt = tmp_path / "v.txt"
    write_vectors(txt)
    parses = []
    build = vectors_module._build_cache_entry
    monkeypatch.setattr(vectors_module, "_build_cache_entry",
                        lambda *a: (parses.append(a[0]), build(*a))[1])
    first = load_vectors(txt, cache_dir=tmp_path / "c")
    second = load_vectors(txt, cache_dir=tmp_path / "c")
    assert parses == [txt]  # parsed once: the second load read nothing but the cache
    assert isinstance(second.vectors, np.memmap)
    assert second.cache_path == first.cache_path
    np.testing.assert_array_equal(np.asarray(second.vectors), np.asarray(first.vectors))
    # The cache is keyed by content: a changed file is parsed again.
    write_vectors(txt, seed=1)
    third = load_vectors(txt, cache_dir=tmp_path / "c")
    assert parses == [txt, txt]
    assert third.fingerprint != first.fingerprint


def test_word2vec_text_and_fasttext_vec_headers(tmp_path):
    w2v = tmp_path / "w.txt"
    expected = write_vectors(w2v, header=True)
    ft = tmp_path / "wiki.vec"
    write_vectors(ft, header=True, trailing_space=True)
    check_table(load_vectors(w2v), expected)
    check_table(load_vectors(ft, fmt="fasttext"), expected)


def test_word2vec_binary(tmp_path):
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(len(WORDS), DIM)).astype(np.float32)
    data = f"{len(WORDS)} {DIM}\n".encode()
    for w, v in zip(WORDS, vecs):
        data += w.encode() + b" " + struct.pack(f"<{DIM}f", *v) + b"\n"
    path = tmp_path / "GoogleNews.bin"
    path.write_bytes(data)
    check_table(load_vectors(path), dict(zip(WORDS, vecs)))


def test_odd_words_take_the_last_dim_fields(tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the 1 2\nnew york 3 4\n. 5 6e-01\n's -1 2\nécole 7 8\n", encoding="utf-8")
    t = load_vectors(path)
    assert t.words == ["the", "new york", ".", "'s", "école"]
    np.testing.assert_allclose(t.vectors[1], [3, 4])
    np.testing.assert_allclose(t.vectors[2], [5, 0.6])


def test_duplicates_keep_the_first_and_are_counted(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("a 1 1\nb 2 2\na 9 9\nc 3 3\nb 8 8\n")
    t = load_vectors(path)
    assert t.words == ["a", "b", "c"]
    assert t.duplicates == 2
    np.testing.assert_allclose(t.vectors[0], [1, 1])


@pytest.mark.parametrize("content, message", [
    ("a 1 2 3\nb 4 5\nc 1 2 3\n", "line 2: expected a word and 3 values, found 3 fields"),
    ("a 1 2 3\nb 4 x 6\n", "line 2: b'x' is not a number"),
    ("", "is empty"),
    ("3 2\na 1 2\nb 1 2\n", "the header declares 3 vectors but the file holds 2"),
])
def test_malformed_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(VectorsError, match=message):
        load_vectors(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(VectorsError, match="Vectors file not found"):
        load_vectors(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(VectorsError, match="Cannot read vectors file"):
        load_vectors(bad)
    zp = tmp_path / "two.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("a.txt", "x 1\n")
        z.writestr("b.txt", "y 1\n")
    with pytest.raises(VectorsError, match="holds 2 vectors files"):
        load_vectors(zp)


def test_an_unwritable_cache_is_one_clear_error(tmp_path, vectors_file):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(VectorsError, match="Cannot write the vectors cache under .*afile"):
        load_vectors(vectors_file[0], cache_dir=afile)
