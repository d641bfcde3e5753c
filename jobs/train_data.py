"""What training reads: the store checked for training and its split plans, the splits held in
memory while they fit the budget (``--memory-mb``) or streamed, and the lexical layers' document
frequencies counted once per group. Shared by ``train``, multi-worker training and ``tune``."""

from __future__ import annotations

import sys
import time

from embcache.cache.dataset import streamed_dataset
from embcache.cache.errors import StoreError
from embcache.cache.held_dataset import memory_dataset
from embcache.cache.store import open_store
from embcache.cache.stream import plan_split
from embcache.jobs.config import TrainConfig


def open_for_training(store_url: str) -> tuple:
    """The store, checked for training (complete, labelled, two classes or more, train and val
    documents), and its split plans: what both training paths start from.

    Raises:
        StoreError: any of those checks, in one line.
    """
    store = open_store(store_url, require_complete=True, require_labels=True)
    names = store.label_names or []
    if len(names) < 2:
        raise StoreError(f"Store {store_url} has a single class ({names[0]!r}): a "
                         "classifier needs at least two; embed a corpus with two or more labels")
    plans = {s: plan_split(store, s) for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if plans[s].num_docs == 0:
            raise StoreError(f"Store {store_url} has no {s} documents; rebuild it with "
                             "`val_frac=`/`test_frac=` above 0")
    return store, plans


def _in_memory(store, plans: dict, config: TrainConfig, progress: bool) -> dict:
    """The train and val splits decoded into memory while they fit ``config.memory_mb``
    (train first: it is read every epoch); the rest streams from the store. Sizes come from
    the plans (no second scan of the split)."""
    from embcache.cache.held import memory_bytes
    from embcache.cache.held_dataset import hold_split

    left, out = config.memory_mb << 20, {}
    for split in ("train", "val"):
        if 0 < memory_bytes(store, plans[split]) <= left:
            t = time.perf_counter()
            out[split] = hold_split(store, plans[split], split)
            left -= out[split].nbytes
            if progress:
                print(f"{split} split decoded into memory: {out[split].nbytes / 1e6:,.1f} MB in "
                      f"{time.perf_counter() - t:.1f} s (memory budget {config.memory_mb:,} MB)",
                      file=sys.stderr)
    return out


def adapt_lexical(store, plan, models: list, progress: bool, counts: dict | None = None) -> None:
    """Set every lexical layer's kept features and idf (:class:`~embcache.models.layers.
    HashedTfidf`) from one counting pass over the train split per n-gram order, shared by the
    group's models (:func:`embcache.cache.lexical.count_split`), and fit each naive Bayes layer
    (:class:`~embcache.models.layers.HashedNaiveBayes`) from a second pass over its features
    (:func:`embcache.cache.lexical.class_sums`); ``counts`` keeps the passes for later calls
    (``embcache tune``'s trials)."""
    from embcache.cache.lexical import class_sums, count_split
    from embcache.models.layers import HashedNaiveBayes, HashedTfidf

    layers = [layer for model in models for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, HashedTfidf)]
    counts = {} if counts is None else counts
    for layer in layers:
        if layer.ngrams not in counts:
            t = time.perf_counter()
            counts[layer.ngrams] = count_split(store, plan, "train", layer.ngrams)
            if progress:
                print(f"document frequencies of {'unigrams and bigrams' if layer.ngrams > 1 else 'unigrams'}"
                      f" counted over {counts[layer.ngrams].num_docs:,} train documents in "
                      f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        kept = (layer.ngrams, layer.max_features, layer.min_df)  # the same for tfidf and nb
        if ("vocabulary", *kept) not in counts:
            counts[("vocabulary", *kept)] = counts[layer.ngrams].vocabulary(layer.max_features,
                                                                           layer.min_df)
        vocab, idf = counts[("vocabulary", *kept)]
        layer.adapt(vocab, idf)
        if isinstance(layer, HashedNaiveBayes):
            key = ("class sums", *kept)
            if key not in counts:
                t = time.perf_counter()
                counts[key] = class_sums(store, plan, "train", vocab, idf, layer.num_classes,
                                         layer.ngrams)
                if progress:
                    print(f"naive Bayes: {len(vocab):,} features' weights summed per class in "
                          f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
            layer.fit_counts(counts[key].sums, counts[key].docs)


def reads_ids(source, store) -> bool:
    """Whether ``source``'s model, built for ``store`` with its defaults, takes ``token_ids``
    (``embcache tune`` reads ids for every trial when one may). A builder that fails here fails
    again where it is built for real, which reports it."""
    from embcache.models.registry import takes_token_ids

    try:
        model = source.make(max_len=store.max_len, dim=store.dim,
                            num_classes=len(store.label_names or []), padding=store.padding)
    except Exception:  # noqa: BLE001 - reported where it is built for a run
        return False
    return takes_token_ids(model)


def group_streams(store, plans: dict, config: TrainConfig, progress: bool) -> tuple:
    """The train and val datasets a group shares (each split in memory while it fits
    ``config.memory_mb``), and the steps of a pass over each: ``(train_ds, val_ds, steps)``."""
    held = _in_memory(store, plans, config, progress)

    def pass_over(split: str):
        b = config.batching(train=split == "train")
        return (memory_dataset(held[split], b) if split in held
                else streamed_dataset(store, split, batching=b, plan=plans[split]))

    train_ds, val_ds = pass_over("train"), pass_over("val")
    steps = {s: plans[s].num_batches(config.batch_size, config.length_buckets,
                                     merge_tail=s == "train") for s in plans}
    return train_ds, val_ds, steps
