"""The seed approach, re-implemented as the baseline: a Python dict of vectors, per-token lookups,
random pad/unk vectors, and the whole embedded corpus built in RAM as float32.

Run as a child process by ``jobs.bench.embed`` so its peak RSS is measured on its own.
"""

from __future__ import annotations

import gzip
import json
import sys
import tarfile
import time

import numpy as np

from embcache.cache.corpus import decode_text, strip_usenet_header
from embcache.cache.tokenize import make_tokenizer


def main(corpus: str, vectors: str, max_len: int) -> None:
    t0 = time.perf_counter()
    embeddings = {}
    with gzip.open(vectors, "rt", encoding="utf-8") as f:
        for line in f:
            values = line.rstrip().split(" ")
            embeddings[values[0]] = np.asarray(values[1:], dtype="float32")
    dim = len(next(iter(embeddings.values())))
    t_vectors = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    pad, unk = rng.normal(size=dim).astype("float32"), rng.normal(size=dim).astype("float32")
    tokenize = make_tokenizer()
    texts = []
    with tarfile.open(corpus, "r|gz") as tf:
        for m in tf:
            if m.isfile():
                texts.append(strip_usenet_header(decode_text(tf.extractfile(m).read())))
    data = np.empty((len(texts), max_len, dim), dtype="float32")
    for i, text in enumerate(texts):
        seq = [embeddings.get(w, unk) for w in tokenize(text)][-max_len:]
        seq = [pad] * (max_len - len(seq)) + seq
        data[i] = np.stack(seq)
    seconds = time.perf_counter() - t0
    print(json.dumps({"docs": len(texts), "vectors_s": t_vectors, "embed_s": seconds - t_vectors,
                      "bytes": int(data.nbytes)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
