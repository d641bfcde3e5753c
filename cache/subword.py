"""Static subword tables as a store's vectors: one vector per subword token, tokenized by Hugging
Face ``tokenizers`` (Rust, batched), no transformer at inference.

Three layouts are read, each computing a token's vector the way its own library does:

- **model2vec** (a folder: ``config.json``, ``model.safetensors`` with ``embeddings`` and optional
  ``mapping``/``weights``, ``tokenizer.json``): model2vec's ``StaticModel.encode_as_sequence``:
  tokens without special tokens, the tokenizer's unknown token *dropped*, row
  ``embeddings[mapping[id]] * weights[id]`` (an int8 or float16 table is cast to float32 first);
- **static-embedding** (sentence-transformers' ``StaticEmbedding`` module: ``embedding.weight``
  and ``tokenizer.json``, in the folder or its ``0_StaticEmbedding/``): tokens without special
  tokens, row ``embedding.weight[id]``, unknown tokens kept (they have a row);
- **table** (``--vectors TABLE.safetensors --tokenizer TOKENIZER.json``, as WordLlama ships them):
  the same as static-embedding (one tensor, ``embedding.weight`` or the file's only tensor).

In every layout the tokenizer's own truncation and padding are switched off: ``max_len`` and
``truncating`` decide what is kept, as for word vectors.

The first use of a table writes a cache entry (``<cache_dir>/subword/<key>/``), keyed by the
sha256 of the table and tokenizer files (memoised by path, size and mtime as for word vectors):
``vectors.f32`` (one float32 row per token id, ``mapping`` and ``weights`` applied), a copy of
``tokenizer.json`` and ``meta.json``. Workers memory-map it. The *fingerprint* covers the rows'
values, the tokenizer file's sha256, the dropped id and the layout: a store and a model card
record it, so scoring raw text with another table or tokenizer is refused.

Memory: the table once (``vocab x dim x 4`` bytes, memory-mapped and shared by the page cache),
plus one block's token ids and vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embcache.cache.errors import VectorsError
from embcache.cache.vectors import content_key, default_cache_dir

TOKENIZER_NAME = "huggingface-tokenizers"  # TokenizerSettings.name of a subword store


@dataclass(frozen=True)
class SubwordRef:
    """What a worker needs (picklable): the cache entry holding the prepared table."""

    entry: str


def is_subword(path: str | os.PathLike, tokenizer: str | None = None) -> bool:
    """Whether ``--vectors`` names a static subword table (a folder or a ``.safetensors``)."""
    p = Path(path)
    return tokenizer is not None or p.is_dir() or p.suffix == ".safetensors"


def _find_layout(path: Path, tokenizer: str | None) -> tuple[str, Path, Path, str]:
    """``(layout, table file, tokenizer file, tensor name)`` of ``--vectors``/``--tokenizer``."""
    if path.is_dir():
        if tokenizer is not None:
            raise VectorsError(f"`tokenizer=` is for a table file; the folder {path} has its own "
                               "tokenizer.json")
        for folder in (path, path / "0_StaticEmbedding"):
            table, tok = folder / "model.safetensors", folder / "tokenizer.json"
            if table.is_file() and tok.is_file():
                names = _tensor_names(table)
                if "embeddings" in names:
                    return "model2vec", table, tok, "embeddings"
                if "embedding.weight" in names:
                    return "static-embedding", table, tok, "embedding.weight"
                raise VectorsError(f"{table} holds neither `embeddings` (model2vec) nor "
                                   f"`embedding.weight` (StaticEmbedding): {', '.join(names[:6])}")
        raise VectorsError(f"Vectors folder {path} is not a static subword model: expected "
                           "model.safetensors and tokenizer.json in it (model2vec) or in "
                           "0_StaticEmbedding/ (sentence-transformers)")
    if not path.is_file():
        raise VectorsError(f"Vectors file not found: {path}")
    if tokenizer is None:
        raise VectorsError(f"{path} is a table without its tokenizer: pass `tokenizer=` "
                           "TOKENIZER.json (the Hugging Face tokenizers file it was made with)")
    tok = Path(tokenizer)
    if not tok.is_file():
        raise VectorsError(f"Tokenizer file not found: {tok} (for `tokenizer=`)")
    names = _tensor_names(path)
    name = "embedding.weight" if "embedding.weight" in names else (
        names[0] if len(names) == 1 else None)
    if name is None:
        raise VectorsError(f"{path} holds {len(names)} tensors and none is `embedding.weight`: "
                           f"{', '.join(names[:6])}")
    return "table", path, tok, name


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own kinds for a bad file
        raise VectorsError(f"{path} is not a readable safetensors file ({e})") from None


def _tensors(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {n: f.get_tensor(n) for n in names if n in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise VectorsError(f"{path} is not a readable safetensors file ({e})") from None


def load_tokenizer(path: str | os.PathLike, where: str):
    """A ``tokenizers.Tokenizer`` with its own truncation and padding switched off."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the Rust side raises plain Exceptions
        raise VectorsError(f"{where}: {path} is not a Hugging Face tokenizers file "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def unknown_id(tok) -> int | None:
    """The id of the tokenizer's unknown token, as model2vec finds it (``None``: none)."""
    unk = getattr(tok.model, "unk_token", None)
    if unk is not None:
        found = tok.token_to_id(unk)
        return None if found is None else int(found)
    unk_id = json.loads(tok.to_str())["model"].get("unk_id")
    return None if unk_id is None else int(unk_id)


def load_subword(path: str | os.PathLike, tokenizer: str | None = None, *,
                 cache_dir: str | os.PathLike | None = None) -> SubwordTable:
    """Prepare (first use) or map (later) a static subword table; see the module docstring.

    Raises:
        VectorsError: missing or malformed files, a tokenizer whose ids do not fit the table.
    """
    path = Path(path)
    layout, table_file, tok_file, tensor = _find_layout(path, tokenizer)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(f"{layout}|{content_key(table_file, None, root)}|"
                         f"{content_key(tok_file, None, root)}".encode()).hexdigest()
    entry = root / "subword" / key
    if not (entry / "meta.json").is_file():
        _build_entry(layout, table_file, tok_file, tensor, entry, source=str(path))
    return SubwordTable(entry)


def _build_entry(layout: str, table_file: Path, tok_file: Path, tensor: str, entry: Path,
                 source: str) -> None:
    tok = load_tokenizer(tok_file, f"Tokenizer for {source}")
    t = _tensors(table_file, (tensor, "mapping", "weights") if layout == "model2vec" else (tensor,))
    emb = t[tensor]
    if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
        raise VectorsError(f"{table_file}: `{tensor}` has shape {emb.shape}; expected "
                           "(tokens, dim)")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = np.arange(vocab)
    mapping, weights = t.get("mapping"), t.get("weights")
    rows_of = ids if mapping is None else np.asarray(mapping, dtype=np.int64).reshape(-1)
    if len(rows_of) < vocab or rows_of[:vocab].max(initial=0) >= emb.shape[0] \
            or rows_of[:vocab].min(initial=0) < 0:
        have = f"{emb.shape[0]:,} rows" if mapping is None else f"a mapping of {len(rows_of):,} ids"
        raise VectorsError(f"Tokenizer {tok_file} has {vocab:,} token ids but the table {table_file} "
                           f"has {have}: they do not belong together")
    vectors = np.asarray(emb, dtype=np.float32)[rows_of[:vocab]]
    if weights is not None:
        vectors = vectors * np.asarray(weights, dtype=np.float32).reshape(-1)[:vocab, None]
    if not np.isfinite(vectors).all():
        raise VectorsError(f"{table_file}: the table holds nan or inf")
    drop = unknown_id(tok) if layout == "model2vec" else None
    tok_sha = hashlib.sha256(tok_file.read_bytes()).hexdigest()
    body = np.ascontiguousarray(vectors, dtype="<f4")
    fp = hashlib.sha256(f"{layout}|dim={body.shape[1]}|tokenizer={tok_sha}|drop={drop}|".encode()
                        + hashlib.sha256(body.tobytes()).digest()).hexdigest()
    meta = {"layout": layout, "rows": int(body.shape[0]), "dim": int(body.shape[1]),
            "fingerprint": fp, "tokenizer_sha256": tok_sha, "dropped_id": drop,
            "source": os.path.basename(source.rstrip("/")), "table": table_file.name,
            "tokenizer": tok_file.name, "dtype_in_file": str(emb.dtype),
            "mapping": mapping is not None, "weights": weights is not None}
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        body.tofile(tmp / "vectors.f32")
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, entry)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (entry / "meta.json").is_file():  # another process finished the same entry first
            return
        raise VectorsError(f"Cannot write the vectors cache under {entry.parent} ({e.strerror}); "
                           "point `cache_dir=` or EMBCACHE_CACHE_DIR at a writable folder") from None


