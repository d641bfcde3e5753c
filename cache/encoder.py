"""Frozen transformer encoders as a store's vectors: each document's last-layer token vectors
from a keras-hub text backbone and its own tokenizer, computed once.

An encoder is named by a path or a preset:

- a keras-hub preset folder, or a Hugging Face format folder keras-hub converts
  (``config.json`` + ``model.safetensors`` + the tokenizer's files). A sentence-transformers
  folder as distributed (``tokenizer.json``, no ``vocab.txt``) works as given: keras-hub's BERT
  tokenizer reads ``vocab.txt``, so embcache writes one from ``tokenizer.json``'s vocabulary,
  ordered by id, into a *shadow* of the folder under its cache directory (links to the user's
  files plus that one file) and never into the user's folder;
- a ``.zip`` of such a folder (extracted once into the cache directory);
- a keras-hub preset name (``bert_tiny_en_uncased``), where the machine has network access.

A document becomes ``[start] + its tokens + [end]`` (the tokenizer's own special tokens, kept in
the store) truncated to ``max_len`` tokens (the start and end tokens stay). Documents are encoded
in batches of documents of similar length, each padded to its length bucket with the attention
mask, in one compiled call per batch; a block always batches the same documents the same way,
so reruns and workers write identical vectors on the same machine.

Memory: the backbone's weights (about 90 MB for MiniLM-L6) once per worker process, plus one
batch's activations.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embcache.cache.errors import VectorsError, install_hint
from embcache.cache.settings import ENCODER_BATCH, ENCODER_MAX_LEN, ENCODER_TRUNCATING
from embcache.cache.vectors import content_key


def require_keras_hub():
    """keras_hub, or one line naming the extra to install."""
    try:
        import keras_hub  # noqa: F401
        import safetensors  # noqa: F401 - keras-hub's converter imports it without declaring it
    except ImportError as e:
        raise VectorsError(f"`encoder=` needs keras-hub and safetensors ({e.name} is not "
                           f"installed): {install_hint('encoders')}") from None
    import keras_hub

    return keras_hub


@dataclass(frozen=True)
class EncoderRef:
    """What a worker needs to load the encoder (picklable): the folder or preset keras-hub reads,
    what the user named, and the batching."""

    preset: str
    source: str
    max_len: int = ENCODER_MAX_LEN
    batch_size: int = ENCODER_BATCH
    truncating: str = ENCODER_TRUNCATING  # "pre": a long document keeps its end
    jit_compile: bool = True  # XLA on the forward pass (see xla_by_default)
    # What the forward pass computes in: "float32", or "bfloat16" (the backbone's weights and
    # arithmetic; the vectors come out as float32). Recorded in the store's identity when
    # bfloat16, so that scoring raw text re-encodes at the store's precision.
    precision: str = "float32"


def default_cache_dir() -> Path:
    from embcache.cache.vectors import default_cache_dir as vectors_cache

    return vectors_cache() / "encoders"


def _shadow(folder: Path, root: Path) -> Path:
    """A folder keras-hub can read: links to every file of ``folder`` plus ``vocab.txt`` derived
    from ``tokenizer.json`` (WordPiece vocabulary, one token per line ordered by id)."""
    tok_path = folder / "tokenizer.json"
    try:
        tok = json.loads(tok_path.read_text(encoding="utf-8"))
        vocab = tok["model"]["vocab"]
        if not isinstance(vocab, dict):
            raise TypeError("model.vocab is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VectorsError(f"Encoder {folder}: {tok_path.name} has no WordPiece vocabulary to "
                           f"derive vocab.txt from ({e})") from None
    words: list[str | None] = [None] * len(vocab)
    for word, index in vocab.items():
        if not isinstance(index, int) or not 0 <= index < len(words) or words[index] is not None:
            raise VectorsError(f"Encoder {folder}: {tok_path.name}'s vocabulary ids are not "
                               f"0..{len(words) - 1} without gaps or repeats")
        words[index] = word
    key = hashlib.sha256(f"{folder.resolve()}\n{content_key(tok_path, None, root)}".encode()
                         ).hexdigest()[:16]
    target = root / f"shadow-{key}"
    if (target / "vocab.txt").is_file():
        return target
    tmp = root / f".shadow-{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in folder.iterdir():
        (tmp / item.name).symlink_to(item.resolve())
    (tmp / "vocab.txt").write_text("\n".join(str(w) for w in words) + "\n", encoding="utf-8")
    try:
        tmp.rename(target)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unzip(path: Path, root: Path) -> Path:
    """A zipped encoder folder, extracted once into ``root``, keyed by the zip's sha256 (memoised
    by path, size and mtime, as for vectors files: a later run does not hash the zip again)."""
    target = root / f"zip-{content_key(path, None, root)[:16]}"
    if not (target / ".complete").is_file():
        tmp = root / f".{target.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(path) as z:
                z.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise VectorsError(f"Encoder {path} is not a readable zip file ({e})") from None
        inner = [p for p in tmp.iterdir() if p.is_dir()]
        if not (tmp / "config.json").exists() and len(inner) == 1:  # a zip of the folder itself
            inner[0].rename(tmp.with_name(tmp.name + ".inner"))
            shutil.rmtree(tmp)
            tmp = tmp.with_name(tmp.name + ".inner")
        (tmp / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def resolve(spec: str, *, max_len: int | None = None, batch_size: int = ENCODER_BATCH,
            cache_dir: str | os.PathLike | None = None, truncating: str = ENCODER_TRUNCATING,
            jit_compile: bool | None = None, precision: str = "float32") -> EncoderRef:
    """Turn ``--encoder`` into what keras-hub loads (see the module docstring); checks nothing
    that needs the weights. ``jit_compile`` (XLA on the forward pass) defaults to
    :func:`xla_by_default`."""
    root = Path(cache_dir) / "encoders" if cache_dir is not None else default_cache_dir()
    path = Path(spec)
    if path.is_file() and path.suffix == ".zip":
        root.mkdir(parents=True, exist_ok=True)
        path = _unzip(path, root)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "metadata.json").is_file():
            raise VectorsError(f"Encoder {spec} is neither a keras-hub preset folder "
                               "(metadata.json) nor a Hugging Face folder (config.json)")
        preset = path
        hf_bert = (path / "tokenizer.json").is_file() and not (path / "vocab.txt").exists() \
            and not (path / "metadata.json").is_file()
        if hf_bert:
            root.mkdir(parents=True, exist_ok=True)
            preset = _shadow(path, root)
        where = str(preset)
    elif path.exists():
        raise VectorsError(f"Encoder {spec} is a file; give a folder, a .zip of one or a "
                           "keras-hub preset name")
    elif os.sep in spec or spec.startswith("."):
        raise VectorsError(f"Encoder not found: {spec}")
    else:
        where = spec  # a keras-hub preset name (downloaded by keras-hub)
    if max_len is not None and max_len < 3:
        raise VectorsError(f"Invalid value for `max_len`. Expected at least 3 for an encoder (its "
                           f"start and end tokens and one more). Received: max_len={max_len}")
    return EncoderRef(preset=where, source=spec, max_len=max_len or ENCODER_MAX_LEN,
                      batch_size=batch_size, truncating=truncating,
                      jit_compile=xla_by_default(precision) if jit_compile is None
                      else jit_compile, precision=precision)


def xla_by_default(precision: str) -> bool:
    """XLA for the forward pass, but not in bfloat16 on a CPU: XLA's CPU backend compiles its own
    matmuls and does not reach the matrix units (AMX), which TensorFlow's oneDNN kernels use
    (``make bench-encoder``, MiniLM, 128 tokens, with AMX: float32 70.0 docs/s with XLA and
    57.5 without; bfloat16 54.5 with XLA and 90.6 without)."""
    if precision != "bfloat16":
        return True
    from embcache.cache.precision import bfloat16_units

    return bfloat16_units()[0] == "gpu"


class Encoder:
    """A loaded backbone and tokenizer (once per worker process)."""

    def __init__(self, ref: EncoderRef):
        keras_hub = require_keras_hub()
        import tensorflow as tf

        self.ref = ref
        try:
            dtype = {"dtype": "bfloat16"} if ref.precision == "bfloat16" else {}
            self.backbone = keras_hub.models.Backbone.from_preset(ref.preset, **dtype)
            self.tokenizer = keras_hub.models.Tokenizer.from_preset(ref.preset)
        except Exception as e:  # noqa: BLE001 - keras-hub raises many kinds for a bad preset
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise VectorsError(f"Encoder {ref.source} cannot be loaded by keras-hub: {first}"
                               ) from None
        limit = getattr(self.backbone, "max_sequence_length", None)
        self.max_len = ref.max_len
        if limit is not None and ref.max_len > limit:
            if ref.max_len != ENCODER_MAX_LEN:
                raise VectorsError(f"Invalid value for `max_len`: encoder {ref.source} reads at "
                                   f"most {limit} tokens. Received: max_len={ref.max_len}")
            self.max_len = int(limit)  # the default, capped by the encoder's position limit
        self.start = getattr(self.tokenizer, "start_token_id", None)
        self.end = getattr(self.tokenizer, "end_token_id", None)
        self.pad = getattr(self.tokenizer, "pad_token_id", None) or 0
        oov = getattr(self.tokenizer, "oov_token", None)
        self.unk = self.tokenizer.token_to_id(oov) if oov else None
        self.dim = int(self.backbone.hidden_dim)
        # The model's own Hugging Face tokenizer where the folder has one: keras-hub's WordPiece
        # tokenizer lower-cases but keeps accents (`café` -> [UNK]); the tokenizer the model was
        # trained with strips them (`cafe`). Batched in Rust, ids equal to the model's own.
        self.hf = self._hf_tokenizer()
        self.vocab_size = (self.hf.get_vocab_size(with_added_tokens=True) if self.hf is not None
                           else len(self.tokenizer.get_vocabulary()))
        table = getattr(self.backbone, "vocabulary_size", None)
        if table is not None and self.vocab_size > int(table):
            raise VectorsError(f"Encoder {ref.source}: its tokenizer has {self.vocab_size:,} "
                               f"tokens but its weights' embedding table has {int(table):,} rows: "
                               "the tokenizer belongs to another model")
        self._identity_cache: dict[str, Any] | None = None
        names = {i.name for i in self.backbone.inputs}
        backbone = self.backbone

        def forward(token_ids, padding_mask):
            feed = {"token_ids": token_ids, "padding_mask": padding_mask}
            if "segment_ids" in names:
                feed["segment_ids"] = tf.zeros_like(token_ids)
            out = backbone(feed, training=False)
            out = out["sequence_output"] if isinstance(out, dict) else out
            return tf.cast(out, tf.float32)

        spec = tf.TensorSpec([None, None], tf.int32)
        # XLA compiles one program per (batch, length) shape: batches are padded to
        # `batch_size` rows and a length bucket, so a corpus needs at most ~24 compilations.
        self._forward = tf.function(forward, input_signature=(spec, spec),
                                    jit_compile=ref.jit_compile)

    def _hf_tokenizer(self):
        folder = Path(self.ref.preset)
        path = folder / "tokenizer.json"
        # A keras-hub preset (metadata.json) has a tokenizer.json of its own: keras-hub's config.
        if not path.is_file() or (folder / "metadata.json").is_file():
            return None
        from embcache.cache.subword import load_tokenizer

        return load_tokenizer(path, f"Encoder {self.ref.source}")

    # -- identity --------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Memoised :meth:`_identity` (it hashes every weight: scoring asks for it twice)."""
        if self._identity_cache is None:
            self._identity_cache = self._identity()
        return self._identity_cache

    def _identity(self) -> dict[str, Any]:
        """What the store records: architecture and config, sha256 of the weights (their values,
        in order, whatever file they came from) and of the vocabulary, the tokenizer, max_len
        and the special tokens kept."""
        weights = hashlib.sha256()
        for w in self.backbone.weights:  # as float32 (bfloat16 weights: as they were rounded)
            weights.update(np.ascontiguousarray(np.asarray(w.numpy(), dtype=np.float32)).tobytes())
        vocab = hashlib.sha256("\n".join(self.tokenizer.get_vocabulary()).encode()).hexdigest()
        if self.hf is not None:  # the tokenizer.json decides the ids: its whole pipeline
            tok_config = {"file": "tokenizer.json", "sha256": hashlib.sha256(
                self.hf.to_str().encode()).hexdigest()}
            tok_class = "tokenizers.Tokenizer"
        else:
            tok_config = {k: v for k, v in self.tokenizer.get_config().items()
                          if k not in ("name", "trainable", "dtype", "vocabulary", "proto")}
            tok_class = type(self.tokenizer).__name__
        ident = {
            "source": self.ref.source,
            "architecture": type(self.backbone).__name__,
            # Keras names a second instance "bert_backbone_1": the name is not the encoder.
            "config": _jsonable({k: v for k, v in self.backbone.get_config().items()
                                 if k not in ("name", "trainable")}),
            "weights_sha256": weights.hexdigest(),
            "vocab_sha256": vocab,
            "tokenizer": {"class": tok_class, **_jsonable(tok_config)},
            "max_len": self.max_len,
            "truncating": self.ref.truncating,
            "special_tokens": {"start": self._name(self.start), "end": self._name(self.end),
                               "kept": True},
            "dim": self.dim,
        }
        if self.ref.precision != "float32":  # float32 stores keep the identity they always had
            ident["precision"] = self.ref.precision
        ident["fingerprint"] = fingerprint(ident)
        return ident

    def _name(self, token_id):
        return None if token_id is None else self.tokenizer.id_to_token(token_id)

    # -- encoding --------------------------------------------------------------------------------
    def token_ids(self, texts: list[str]) -> tuple[list[np.ndarray], int, int]:
        """Each text's token ids with the start/end tokens, truncated to ``max_len`` (the start
        and end tokens kept); also the token count before truncation (start and end included)
        and the unknown tokens."""
        if not texts:
            return [], 0, 0
        rows = self._raw_ids(list(texts))
        room = self.max_len - (self.start is not None) - (self.end is not None)
        out, total, unknown = [], 0, 0
        specials = (self.start is not None) + (self.end is not None)
        head = [np.array([self.start], np.int32)] if self.start is not None else []
        tail = [np.array([self.end], np.int32)] if self.end is not None else []
        for r in rows:
            total += len(r) + specials
            if self.unk is not None:
                unknown += int(np.count_nonzero(r == self.unk))
            if len(r) > room:
                r = r[-room:] if self.ref.truncating == "pre" else r[:room]
            out.append(np.concatenate(head + [r] + tail))
        return out, total, unknown

    def _raw_ids(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's token ids, no special tokens, not truncated."""
        if self.hf is not None:
            return [np.asarray(e.ids, dtype=np.int32)
                    for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]
        import tensorflow as tf

        ragged = self.tokenizer(tf.constant(texts))
        return [np.asarray(r, dtype=np.int32).reshape(-1)
                for r in (ragged.to_list() if hasattr(ragged, "to_list") else ragged)]

    def encode(self, ids: list[np.ndarray]) -> list[np.ndarray]:
        """Each document's ``(tokens, dim)`` float32 vectors. Documents are sorted by length
        (ties by position), cut into batches of ``batch_size`` and each batch is padded to the
        length bucket of its longest document with the attention mask: the same documents are
        always batched the same way."""
        from embcache.cache.stream import bucket_lengths

        grid = bucket_lengths(self.max_len)
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out: list[np.ndarray | None] = [None] * len(ids)
        for s in range(0, len(order), self.ref.batch_size):
            part = order[s:s + self.ref.batch_size]
            longest = max(len(ids[i]) for i in part)
            steps = int(grid[np.searchsorted(grid, longest)])
            # Always batch_size rows (the extra ones all padding): one shape per length bucket.
            rows = self.ref.batch_size if self.ref.jit_compile else len(part)
            tokens = np.full((rows, steps), self.pad, dtype=np.int32)
            mask = np.zeros((rows, steps), dtype=np.int32)
            for row, i in enumerate(part):
                tokens[row, :len(ids[i])] = ids[i]
                mask[row, :len(ids[i])] = 1
            vectors = self._forward(tokens, mask).numpy()
            for row, i in enumerate(part):
                out[i] = vectors[row, :len(ids[i])]
        return out  # type: ignore[return-value]


def fingerprint(identity: dict[str, Any]) -> str:
    """sha256 of what decides the vectors (not where the encoder was read from)."""
    body = {k: v for k, v in identity.items() if k not in ("source", "fingerprint")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: repr(o)))
