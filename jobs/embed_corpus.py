"""The embed-corpus job: tokenize a corpus once and write its embedded sequences to a store.

Memory is bounded by ``(workers * 2 + 1)`` tasks in flight, each one block of documents (a
sharded store's task: one shard group of ``shard_blocks`` blocks): the corpus streams through
(see :mod:`embcache.cache.corpus`) and is never held whole, and the vectors are memory-mapped
from the parse cache.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embcache.cache.corpus import CorpusSpec, scan_corpus
from embcache.cache.errors import (
    CorpusError,
    EmbcacheError,
    StoreError,
    StrPath,
    path_arg,
    renamed,
    settings_arg,
    writing,
)
from embcache.cache.layout import new_meta
from embcache.cache.locks import exclusive
from embcache.cache.meta import SplitSettings
from embcache.cache.precision import Precision, resolve_precision
from embcache.cache.settings import (
    ENCODER_BATCH,
    EmbedSettings,
    default_settings,
)
from embcache.cache.sources import EmbeddingSource, open_source
from embcache.cache.store import bytes_on_disk, is_local, open_store
from embcache.cache.writer import StoreWriter, check_target
from embcache.jobs.embed_blocks import write_blocks
from embcache.jobs.executors import block_executor, parse_scheduler

_POOL_MIN_BYTES = 2 << 20


@dataclass
class EmbedSummary:
    store: str
    docs: int
    tokens: int
    oov_tokens: int
    bytes_on_disk: int | None
    seconds: float
    resumed_chunks: int
    num_chunks: int
    repaired_chunks: int = 0
    kept: str = ""  # why a complete store was left as it is (`exist_ok`, or nothing to repair)

    @property
    def oov_rate(self) -> float:
        return self.oov_tokens / self.tokens if self.tokens else 0.0

    def line(self) -> str:
        if self.kept:
            return f"Store {self.store} ({self.docs:,} documents) {self.kept}"
        size = f"{self.bytes_on_disk / 1e6:,.1f} MB on disk" if self.bytes_on_disk is not None else ""
        resumed = (f", repaired {self.repaired_chunks} damaged of {self.num_chunks} chunks"
                   if self.repaired_chunks else
                   f", resumed {self.resumed_chunks} of {self.num_chunks} chunks"
                   if self.resumed_chunks else "")
        return (f"Embedded {self.docs:,} documents ({self.tokens:,} tokens, OOV rate "
                f"{self.oov_rate:.2%}) into {self.store}: {size}, {self.seconds:.1f} s{resumed}")


def validate_settings(split: SplitSettings, chunk_docs: int | None, workers: int,
                      shard_blocks: int | None = None) -> None:
    """The job's own arguments (an ``EmbedSettings`` checks its fields where it is made)."""
    def bad(name: str, expected: str, value) -> EmbcacheError:
        return EmbcacheError(f"Invalid value for `{name}`. Expected {expected}. "
                             f"Received: {name}={value!r}")

    for name in ("val_frac", "test_frac", "seed"):
        value = getattr(split, name)
        kinds = (int,) if name == "seed" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise bad(name, "an integer" if name == "seed" else "a fraction", value)
    if not (0 <= split.val_frac < 1 and 0 <= split.test_frac < 1
            and split.val_frac + split.test_frac < 1):
        raise bad("val_frac + test_frac", "fractions in [0, 1) summing below 1",
                  (split.val_frac, split.test_frac))
    if chunk_docs is not None and (isinstance(chunk_docs, bool) or not isinstance(chunk_docs, int)
                                   or chunk_docs < 1):
        raise bad("chunk_docs", "a positive integer", chunk_docs)
    if shard_blocks is not None and (isinstance(shard_blocks, bool)
                                     or not isinstance(shard_blocks, int) or shard_blocks < 0):
        raise bad("shard_blocks", "an integer >= 0 (0: unsharded)", shard_blocks)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise bad("workers", "a positive integer", workers)


