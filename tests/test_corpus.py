import json
import tarfile

import pytest

from embcache.cache.corpus import CorpusSpec, iter_documents, scan_corpus
from embcache.cache.errors import CorpusError
from tests.helpers import make_folder_corpus


def docs(spec):
    return [(d.doc_id, d.text, d.label) for d in iter_documents(spec)]


def test_folder_and_tar_read_the_same_documents(tmp_path):
    root = tmp_path / "20_newsgroup"
    make_folder_corpus(root)
    archive = tmp_path / "news.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="20_newsgroup")
    folder = docs(CorpusSpec(str(root)))
    packed = docs(CorpusSpec(str(archive)))
    assert len(folder) == 24
    assert sorted((t, lab) for _, t, lab in folder) == sorted((t, lab) for _, t, lab in packed)
    assert {lab for *_, lab in folder} == {"neg", "pos"}
    scan = scan_corpus(CorpusSpec(str(archive)))
    assert (scan.num_docs, scan.label_names) == (24, ["neg", "pos"])


def test_strip_headers_and_latin1_fallback(tmp_path):
    (tmp_path / "c" / "a").mkdir(parents=True)
    (tmp_path / "c" / "b").mkdir(parents=True)
    (tmp_path / "c" / "a" / "1").write_bytes(b"From: x\nSubject: caf\xe9\n\nbody caf\xe9")
    (tmp_path / "c" / "b" / "1").write_text("no header here")
    out = docs(CorpusSpec(str(tmp_path / "c"), strip_headers=True))
    assert out[0][1] == "\n\nbody café"
    assert out[1][1] == "no header here"


def test_csv_by_index_without_header_joins_columns(tmp_path):
    path = tmp_path / "ag.csv"
    path.write_text('"3","Wall St. Bears","Short-sellers, ""the"" ultra-cynics"\n"4","Title","Desc"\n')
    spec = CorpusSpec(str(path), text_columns=("1", "2"), label_column="0", header=False)
    assert docs(spec) == [("0", 'Wall St. Bears Short-sellers, "the" ultra-cynics', "3"),
                          ("1", "Title Desc", "4")]
    names = tmp_path / "classes.txt"
    names.write_text("World\nSports\nBusiness\nSci/Tech\n")
    scan = scan_corpus(CorpusSpec(str(path), text_columns=("1",), label_column="0", header=False,
                                  label_names_file=str(names)))
    assert scan.label_names == ["World", "Sports", "Business", "Sci/Tech"]


def test_csv_and_tsv_by_name(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("id\tbody\ttopic\nx1\thello world\tgreet\nx2\tbye\tleave\n")
    spec = CorpusSpec(str(path), text_columns=("body",), label_column="topic", id_column="id")
    assert docs(spec) == [("x1", "hello world", "greet"), ("x2", "bye", "leave")]
    bad = CorpusSpec(str(path), text_columns=("text",), label_column="topic")
    with pytest.raises(CorpusError, match="Text column 'text' does not exist in .*d.tsv; its "
                                          "columns are: id, body, topic"):
        scan_corpus(bad)


def test_jsonl_fields_and_unlabelled_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"id": 7, "title": "a", "body": "b c", "y": "pos"},
            {"id": 8, "title": "d", "body": "e", "y": "neg"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = CorpusSpec(str(path), text_columns=("title", "body"), label_column="y", id_column="id")
    assert docs(spec) == [("7", "a b c", "pos"), ("8", "d e", "neg")]
    lines = tmp_path / "docs.txt"
    lines.write_text("first doc\n\nsecond doc\n")
    assert docs(CorpusSpec(str(lines))) == [("1", "first doc", None), ("3", "second doc", None)]
    assert scan_corpus(CorpusSpec(str(lines))).label_names is None


@pytest.mark.parametrize("setup, message", [
    (lambda p: p.mkdir(), "holds no documents"),
    (lambda p: (p.mkdir(), (p / "a").mkdir(), (p / "a" / "1").write_text("x"), (p / "b").mkdir()),
     "Label folder 'b' in .* has no documents"),
    (lambda p: (p.mkdir(), (p / "a").mkdir(), (p / "a" / "1").write_text("x"), (p / "2").write_text("y")),
     "mixes documents at its top level with label folders"),
])
def test_bad_folders(tmp_path, setup, message):
    root = tmp_path / "c"
    setup(root)
    with pytest.raises(CorpusError, match=message):
        scan_corpus(CorpusSpec(str(root)))


def test_corrupt_archive_and_bad_json(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    with pytest.raises(CorpusError, match="Cannot read archive"):
        scan_corpus(CorpusSpec(str(bad)))
    js = tmp_path / "x.jsonl"
    js.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(CorpusError, match="x.jsonl, line 2: not valid JSON"):
        scan_corpus(CorpusSpec(str(js)))


def test_spec_round_trips_through_its_dict(tmp_path):
    spec = CorpusSpec(str(tmp_path / "a.csv"), text_columns=("title", "body"), label_column="0",
                      header=False, strip_headers=True)
    back = CorpusSpec.from_dict({**spec.to_dict(), "size": 123})  # extra store keys are ignored
    assert back == CorpusSpec(**{**spec.__dict__, "format": "csv"})


def test_a_tar_gz_cut_anywhere_is_an_error(tmp_path):
    """tarfile's stream reader takes a cut at a member boundary for the end of the archive: the
    gzip stream is read to its end, so no cut passes for a smaller corpus."""
    import tarfile

    from embcache.cache.corpus import CorpusSpec, iter_documents
    from embcache.cache.errors import CorpusError
    from tests.helpers import make_folder_corpus

    make_folder_corpus(tmp_path / "corpus", docs_per_label=12)
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "corpus", arcname="corpus")
    data = (tmp_path / "c.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    for n in range(20, len(data), 5):
        cut.write_bytes(data[:n])
        with pytest.raises(CorpusError, match="Cannot read archive"):
            sum(1 for _ in iter_documents(CorpusSpec(str(cut))))
    cut.write_bytes(data)
    assert sum(1 for _ in iter_documents(CorpusSpec(str(cut)))) == 24