class SubwordTable:
    """A prepared table (memory-mapped rows) and its tokenizer."""

    def __init__(self, entry: str | os.PathLike):
        self.entry = Path(entry)
        self.meta = json.loads((self.entry / "meta.json").read_text())
        self.vectors = np.memmap(self.entry / "vectors.f32", dtype=np.float32, mode="r",
                                 shape=(self.meta["rows"], self.meta["dim"]))
        self.tokenizer = load_tokenizer(self.entry / "tokenizer.json", "Vectors cache")
        self._unk = unknown_id(self.tokenizer)

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def ref(self) -> SubwordRef:
        return SubwordRef(str(self.entry))

    def describe(self) -> dict[str, Any]:
        """The store's ``vectors`` attribute (:class:`embcache.cache.meta.VectorsInfo`)."""
        return {"fingerprint": self.fingerprint, "dim": self.dim, "vocab_size": self.meta["rows"],
                "duplicates": 0, "source": self.meta["source"]}

    def identity(self) -> dict[str, Any]:
        """The store's ``subword`` attribute: what decides the vectors, and where they came from."""
        m = self.meta
        return {"layout": m["layout"], "source": m["source"], "table": m["table"],
                "tokenizer": m["tokenizer"], "tokenizer_sha256": m["tokenizer_sha256"],
                "dropped_id": m["dropped_id"], "special_tokens": "none added",
                "mapping": m["mapping"], "weights": m["weights"],
                "dtype_in_file": m["dtype_in_file"], "fingerprint": m["fingerprint"]}

    def token_ids(self, texts: list[str]) -> tuple[list[np.ndarray], int, int]:
        """Each text's token ids (no special tokens; model2vec's unknown token dropped), before
        truncation; also the token count and the unknown tokens among them. One batched call
        into the Rust tokenizer (its own threads); Python runs per document, not per token."""
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        out = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        total = sum(map(len, out))
        unk = self._unk
        if unk is None:
            return out, total, 0
        unknown = sum(int(np.count_nonzero(r == unk)) for r in out)
        if unknown and self.meta["dropped_id"] is not None:
            out = [r[r != unk] for r in out]
        return out, total, unknown