def _corpus_identity(spec: CorpusSpec) -> dict:
    """What identifies the corpus input for resuming: its options and the file's size and mtime."""
    p = Path(spec.path)
    st = p.stat()
    return {**spec.to_dict(), "path": str(p.resolve()), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


@renamed(vectors_path="vectors")
def embed_corpus(  # noqa: PLR0913 - a job's options, one keyword each (as its command's)
    corpus: CorpusSpec | dict[str, Any] | StrPath, vectors: StrPath | None, out: StrPath, *,
    settings: EmbedSettings | dict[str, Any] | None = None, encoder: str | None = None,
    encoder_batch: int = ENCODER_BATCH, tokenizer: str | None = None,
    split: SplitSettings | dict[str, Any] = SplitSettings(), vectors_member: str | None = None,
    vectors_format: str = "auto", chunk_docs: int | None = None, workers: int | None = None,
    overwrite: bool = False, repair: bool = False, exist_ok: bool = False, progress: bool = False,
    cache_dir: StrPath | None = None, scheduler: str | None = None,
    source: EmbeddingSource | None = None, precision: str = "auto",
    shard_blocks: int | None = None) -> EmbedSummary:
    """Embed ``corpus`` (a :class:`CorpusSpec`, or a path read with its format's defaults)
    into the store ``out`` with ``vectors``: a word-vectors file (GloVe, word2vec,
    fastText) or a static subword table (:mod:`embcache.cache.subword`: a model2vec or
    ``StaticEmbedding`` folder, or a ``.safetensors`` table with its ``tokenizer.json``); or,
    with ``encoder`` and ``vectors=None``, a frozen transformer encoder's token vectors
    (:mod:`embcache.cache.encoder`; ``encoder_batch`` documents per forward pass); or with
    ``source`` alone, an :class:`~embcache.cache.sources.EmbeddingSource` already loaded.

    ``settings`` defaults to :class:`EmbedSettings` (for an encoder: ``max_len`` 256 of its own
    tokens, truncated at the end). ``out`` is a path or a URL (``memory://``, ``s3://``,
    ``gs://``, credentials from the usual environment). ``scheduler`` runs the blocks as Dask
    tasks (``local:N`` or an address); otherwise ``workers`` spawned processes run them. An
    incomplete store is resumed from its last completed chunk. A complete one is refused (its
    manifest checked, no chunk read), replaced with ``overwrite``, kept with ``exist_ok``, or
    with ``repair`` verified (every chunk read) and only its damaged blocks rewritten.
    ``precision`` (an encoder's forward pass): ``auto`` is bfloat16 where this machine runs it
    natively, else float32; the store records it, and scoring raw text re-encodes at it.
    ``shard_blocks``: blocks per shard (:mod:`embcache.cache.shards`; 0 writes one object per
    chunk); ``None`` keeps an existing store's (to resume or repair it), else
    :func:`~embcache.cache.layout.auto_shard_blocks` (8, fewer for a corpus of under 32 blocks).

    Raises:
        EmbcacheError (or a subclass): bad settings, vectors, corpus or output path."""
    t0 = time.perf_counter()
    vectors = None if vectors is None else path_arg(vectors, "vectors")
    running = resolve_precision(precision)  # checked before any work, used by an encoder only
    corpus, settings, split, workers, out = _checked_arguments(
        corpus, vectors, encoder, source, settings, split, chunk_docs, workers, out, scheduler,
        shard_blocks)
    with contextlib.ExitStack() as held:
        if is_local(out):  # one writer per store: a second embed-corpus fails here, at once
            held.enter_context(exclusive(out.removeprefix("file://"), f"Store {out}"))
        # Before the vectors load: a refusal reads no chunk and loads nothing.
        damaged = _before_loading(out, overwrite=overwrite, repair=repair, exist_ok=exist_ok,
                                  progress=progress)
        if isinstance(damaged, EmbedSummary):
            return damaged
        # The store being resumed or repaired: its precision and layout carry on (read once).
        existing = None if overwrite else _existing_attrs(out)
        if not isinstance(source, EmbeddingSource):
            if encoder is not None and precision == "auto":
                running = _store_precision(existing) or running
            if encoder is not None and progress:
                print(running.line(), file=sys.stderr)
            source = open_source(vectors, encoder=encoder, tokenizer=tokenizer, settings=settings,
                                 precision=running.name,
                                 encoder_batch=encoder_batch, vectors_member=vectors_member,
                                 vectors_format=vectors_format,
                                 cache_dir=None if cache_dir is None else path_arg(cache_dir, "cache_dir"))
        # Workers start (imports, vocabulary) while this process scans the corpus.
        pool = held.enter_context(block_executor(scheduler, workers, _use_pool(corpus, workers, out),
                                                 source))
        scan = scan_corpus(corpus)
        meta = new_meta(settings=source.settings, vectors=source.info, split=split,
                        corpus=_corpus_identity(corpus), label_names=scan.label_names,
                        num_docs=scan.num_docs, chunk_docs=chunk_docs, **source.record(),
                        lexical={"ids": source.ids_kind},
                        doc_ids="int" if scan.int_ids else "str",
                        shard_blocks=_shard_blocks(existing, shard_blocks))
        with writing(f"store {out}"):  # disk full, read-only: one line; the rerun resumes
            store = StoreWriter.open(out, meta, overwrite=overwrite, repair=damaged)
            write_blocks(corpus, store, scan, source, pool, progress)
            final = store.finish(time.perf_counter() - t0)
        totals = final.totals
        assert totals is not None  # finish() records them
        return EmbedSummary(store=out, docs=final.num_docs, tokens=totals.num_tokens,
                            oov_tokens=totals.oov_tokens, bytes_on_disk=bytes_on_disk(out),
                            seconds=totals.seconds, resumed_chunks=store.resumed,
                            num_chunks=final.num_chunks, repaired_chunks=store.repaired)


def _settings_from_dict(given: dict, encoder: bool) -> EmbedSettings:
    """``EmbedSettings`` from a dict of its fields (the encoder's defaults where it applies)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(EmbedSettings)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise EmbcacheError(f"Invalid value for `settings`: unknown field {unknown[0]!r}; the "
                            f"fields are {', '.join(sorted(fields))}")
    if isinstance(given.get("tokenizer"), dict):
        from embcache.cache.settings import TokenizerSettings

        given = {**given, "tokenizer": TokenizerSettings(**given["tokenizer"])}
    return default_settings(encoder, **given)


def _checked_arguments(corpus, vectors, encoder, source, settings, split, chunk_docs, workers,
                       out, scheduler, shard_blocks
                       ) -> tuple[CorpusSpec, EmbedSettings, SplitSettings, int, str]:
    """Every argument checked before anything is read or written; the defaults filled in."""
    if isinstance(corpus, (str, os.PathLike)):
        corpus = CorpusSpec(path_arg(corpus, "corpus"))
    corpus = settings_arg(CorpusSpec, corpus, "corpus")
    split = settings_arg(SplitSettings, split, "split")
    if source is not None:
        if vectors is not None or encoder is not None:
            raise EmbcacheError("Give `source=` alone, without `vectors=` or `encoder=`")
        encoder = source.kind == "encoder" or None
        settings = source.settings
    elif (vectors is None) == (encoder is None):
        raise EmbcacheError("Give either `vectors=` (word vectors or a static subword table) or "
                            "`encoder=` (a transformer encoder), not both and not neither")
    if settings is None:
        settings = default_settings(encoder is not None)
    elif isinstance(settings, dict):  # settings objects accept dicts, as train's config does
        settings = _settings_from_dict(settings, encoder is not None)
    elif not isinstance(settings, EmbedSettings):
        raise EmbcacheError("Invalid value for `settings`. Expected an EmbedSettings or a dict of "
                            f"its fields. Received: settings={settings!r}")
    # An encoder runs on all cores of one process: more processes would only compete for them.
    workers = workers or (1 if encoder else os.cpu_count() or 1)
    validate_settings(split, chunk_docs, workers, shard_blocks)
    out = path_arg(out, "out")
    parse_scheduler(scheduler)
    if scheduler and out.startswith("memory://"):
        raise StoreError(f"A memory:// store ({out}) cannot be written by Dask workers; use a path "
                         "or object storage (s3://, gs://)")
    if not Path(corpus.path).exists():
        raise CorpusError(f"Corpus not found: {corpus.path}")
    return corpus, settings, split, workers, out


def _existing_attrs(out: str) -> dict[str, Any] | None:
    """The attributes of an embcache store already at ``out`` (partial or damaged), else None."""
    import zarr

    try:
        attrs = dict(zarr.open_group(store=out, mode="r").attrs)
    except Exception:  # noqa: BLE001 - no store there yet: nothing recorded
        return None
    return attrs if "embcache_layout" in attrs else None


def _shard_blocks(attrs: dict[str, Any] | None, given: int | None) -> int | None:
    """Blocks per shard: as given; else an existing store's own (resume and repair continue
    the layout it was started with; stores from before sharding are unsharded); else ``None``,
    the default (:func:`~embcache.cache.layout.auto_shard_blocks`)."""
    if given is not None:
        return given
    if attrs is None:
        return None
    value = attrs.get("shard_blocks", 0)
    return value if isinstance(value, int) and value >= 0 else None


def _store_precision(attrs: dict[str, Any] | None) -> Precision | None:
    """The precision an existing (partial or damaged) encoder store was encoded at: ``auto``
    resumes and repairs at it, so that one store never mixes two (a run at another one is
    refused as other settings are)."""
    recorded = ((attrs or {}).get("encoder") or {})
    name = recorded.get("precision", "float32") if recorded else None
    if name not in ("float32", "bfloat16"):
        return None
    return Precision(name, "auto: the precision the store was encoded at")


def _use_pool(corpus: CorpusSpec, workers: int, out: str) -> bool:
    """Spawned workers, or this process: small corpora run here (spawning costs about a
    second), and a memory:// store lives in this process only (others cannot write into it)."""
    big = Path(corpus.path).is_dir() or Path(corpus.path).stat().st_size > _POOL_MIN_BYTES
    return workers > 1 and big and not out.startswith("memory://")


