"""A user's file, checked by mypy in ``make test`` (not run): every public name resolves through
the editable install, as an IDE resolves it, and calls with the documented types check clean."""

from __future__ import annotations

from pathlib import Path

import embcache
from embcache.cache.store import open_store
from embcache.models import inputs, register

store: embcache.Store = open_store("news20.zarr")
meta: embcache.StoreMeta = store.meta
dim: int = store.dim
labels: list[str] = store.label_names or []
ds = embcache.dataset(store, "train", batch_size=64, length_buckets=True)

summary: embcache.EmbedSummary = embcache.embed_corpus(
    embcache.CorpusSpec("ag_news.csv", text_columns=[1, 2], label_column=0), "glove.txt.gz",
    "ag_news.zarr", settings=embcache.EmbedSettings(max_len=200),
    split=embcache.SplitSettings(val_frac=0.1, test_frac=0.1))
config = embcache.TrainConfig(epochs=2, batch_size=16)
one = embcache.train("news20.zarr", "fasttext", "runs/fasttext", config=config)
group = embcache.train("news20.zarr", ["fasttext", "kim_cnn"], "runs", config={"epochs": 1})
result: embcache.GroupResult = group  # a list, even of one, is a group
lone: embcache.GroupResult = embcache.train("news20.zarr", ["fasttext"], "runs")
table = group.to_frame()
epochs = embcache.train("news20.zarr", embcache.models.build, "runs/b").history
run: embcache.Run = embcache.load_run("runs/fasttext")
probs = scorer_probs = embcache.Scorer(["runs/fasttext"]).classify(["a"], probabilities=True)
embcache.quiet_tensorflow()
scored: embcache.ScoreSummary = embcache.score(["runs/fasttext"], "news20.zarr", "p.csv",
                                               split="test")
scorer = embcache.Scorer(["runs/fasttext"], vectors="glove.txt.gz")
# Batch scoring on Dask.
on_dask: embcache.ScoreSummary = embcache.score(["runs/fasttext"], "news20.zarr", "p.csv",
                                                scheduler="local:2", part_docs=8192)
written: embcache.ScoreSummary = scorer.write("news20.zarr", "p.parquet", scheduler="local:2")
# The lexical channel and ensembles across representations.
lexical = embcache.dataset(store, "train", token_ids=True)
across = embcache.Scorer(["runs/tfidf", "runs/kim_cnn-wordllama"], ensemble="fit",
                         vectors=["glove.txt.gz", "l2_supercat_256.safetensors"],
                         stores=["news20-wordllama.zarr"])
fitted = across.fit("runs/ensemble", store="news20.zarr")
chosen: str = fitted.chosen
fitted_summary: embcache.ScoreSummary = embcache.score(
    ["runs/tfidf", "runs/kim_cnn"], "news20.zarr", "p.csv", split="test", ensemble="fit",
    ensemble_out="runs/ensemble", stores=["news20.zarr"])
report: embcache.VerifyReport = embcache.verify("news20.zarr")
from_path: embcache.VerifyReport = embcache.verify(Path("news20.zarr"))  # paths as Path objects
path_run = embcache.train(Path("news20.zarr"), "fasttext", Path("runs/fasttext"))
frame = embcache.predict("runs/fasttext", Path("news20.zarr"))
frame_rows: int = len(frame)
ok: bool = report.ok
study = embcache.tune("news20.zarr", "kim_cnn,fasttext", ["dropout=float:0:0.5"], trials=4,
                      parallel=2, out=Path("runs/tune"))
try:
    embcache.open_store("missing.zarr")
except embcache.StoreError as e:
    message: str = str(e)
version: str = embcache.__version__


@register("tiny")
def tiny(*, dim: int, num_classes: int, units: int = 8):
    return inputs(dim)


@register("tiny_lexical")
def tiny_lexical(*, dim: int, num_classes: int):
    return inputs(dim, token_ids=True)
