import json

import numpy as np
import pytest
from click.testing import CliRunner

from embcache.cache.corpus import CorpusSpec
from embcache.cache.errors import StoreError
from embcache.cache.meta import StoreMeta
from embcache.cache.store import open_store
from embcache.cache.stream import ShuffleBuffer, plan_split
from embcache.jobs.cli import main
from embcache.jobs.embed_corpus import embed_corpus
from tests.helpers import paused, small_store, stream


@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    return small_store(tmp_path_factory.mktemp("train"), vectors_file[0], docs_per_label=60,
                       val_frac=0.2, test_frac=0.2)


@pytest.mark.slow
def test_stream_covers_each_split_exactly_once(store):
    s = open_store(str(store))
    splits, ids = s.array("split")[:], s.array("lengths")[:]
    for code, name in enumerate(("train", "val", "test")):
        plan = plan_split(s, name)
        ds = stream(s, name, batch_size=7, shuffle=(name == "train"), seed=1)
        got_lengths, n = [], 0
        for features, labels in ds:
            assert features["embedded"].dtype.name == "float32"
            n += len(labels)
            got_lengths += features["lengths"].numpy().tolist()
        assert n == plan.num_docs == int((splits == code).sum())
        # the same count every pass, known up front (a shuffled pass merges its buckets' tails)
        assert len(ds) == plan.num_batches(7, merge_tail=(name == "train"))
        assert sorted(got_lengths) == sorted(ids[splits == code].tolist())


def test_shuffle_is_seeded(store):
    s = open_store(str(store))

    def order(seed):
        return np.concatenate([f["lengths"].numpy() for f, _ in stream(
            s, "train", batch_size=8, shuffle=True, seed=seed, shuffle_docs=16)])

    assert np.array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))


def test_shuffle_keeps_vectors_lengths_and_labels_together(store):
    """Shuffling permutes rows of a window: each document's vectors, length and label move as one,
    and every epoch sees a new order."""
    s = open_store(str(store))

    def rows(ds):  # each document's own rows (a shuffled pass may pad it further: merged tails)
        out = []
        for f, y in ds:
            x, n = f["embedded"].numpy(), f["lengths"].numpy()
            out += [(x[i, x.shape[1] - n[i]:].tobytes(), int(n[i]), int(y[i]))
                    for i in range(len(y))]
        return out

    truth = rows(stream(s, "train", batch_size=5))
    ds = stream(s, "train", batch_size=5, shuffle=True, seed=2, shuffle_docs=16)
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


@pytest.mark.slow
def test_train_leaves_a_run_folder(store, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--store", str(store), "--model", "fasttext",
                                       "--out", str(out), "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Trained fasttext for 2 epochs")
    card = json.loads((out / "model.json").read_text())
    s = open_store(str(store))
    # The card embeds the store's metadata whole, and it reads back to the store's own.
    assert StoreMeta.from_attrs(card["store"], "card") == s.meta
    assert card["store"]["label_names"] == ["a", "b", "c"] and card["store"]["max_len"] == 160
    assert card["hyperparameters"]["hidden"] == 64 and "val_accuracy" in card["metrics"]
    assert "keras_way" not in card  # the frozen-Embedding comparison is the benchmarks' job
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


def test_batches_are_padded_to_their_length_bucket(store):
    """Each batch is as long as its length bucket (not max_len), holds only documents of that
    bucket, and each document's rows equal the store's, padded on the recorded side."""
    from embcache.cache.stream import bucket_lengths, read_padded

    s = open_store(str(store))
    buckets = bucket_lengths(s.max_len)
    assert buckets[0] == 8 and buckets[-1] == s.max_len and (np.diff(buckets) > 0).all()
    assert (np.diff(buckets) <= np.maximum(buckets[1:] / 5, 8)).all()  # padding: <= 1/5 of a batch
    codes = s.array("split")[:]
    train_rows = np.flatnonzero(codes == 0)
    full = read_padded(s, 0, s.num_docs)
    shapes = set()
    for f, _ in stream(s, "train", batch_size=4, with_seq=True, max_wait=10):
        x, lengths, seq = f["embedded"].numpy(), f["lengths"].numpy(), f["seq"].numpy()
        T = x.shape[1]
        shapes.add(T)
        k = np.searchsorted(buckets, T)
        assert buckets[k] == T and (lengths <= T).all()
        assert k == 0 or (lengths > buckets[k - 1]).all()
        for i, row in enumerate(train_rows[seq]):
            np.testing.assert_array_equal(x[i], full[row, s.max_len - T:])  # "pre" padding
    assert len(shapes) > 2 and max(shapes) < s.max_len


def test_bucketer_bounds_how_far_a_batch_runs_ahead():
    from embcache.cache.stream import Bucketer

    b = Bucketer(np.array([8, 16]), batch_size=4, padding="post", dim=2, dtype=np.float16,
                 max_wait=5)
    lengths = np.array([9, 1, 1, 1, 1, 1, 1, 1, 1, 1], np.int32)  # one long document, then short
    docs = np.empty(len(lengths), dtype=object)
    for i, n in enumerate(lengths):
        docs[i] = np.full((n, 2), i + 1, np.float16)
    labels = np.arange(10, dtype=np.int32)
    # Blocks of 6 and 4 documents: the wait is checked after each block.
    out = list(b.add(docs[:6], lengths[:6], labels[:6])) + list(b.add(docs[6:], lengths[6:], labels[6:]))
    seqs = [batch[3].tolist() for batch in out]
    assert seqs == [[1, 2, 3, 4], [0], [5, 6, 7, 8]]  # the long one leaves once 5 more came
    x, n, y, _ = out[1]
    assert x.shape == (1, 16, 2) and (x[0, :9] == 1).all() and (x[0, 9:] == 0).all()  # "post"
    assert n.tolist() == [9] and y.tolist() == [0]
    x = out[0][0]
    assert x.shape == (4, 8, 2) and (x[:, 0, 0] == [2, 3, 4, 5]).all() and (x[:, 1:] == 0).all()
    rest = list(b.flush())
    assert [r[3].tolist() for r in rest] == [[9]]