def _before_loading(out: str, *, overwrite: bool, repair: bool, exist_ok: bool,
                    progress: bool) -> list[int] | EmbedSummary | None:
    """What the store at ``out`` asks for, decided before anything loads: ``None`` (build it,
    resume it, or replace it on ``overwrite``), the damaged blocks to rewrite (``repair``), or
    the summary of a complete store left as it is.

    Only ``repair`` reads chunks (verify reads them all). A refusal, and ``exist_ok``, check the
    store's attributes and its manifest (one listing per array): on a large store in a bucket,
    an accidental rerun costs a listing, not a download.

    Raises:
        StoreError: a complete store without ``overwrite``, ``repair`` or ``exist_ok`` (or with
            a chunk its manifest counts missing); ``repair`` of a store that is not there.
    """
    if sum((overwrite, repair, exist_ok)) > 1:
        raise StoreError("Give at most one of `overwrite=True`, `repair=True` and `exist_ok=True`")
    state = check_target(out, overwrite, complete_ok=True)
    if repair and state == "missing":
        raise StoreError(f"Store {out} not found: nothing to repair (build it without "
                         "`repair=True`)")
    if state != "complete" or overwrite:
        return None
    if repair:
        return _damaged_blocks(out, progress) or _kept(out, "verified: every chunk is intact, "
                                                            "nothing to repair")
    # Attributes and manifest only: a missing chunk is a ChunkError naming it (and `repair`).
    open_store(out, check_chunks=True)
    if exist_ok:
        return _kept(out, "is already complete: left as it is")
    raise StoreError(f"Store {out} already exists and is complete; pass `overwrite=True` to "
                     "rebuild it, or `repair=True` to verify it and rewrite only damaged blocks")


def _kept(out: str, why: str) -> EmbedSummary:
    meta = open_store(out, check_chunks=False).meta
    tokens, oov = (meta.totals.num_tokens, meta.totals.oov_tokens) if meta.totals else (0, 0)
    return EmbedSummary(store=out, docs=meta.num_docs, tokens=tokens, oov_tokens=oov,
                        bytes_on_disk=None, seconds=0.0,
                        resumed_chunks=0, num_chunks=meta.num_chunks, kept=why)


def _damaged_blocks(out: str, progress: bool) -> list[int]:
    """The blocks of a complete store that verify (reading every chunk) finds damaged."""
    from embcache.jobs.verify import verify_unlocked

    report = verify_unlocked(out, progress=progress)
    if report.ok:
        return []
    if progress:
        for line in report.lines()[1:-1]:
            print(f"verify: {line.strip()}", file=sys.stderr)
        print(f"Repairing {len(report.blocks)} damaged blocks of {out}", file=sys.stderr)
    return report.blocks
