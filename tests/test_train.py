import json

import numpy as np
import pytest
from click.testing import CliRunner

from cache.corpus import CorpusSpec
from cache.store import open_store
from cache.stream import ShuffleBuffer, make_dataset, plan_split
from jobs.cli import main
from jobs.embed_corpus import embed_corpus
from tests.conftest import small_store


@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    return small_store(tmp_path_factory.mktemp("train"), vectors_file[0], docs_per_label=60,
                       val_frac=0.2, test_frac=0.2)


def test_stream_covers_each_split_exactly_once(store):
    s = open_store(str(store))
    splits, ids = s.array("split")[:], s.array("lengths")[:]
    for code, name in enumerate(("train", "val", "test")):
        plan = plan_split(s, name)
        ds = make_dataset(s, split=name, batch_size=7, shuffle=(name == "train"), seed=1)
        got_lengths, n = [], 0
        for features, labels in ds:
            assert features["embedded"].dtype.name == "float32"
            n += len(labels)
            got_lengths += features["lengths"].numpy().tolist()
        assert n == plan.num_docs == int((splits == code).sum())
        assert sorted(got_lengths) == sorted(ids[splits == code].tolist())


def test_shuffle_is_seeded(store):
    s = open_store(str(store))

    def order(seed):
        return np.concatenate([f["lengths"].numpy() for f, _ in make_dataset(
            s, split="train", batch_size=8, shuffle=True, seed=seed, shuffle_docs=16)])

    assert np.array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))


def test_shuffle_keeps_vectors_lengths_and_labels_together(store):
    """Shuffling permutes rows of a window: each document's vectors, length and label move as one,
    and every epoch sees a new order."""
    s = open_store(str(store))

    def rows(ds):
        out = []
        for f, y in ds:
            x = f["embedded"].numpy().reshape(len(y), -1)
            out += [(x[i].tobytes(), int(f["lengths"][i]), int(y[i])) for i in range(len(y))]
        return out

    truth = rows(make_dataset(s, split="train", batch_size=5))
    ds = make_dataset(s, split="train", batch_size=5, shuffle=True, seed=2, shuffle_docs=16)
    epoch1, epoch2 = rows(ds), rows(ds)
    assert sorted(epoch1) == sorted(epoch2) == sorted(truth)
    assert [r[1:] for r in epoch1] != [r[1:] for r in truth]
    assert [r[1:] for r in epoch1] != [r[1:] for r in epoch2]


@pytest.mark.parametrize("size", [1, 5, 16, 100])
def test_shuffle_buffer_emits_every_document_once_with_its_fields(size):
    buf = ShuffleBuffer(size, np.random.default_rng(0))
    chunks = [np.arange(s, s + n) for s, n in ((0, 8), (8, 8), (16, 3), (19, 40))]
    out = [part for c in chunks for part in buf.push((c, c * 10))]
    out += list(buf.drain(7))
    ids = np.concatenate([a for a, _ in out])
    assert np.array_equal(np.concatenate([b for _, b in out]), ids * 10)  # fields stay together
    assert sorted(ids.tolist()) == list(range(59))
    if size >= 16:
        assert not np.array_equal(ids, np.arange(59))  # and the order is mixed


def test_train_leaves_a_run_folder(store, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--store", str(store), "--model", "fasttext",
                                       "--out", str(out), "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Trained fasttext for 2 epochs")
    card = json.loads((out / "model.json").read_text())
    s = open_store(str(store))
    assert card["vectors"]["fingerprint"] == s.attrs["vectors"]["fingerprint"]
    assert card["label_names"] == ["a", "b", "c"] and card["max_len"] == 160
    assert card["hyperparameters"]["hidden"] == 64 and "val_accuracy" in card["metrics"]
    assert (out / "history.csv").read_text().count("\n") == 3
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "model.keras").stat().st_size < 200_000


def test_train_refuses_bad_stores_and_models(store, tmp_path, vectors_file):
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--store", str(store), "--model", "nope", "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and r.output.startswith("Error: Unknown model 'nope'. Known models: bilstm")
    unlabelled = tmp_path / "u.zarr"
    (tmp_path / "d.txt").write_text("the cat\n")
    embed_corpus(CorpusSpec(str(tmp_path / "d.txt")), str(vectors_file[0]), str(unlabelled),
                 workers=1, progress=False)
    r = runner.invoke(main, ["train", "--store", str(unlabelled), "--out", str(tmp_path / "r")])
    assert (r.exit_code, r.output.strip()) == (1, f"Error: Store {unlabelled} has no labels; "
                                                  "training needs a labelled corpus")
    r = runner.invoke(main, ["train", "--store", str(store), "--epochs", "0"])
    assert r.exit_code == 2 and "--epochs" in r.output
