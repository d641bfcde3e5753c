"""Helpers the tests share (fixtures live in conftest.py): tiny vectors, corpora and stores built
in tmp folders, the real-data switch, running the CLI, pause points, and comparing stores."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "home", "is", "a",
         "good", "bad", "day", "night", "sun", "moon", "star", "sky"]
DIM = 8


PIECES = ["[PAD]", "[UNK]", *WORDS, "caf", "##e", "##s", "hello", "world", "super", "##cal", "##i",
          ",", "!", "."]

def write_vectors(path: Path, words=WORDS, dim=DIM, seed=0, header=False, trailing_space=False):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(len(words), dim)).astype(np.float32)
    lines = [f"{len(words)} {dim}"] if header else []
    for w, v in zip(words, vecs):
        lines.append(w + " " + " ".join(f"{x:.6f}" for x in v) + (" " if trailing_space else ""))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {w: np.array([float(f"{x:.6f}") for x in v], dtype=np.float32) for w, v in zip(words, vecs)}


def make_folder_corpus(root: Path, docs_per_label=12, labels=("neg", "pos"), seed=0,
                       oov_words=("zzz", "qqq")) -> dict[str, list[str]]:
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(docs_per_label):
            n = rng.randint(1, 30)
            words = [rng.choice(WORDS + list(oov_words)) for _ in range(n)]
            text = "Subject: hello\nFrom: x@y\n\n" + " ".join(w.capitalize() if j % 3 == 0 else w
                                                            for j, w in enumerate(words)) + "."
            (root / label / f"{i:03d}").write_text(text)
            out.setdefault(label, []).append(text)
    return out


def small_store(root: Path, vectors: Path, *, docs_per_label: int, val_frac: float,
                test_frac: float, labels=("a", "b", "c"), shard_blocks: int | None = None) -> Path:
    """A labelled folder corpus in ``root/corpus`` embedded into ``root/s.zarr`` (max_len 160,
    16 documents per chunk, one process; ``shard_blocks`` as embed_corpus's)."""
    from embcache.cache.corpus import CorpusSpec
    from embcache.cache.settings import EmbedSettings
    from embcache.jobs.embed_corpus import SplitSettings, embed_corpus

    make_folder_corpus(root / "corpus", docs_per_label=docs_per_label, labels=labels)
    store = root / "s.zarr"
    embed_corpus(CorpusSpec(str(root / "corpus")), str(vectors), str(store), workers=1,
                 chunk_docs=16, progress=False, settings=EmbedSettings(max_len=160),
                 split=SplitSettings(val_frac=val_frac, test_frac=test_frac),
                 shard_blocks=shard_blocks)
    return store


def real_data_dir() -> Path:
    """DATA_DIR holding the real files; skips outside CI when absent, fails in CI."""
    d = Path(os.environ.get("DATA_DIR", "data"))
    needed = ["glove.6B.50d.txt.gz", "news20.tar.gz", "ag_news_csv/test.csv", "all-MiniLM-L6-v2.zip",
              "wordllama-l2-supercat-256/l2_supercat_256.safetensors",
              "wordllama-l2-supercat-256/l2_supercat_tokenizer_config.json"]
    missing = [n for n in needed if not (d / n).exists()]
    if missing:
        msg = f"real data missing under DATA_DIR={d}: {', '.join(missing)}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (required in CI)")
        pytest.skip(msg)
    return d


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def paused(cmd: list[str], point: str, tmp_path: Path, timeout: float = 180):
    """Start ``cmd`` with the pause point ``point`` armed; return the process once it waits
    there (see embcache.cache.hooks)."""
    flag = tmp_path / f"paused-{point.replace(':', '-')}"
    env = {**os.environ, "EMBCACHE_PAUSE_AT": point, "EMBCACHE_PAUSE_FILE": str(flag)}
    # Ctrl-C as a terminal delivers it: a shell's background job (`pytest &`) starts with SIGINT
    # ignored, the job would inherit that, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not (flag.exists()
                                                                   and flag.read_text()):
        time.sleep(0.02)
    assert proc.poll() is None and flag.exists(), f"never reached {point}: " + (
        proc.communicate()[1][-2000:] if proc.poll() is not None else "timed out")
    return proc, flag


def cli(*args):
    """Run the embcache command in this process: (exit code, output with stderr)."""
    from click.testing import CliRunner

    from embcache.jobs.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def one_error_line(output: str) -> str:
    """The output's only non-empty line, which must be an ``Error:`` line."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output[-3000:]
    return lines[0]


def stream(store, split="train", *, plan=None, in_process=None, max_wait=None, **batching):
    """``streamed_dataset`` with the :class:`Batching` fields given flat (tests read shorter)."""
    from embcache.cache.dataset import Batching, streamed_dataset

    return streamed_dataset(store, split, batching=Batching(**batching), plan=plan,
                            in_process=in_process, max_wait=max_wait)

def read_all(url):
    """Every array; ``tokens`` as the documents' rows (never read whole: it is an address space)
    plus the chunk files it wrote."""
    g = zarr.open_group(str(url), mode="r")
    out = {name: g[name][:] for name in g.array_keys() if name != "tokens"}
    tokens = g["tokens"]
    out["tokens"] = np.concatenate([tokens[o:o + n] for o, n in zip(out["offsets"], out["lengths"])])
    out["token_chunks"] = np.array(sorted(str(p.relative_to(url)) for p in (url / "tokens").rglob("*")
                                          if p.is_file()))
    return out


def assert_same_store(a, b):
    ra, rb = read_all(a), read_all(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)


def kill_after_chunks(cmd: list[str], out, chunks: int, timeout: float) -> None:
    """Run ``cmd`` (an embed-corpus into ``out``) and ``kill -9`` it right after its
    ``chunks``-th block committed (it waits there: embcache.cache.hooks)."""
    proc, _flag = paused(cmd, f"embed:block-committed:{chunks}", Path(str(out)).parent, timeout)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from embcache.cache.integrity import read_chunk_stats

    stats = read_chunk_stats(zarr.open_group(str(out), mode="r"))
    assert int((stats[:, 0] >= 0).sum()) >= chunks


def wordpiece(vocab=None):
    """A BERT-style tokenizer (lower-cases, strips accents) over ``vocab``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = PIECES if vocab is None else vocab
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok
