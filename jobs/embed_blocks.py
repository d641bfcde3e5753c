"""embed-corpus's writing loop: the blocks left to write, grouped into tasks (one block, or a
sharded store's whole shard group), run in this process or on an executor, with progress.

Memory: at most ``2 * pool.parallel`` tasks are queued (one in-process); the corpus streams
through and is never held whole.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait

from embcache.cache.corpus import CorpusSpec, Document, iter_documents, label_mapper
from embcache.cache.embed import BlockWriter
from embcache.cache.errors import CorpusError
from embcache.cache.hooks import pause_point
from embcache.cache.layout import assign_split
from embcache.cache.sources import EmbeddingSource
from embcache.cache.writer import StoreWriter
from embcache.jobs.executors import Executor


def _blocks(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    block: list[Document] = []
    for doc in docs:
        block.append(doc)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _tasks(corpus: CorpusSpec, store: StoreWriter, scan, on_skipped
           ) -> Iterator[tuple[int, list, int]]:
    """The tasks left to run, as ``(first block, its blocks' inputs, documents)``: one block, or
    a sharded store's whole shard group (one writer per shard). Tasks an earlier run committed
    are skipped (``on_skipped(documents)``)."""
    chunk, done, split = store.meta.chunk_docs, store.done, store.meta.split
    to_label = label_mapper(corpus, scan.label_names) if scan.label_names else None
    per_task = store.meta.shard_blocks or 1
    blocks: list = []
    skip, docs, first, seen = False, 0, 0, 0
    for index, block in enumerate(_blocks(iter_documents(corpus), chunk)):
        seen += len(block)
        if index >= len(done):
            raise CorpusError(f"Corpus {corpus.path} changed while it was being read")
        if index % per_task == 0:  # a new task; skipped when an earlier run committed it
            first, skip = index, bool(done[index:index + per_task].all())
        if skip:
            on_skipped(len(block))
            continue
        ids = [d.doc_id for d in block]
        labels = [to_label(d.label) for d in block] if to_label else None
        blocks.append(([d.text for d in block], ids, labels,
                       assign_split(ids, split.val_frac, split.test_frac, split.seed)))
        docs += len(block)
        if index % per_task == per_task - 1 or index == len(done) - 1:  # the task is whole
            yield first, blocks, docs
            blocks, docs = [], 0
    if seen != scan.num_docs:
        raise CorpusError(f"Corpus {corpus.path} changed while it was being read "
                          f"({scan.num_docs} documents counted, {seen} read)")


def write_blocks(corpus: CorpusSpec, store: StoreWriter, scan, source: EmbeddingSource,
                  pool: Executor | None, progress: bool) -> None:
    """Embed and write every block not yet committed, in this process or on ``pool``.

    Memory: at most ``2 * pool.parallel`` tasks are queued (one in-process), each one block's
    texts or, in a sharded store, one shard group's (``shard_blocks`` blocks)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=scan.num_docs, unit="doc", disable=not progress, file=sys.stderr,
               desc="embed-corpus", dynamic_ncols=True)
    writer = BlockWriter(source) if pool is None else None
    pending: dict[Future, int] = {}
    t0, kept = time.perf_counter(), 0

    def done_task(stats, n: int) -> None:  # progress: documents/s (the bar) and tokens/s
        nonlocal kept
        kept += int(stats[:, 3].sum())
        bar.update(n)
        bar.set_postfix_str(f"{kept / max(time.perf_counter() - t0, 1e-9):,.0f} tokens/s",
                            refresh=False)
        pause_point("embed:block-committed")

    try:
        for first, blocks, docs in _tasks(corpus, store, scan, bar.update):
            if pool is None:  # this process embeds
                assert writer is not None
                done_task(writer.write_blocks(store.url, first, blocks), docs)
                continue
            pending[pool.submit(store.url, first, blocks)] = docs
            if len(pending) >= 2 * pool.parallel:  # bounded: at most 2 tasks queued per worker
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done_task(f.result(), pending.pop(f))
        for f in list(pending):
            done_task(f.result(), pending.pop(f))
    finally:
        bar.close()
