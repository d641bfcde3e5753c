"""Scale-out: Dask clusters, stores on memory:// and S3 (a local moto server), multi-worker training."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr

from embcache.cache.corpus import CorpusSpec
from embcache.cache.settings import EmbedSettings
from embcache.cache.store import open_store
from embcache.jobs.config import TrainConfig
from embcache.jobs.embed_corpus import SplitSettings, embed_corpus
from embcache.jobs.score import score
from embcache.jobs.train import train
from tests.helpers import make_folder_corpus

SETTINGS = EmbedSettings(max_len=160)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale") / "corpus"
    make_folder_corpus(root, docs_per_label=60, labels=("a", "b", "c"))
    return root


def read_all(url):
    g = zarr.open_group(str(url), mode="r")
    attrs = {k: v for k, v in g.attrs.items() if k not in ("created", "seconds")}
    return {name: g[name][:] for name in g.array_keys()}, attrs


def assert_same_store(a, b):
    (arrays_a, attrs_a), (arrays_b, attrs_b) = read_all(a), read_all(b)
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    assert attrs_a == attrs_b


@pytest.mark.slow
def test_dask_local_cluster_writes_the_single_process_store(tmp_path, corpus, vectors_file):
    single, dask = tmp_path / "single.zarr", tmp_path / "dask.zarr"
    common = dict(chunk_docs=16, progress=False, settings=SETTINGS)
    embed_corpus(CorpusSpec(str(corpus)), str(vectors_file[0]), str(single), workers=1, **common)
    embed_corpus(CorpusSpec(str(corpus)), str(vectors_file[0]), str(dask), scheduler="local:2",
                 **common)
    assert_same_store(single, dask)


@pytest.mark.slow
def test_memory_store_embeds_trains_and_scores(tmp_path, corpus, vectors_file):
    url = "memory://embcache-test/s.zarr"
    embed_corpus(CorpusSpec(str(corpus)), str(vectors_file[0]), url, chunk_docs=16, workers=2,
                 progress=False, settings=SETTINGS, split=SplitSettings(val_frac=0.2, test_frac=0.2))
    assert open_store(url).num_docs == 180
    train(url, "fasttext", str(tmp_path / "run"), config=TrainConfig(epochs=1), progress=False)
    summary = score([str(tmp_path / "run")], url, str(tmp_path / "p.csv"), split="test",
                    progress=False)
    assert summary.docs == int((open_store(url).array("split")[:] == 2).sum())


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are chosen (asking for one
    port at a time, released in between, can give the same port twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible endpoint on localhost (moto's server), credentials via environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="embcache")
    yield "s3://embcache"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_s3_store_embeds_trains_and_scores(tmp_path, corpus, vectors_file, s3):
    url = f"{s3}/news.zarr"
    local = tmp_path / "local.zarr"
    for out in (url, str(local)):
        # workers=2 forces spawned processes: they must reach S3 with the same environment.
        embed_corpus(CorpusSpec(str(corpus)), str(vectors_file[0]), out, chunk_docs=16, workers=2,
                     progress=False, settings=SETTINGS, split=SplitSettings(val_frac=0.2, test_frac=0.2))
    assert_same_store(url, local)
    train(url, "fasttext", str(tmp_path / "run"), config=TrainConfig(epochs=1), progress=False)
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["store_url"] == url
    summary = score([str(tmp_path / "run")], url, str(tmp_path / "p.csv"), split="val",
                    progress=False)
    assert summary.docs == card["training"]["val_docs"]


@pytest.mark.slow
def test_multi_worker_training_reads_disjoint_chunks(tmp_path, corpus, vectors_file):
    store = tmp_path / "s.zarr"
    embed_corpus(CorpusSpec(str(corpus)), str(vectors_file[0]), str(store), chunk_docs=8, workers=1,
                 progress=False, settings=SETTINGS, split=SplitSettings(val_frac=0.2, test_frac=0.2))
    ports = free_ports(2)
    run = tmp_path / "run"
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "embcache.jobs.cli", "train", "--store", str(store), "--model", "fasttext",
             "--out", str(run), "--epochs", "1", "--batch-size", "8", "--strategy", "multi-worker",
             "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    shards = [json.loads((run / "shards" / f"worker-{i}.json").read_text()) for i in range(2)]
    s = open_store(str(store))
    from embcache.cache.stream import plan_split

    train_chunks = set(plan_split(s, "train").chunks.tolist())
    given = [set(sh["train_chunks"]) for sh in shards]
    assert given[0].isdisjoint(given[1]) and given[0] | given[1] == train_chunks
    assert abs(len(given[0]) - len(given[1])) <= 1
    for sh, mine in zip(shards, given):
        assert sh["chunks_read"] and set(sh["chunks_read"]) <= mine
    assert not (run / ".worker-1").exists()
    summary = score([str(run)], str(store), str(tmp_path / "p.csv"), split="test", progress=False)
    assert summary.docs > 0
    # One training path: the multi-worker card has every field a single-process card has.
    single = tmp_path / "single"
    train(str(store), "fasttext", str(single), config=TrainConfig(epochs=1, batch_size=8))
    multi_card, single_card = (json.loads((r / "model.json").read_text()) for r in (run, single))
    assert set(multi_card) == set(single_card)
    for key in ("training", "metrics", "store", "model_source"):
        assert set(multi_card[key]) == set(single_card[key]), key
    for key in ("model", "hyperparameters", "hyperparameters_given", "store", "model_source"):
        assert multi_card[key] == single_card[key], key
    assert (multi_card["training"]["strategy"], single_card["training"]["strategy"]) == (
        "multi-worker", "default")
    assert 0 <= multi_card["metrics"]["test_accuracy"] <= 1
    for name in ("history.csv", "curves.png", "logs"):
        assert (run / name).exists() and (single / name).exists(), name
