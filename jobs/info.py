"""The info job: a store's attributes, for people (``format_info``) and programs (JSON)."""

from __future__ import annotations

from typing import Any

from embcache.cache.locks import reading
from embcache.cache.precision import resolve_precision
from embcache.cache.store import bytes_on_disk, open_store, read_chunk_stats


def describe_store(url: str) -> dict[str, Any]:
    """All attributes of a store (complete or not) plus its size on disk and chunk progress."""
    with reading(url, while_written=True):
        store = open_store(url, require_complete=False)
        info = store.meta.to_attrs()
        stats = read_chunk_stats(store.group)
    from embcache.cache.integrity import is_checksummed

    info["checksummed"] = is_checksummed(store.array("tokens"))
    info["num_chunks"] = store.meta.num_chunks
    info["chunks_written"] = int((stats[:, 0] >= 0).sum())
    info["bytes_on_disk"] = bytes_on_disk(url)
    info["store"] = str(url)
    here = resolve_precision("auto")  # this machine's, not the store's: what jobs run in here
    info["precision_auto"] = {"name": here.name, "why": here.why}
    return info


def format_info(info: dict[str, Any]) -> str:
    """A short human-readable description."""
    labels = info.get("label_names")
    state = "complete" if info.get("complete") else (
        f"INCOMPLETE ({info['chunks_written']} of {info.get('num_chunks')} chunks written)")
    size = info.get("bytes_on_disk")
    lines = [
        f"store        {info['store']} ({state})",
        f"documents    {info['num_docs']:,} of up to {info['max_len']} tokens x {info['dim']} "
        f"{info['dtype']} (ragged: kept tokens only), {info['chunk_docs']} docs per chunk, "
        f"{info['num_chunks']} chunks",
        f"on disk      {size / 1e6:,.1f} MB" if size is not None else "on disk      (remote)",
        "objects      " + (f"sharded, {info['shard_blocks']} blocks per shard (one object per "
                           "array per shard)" if info.get("shard_blocks")
                           else "unsharded (one object per chunk per array)"),
    ]
    enc, sub = info.get("encoder"), info.get("subword")
    lines += _source_lines(info)
    if "num_tokens" in info:
        mean = info["kept_tokens"] / max(info["num_docs"], 1)
        unknown = "unknown-token rate" if enc or sub else "OOV rate"
        lines.append(f"tokens       {info['num_tokens']:,} ({unknown} {info['oov_rate']:.2%}), "
                     f"{info['kept_tokens']:,} kept after truncation ({mean:,.0f} per document, "
                     f"{mean / info['max_len']:.0%} of max_len)")
    counts = info.get("chunks")
    lexical = info.get("lexical")
    lines.append("token ids    " + (f"{lexical.get('ids')} (the lexical channel: tfidf, nb, wide models)"
                                    if lexical else "none (written before the lexical channel; "
                                    "models that read token_ids need a rebuild)"))
    lines.append("checksums    " + ("crc32c on every chunk (checked on every read)"
                                    if info.get("checksummed") else
                                    "none (an older store: only decoding errors are caught)")
                 + (f"; manifest of {sum(counts.values()):,} objects (a missing one is found when "
                    "the store is opened)" if counts else "; no manifest (run `embcache verify` "
                    "to find missing chunks)" if info.get("complete") else ""))
    if labels:
        shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
        lines.append(f"labels       {shown}")
    else:
        lines.append("labels       none (unlabelled corpus)")
    if "split_counts" in info:
        lines.append("split        " + ", ".join(f"{k} {v:,}" for k, v in info["split_counts"].items()))
    corpus = info.get("corpus", {})
    lines.append(f"corpus       {corpus.get('path')} ({corpus.get('format')})")
    if "created" in info:
        lines.append(f"created      {info['created']} by embcache {info.get('embcache_version')} "
                     f"in {info.get('seconds', 0):.1f} s")
    here = info.get("precision_auto")
    if here:
        lines.append(f"precision    jobs on this machine run {here['name']} at --precision auto "
                     f"({here['why'].removeprefix('auto: ')})")
    return "\n".join(lines)


def _source_lines(info: dict[str, Any]) -> list[str]:
    """What embedded the store: word vectors, a static subword table or an encoder."""
    vec, tok = info.get("vectors", {}), info.get("tokenizer", {})
    enc, sub = info.get("encoder"), info.get("subword")
    if sub:
        return [
            f"vectors      {vec.get('source')}: static subword table ({sub.get('layout')}) dim="
            f"{vec.get('dim')} vocab={vec.get('vocab_size', 0):,} "
            f"fingerprint={str(vec.get('fingerprint'))[:16]}",
            f"tokenizer    {sub.get('tokenizer')} (Hugging Face tokenizers) tokenizer.json "
            f"sha256={str(sub.get('tokenizer_sha256'))[:12]}, no special tokens added"
            + (", unknown token dropped" if sub.get("dropped_id") is not None else ""),
            f"sequences    padding={info.get('padding')} truncating={info.get('truncating')}",
        ]
    if enc:
        t, sp = enc.get("tokenizer", {}), enc.get("special_tokens", {})
        return [
            f"encoder      {enc.get('source')} ({enc.get('architecture')}, "
            f"{enc.get('config', {}).get('num_layers', '?')} layers, hidden {vec.get('dim')}, "
            f"encoded in {enc.get('precision', 'float32')}) "
            f"fingerprint={str(vec.get('fingerprint'))[:16]} weights sha256="
            f"{str(enc.get('weights_sha256'))[:12]}",
            f"tokenizer    {t.get('class')} lowercase={t.get('lowercase')} vocab="
            f"{vec.get('vocab_size', 0):,} ({sp.get('start')} and {sp.get('end')} kept)",
            f"sequences    padding={info.get('padding')} truncating={info.get('truncating')}",
        ]
    return [
        f"vectors      {vec.get('source')} dim={vec.get('dim')} vocab="
        f"{vec.get('vocab_size', 0):,} fingerprint={str(vec.get('fingerprint'))[:16]}",
        f"tokenizer    {tok.get('name')} lower={tok.get('lower')} split={tok.get('split')!r}",
        f"sequences    padding={info.get('padding')} truncating={info.get('truncating')} "
        f"oov={info.get('oov', {}).get('policy')}",
    ]