def batches_of(ds):
    return [(f["embedded"].numpy().tobytes(), f["lengths"].numpy().tolist(), y.numpy().tolist())
            for f, y in ds]


@pytest.mark.slow
def test_producer_process_gives_the_in_process_batches(store):
    """The spawned producer yields exactly the seeded in-process batches, epoch after epoch, and
    a pass abandoned half-way does not leak into the next."""
    s = open_store(str(store))
    args = dict(split="train", batch_size=8, shuffle=True, seed=5, shuffle_docs=16)
    here = stream(s, in_process=True, **args)
    there = stream(s, in_process=False, **args)
    want = [batches_of(here), batches_of(here)]
    assert want[0] != want[1]  # a new order each epoch
    assert batches_of(there) == want[0]
    assert len(batches_of(there.take(2))) == 2  # epoch 1, abandoned after two batches
    assert batches_of(there) == batches_of(here)  # epoch 2, whole
    val = dict(split="val", batch_size=4)
    assert batches_of(stream(s, in_process=False, **val)) == \
        batches_of(stream(s, in_process=True, **val))


def test_producer_reports_a_broken_store_and_stops_with_its_owner(store, tmp_path):
    import gc
    import shutil

    from embcache.cache.producer import Producer

    broken = tmp_path / "broken.zarr"
    shutil.copytree(store, broken)
    chunk = next(p for p in (broken / "tokens").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"not zstd")
    s = open_store(str(broken))
    producer = Producer(s, plan_split(s, "train"), "train", seed=0, batch_size=8, shuffle=False,
                        shuffle_docs=16, with_labels=True, parallel_reads=2, max_wait=None)
    # the store is sharded: the garbage is a whole shard, its index damaged
    with pytest.raises(StoreError, match=f"Store {broken} is damaged: inner chunk .* of shard "
                                         "tokens/c/.*the shard's index is damaged"):
        list(producer.batches(0))
    process = producer.process
    assert process.is_alive()
    del producer
    gc.collect()
    process.join(timeout=10)
    assert not process.is_alive()


@pytest.mark.slow
def test_train_never_replaces_a_run_unasked_and_a_killed_run_loses_nothing(store, tmp_path):
    import os
    import signal
    import sys

    from embcache.jobs.runs import read_card

    out = tmp_path / "run"
    args = ["train", "--store", str(store), "--model", "fasttext", "--out", str(out), "-q"]
    assert CliRunner().invoke(main, args + ["--epochs", "1"]).exit_code == 0
    card = read_card(out)
    r = CliRunner().invoke(main, args + ["--epochs", "1"])
    assert (r.exit_code, r.output.strip()) == (1, f"Error: Run folder {out} already holds a trained "
                                                  "model; pass --overwrite to replace it, or choose "
                                                  "another --out")
    # kill -9 in the middle of an --overwrite run: the previous run is still whole.
    stage = tmp_path / ".run.partial"
    # Killed at the end of its first epoch (it waits there: embcache.cache.hooks).
    proc, _flag = paused([sys.executable, "-m", "embcache.jobs.cli", *args, "--epochs", "3",
                          "--overwrite"], "train:epoch-end", tmp_path)
    assert (stage / "history.csv").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_card(out) == card  # verified against its model file, unchanged
    r = CliRunner().invoke(main, args + ["--epochs", "1", "--overwrite", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert read_card(out)["training"]["seed"] == 3 and not stage.exists()


def test_a_second_train_into_the_same_folder_is_refused(store, tmp_path):
    from embcache.cache.locks import exclusive

    out = tmp_path / "run"
    with exclusive(out, "held by this test"):
        r = CliRunner().invoke(main, ["train", "--store", str(store), "--model", "fasttext",
                                      "--out", str(out), "-q", "--epochs", "1"])
    assert (r.exit_code, r.output.strip()) == (1, (
        f"Error: Run folder {out} is being written by another process right now (it holds "
        f"{tmp_path / '.run.lock'}); wait for it to finish, or write elsewhere"))
    assert not out.exists()


@pytest.mark.slow
def test_tensorflow_stays_quiet_unless_verbose(store, tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    base = [sys.executable, "-m", "embcache.jobs.cli", "train", "--store", str(store), "--model",
            "fasttext", "--epochs", "1", "-q"]
    quiet = subprocess.run(base + ["--out", str(tmp_path / "a")], capture_output=True, text=True,
                           env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout.startswith("Trained fasttext")
    loud = subprocess.run(base + ["--out", str(tmp_path / "b"), "--verbose"], capture_output=True,
                          text=True, env=env)
    assert loud.returncode == 0 and "I0000" in loud.stderr  # TensorFlow's own start-up logs
