"""``make bench-encoder``: a frozen transformer encoder paid once into the store, against the
frozen encoder inside every model, on a sample of 20 Newsgroups.

- (a) embcache: ``embed-corpus --encoder`` once (every document through the encoder once), then
  ``train`` of the heads as one group for ``--epochs`` epochs from the store (validation every
  epoch included);
- (b) the Keras way: each head with the frozen backbone inside the model (``training=False``),
  fed token ids padded to ``max_len`` with the attention mask, ``fit`` for the same epochs with
  the same validation split: every document goes through the encoder once per head and epoch.

Each side runs in its own child processes (peak RSS is its own); the table reports wall times,
the encoder's documents/s and tokens/s, the store's MB per 1,000 documents, and how the ratio
grows with heads x epochs (projected from the measured per-document costs of both sides).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from embcache.cache.settings import ENCODER_BATCH

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def say(message: str) -> None:
    click.echo(f"[bench-encoder {time.strftime('%H:%M:%S')}] {message}", err=True)


def write_sample(corpus: str, folder: Path, docs: int) -> int:
    """Every k-th document of the corpus (all groups represented) as a folder corpus, headers
    stripped as embed-corpus --strip-headers does."""
    from embcache.cache.corpus import CorpusSpec, iter_documents, scan_corpus

    spec = CorpusSpec(corpus, strip_headers=True)
    step = max(1, scan_corpus(spec).num_docs // docs)
    n = 0
    for i, d in enumerate(iter_documents(spec)):
        if i % step or n >= docs:
            continue
        target = folder / str(d.label) / f"{i:06d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(d.text, encoding="utf-8")
        n += 1
    return n


def keras_way_child(store_url: str, encoder: str, heads: list[str], epochs: int,
                    batch_size: int, precision: str = "float32") -> dict:
    """(b): the heads with the frozen backbone inside, on token ids of the same documents and
    split as the store (read back from the store's corpus and doc ids). ``precision``
    ``bfloat16``: the backbone loaded in bfloat16 and the heads under Keras's
    ``mixed_bfloat16`` policy, as (a) runs with ``--precision bfloat16``."""
    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow()
    import keras
    import numpy as np

    if precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    from embcache import models
    from embcache.cache.corpus import CorpusSpec, iter_documents
    from embcache.cache.encoder import Encoder, resolve
    from embcache.cache.store import open_store

    store = open_store(store_url, require_labels=True)
    enc = Encoder(resolve(encoder, max_len=store.max_len, precision=precision))
    texts = {d.doc_id: d.text for d in iter_documents(CorpusSpec.from_dict(store.meta.corpus))}
    doc_ids = [str(x) for x in store.array("doc_ids")[:]]
    split, labels = store.array("split")[:], store.array("labels")[:].astype("int32")
    ids, _total, _unk = enc.token_ids([texts[d] for d in doc_ids])
    L = store.max_len
    tokens = np.zeros((len(ids), L), "int32")
    mask = np.zeros((len(ids), L), "int32")
    for i, row in enumerate(ids):
        tokens[i, :len(row)], mask[i, :len(row)] = row, 1
    data = {s: ({"token_ids": tokens[split == c], "padding_mask": mask[split == c]},
                labels[split == c]) for c, s in enumerate(("train", "val"))}
    enc.backbone.trainable = False
    seconds = {}
    for name in heads:
        keras.utils.set_random_seed(0)
        head = models.build(name, max_len=L, dim=enc.dim, num_classes=len(store.label_names),
                            padding="post")
        t_in = keras.Input((L,), dtype="int32", name="token_ids")
        m_in = keras.Input((L,), dtype="int32", name="padding_mask")
        feed = {"token_ids": t_in, "padding_mask": m_in}
        if "segment_ids" in {i.name for i in enc.backbone.inputs}:
            feed["segment_ids"] = keras.ops.zeros_like(t_in)
        seq = enc.backbone(feed, training=False)
        seq = seq["sequence_output"] if isinstance(seq, dict) else seq
        lengths = keras.ops.sum(m_in, axis=1)
        model = keras.Model({"token_ids": t_in, "padding_mask": m_in},
                            head({"embedded": seq, "lengths": lengths}))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        t0 = time.perf_counter()
        model.fit(*data["train"], validation_data=data["val"], epochs=epochs,
                  batch_size=batch_size, verbose=0)
        seconds[name] = time.perf_counter() - t0
    return {"seconds": seconds, "train_docs": int((split == 0).sum()),
            "val_docs": int((split == 1).sum())}


def encoder_speed(corpus: str, encoder: str, docs: int, rounds: int, lengths: list[int]) -> None:
    """The encoder's forward pass compiled with XLA (``jit_compile``, what embed-corpus uses)
    against the plain ``tf.function``, on the same token ids, rounds interleaved; documents/s
    of ``Encoder.encode`` (tokenizing excluded) and the largest difference between outputs."""
    import numpy as np

    from embcache.cache.corpus import CorpusSpec, iter_documents
    from embcache.cache.encoder import Encoder, resolve
    from embcache.cache.tfenv import quiet_tensorflow
    from jobs.bench.common import table

    quiet_tensorflow()
    texts = []
    for d in iter_documents(CorpusSpec(corpus, strip_headers=True)):
        texts.append(d.text)
        if len(texts) >= docs:
            break
    rows = []
    for max_len in lengths:
        encs = {jit: Encoder(resolve(encoder, max_len=max_len, jit_compile=jit))
                for jit in (False, True)}
        ids = encs[True].token_ids(texts)[0]
        outs = {jit: e.encode(ids) for jit, e in encs.items()}  # warm-up: traces and compiles
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outs[True], outs[False]))
        got: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for jit in ((False, True) if r % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                encs[jit].encode(ids)
                got[jit].append(len(ids) / (time.perf_counter() - t0))
                say(f"speed max_len {max_len} round {r + 1}/{rounds} "
                    f"{'xla' if jit else 'plain'}: {got[jit][-1]:,.1f} docs/s")
        med = {j: sorted(v)[len(v) // 2] for j, v in got.items()}
        rows.append([str(max_len), *(f"{med[j]:,.1f} ({min(got[j]):,.1f}-{max(got[j]):,.1f})"
                                     for j in (False, True)),
                     f"{med[True] / med[False]:.2f}x", f"{diff:.1e}"])
    click.echo(f"encoder forward pass: {len(texts)} documents of {corpus}, {encoder}, batch 16, "
               f"{rounds} interleaved rounds, {os.cpu_count()} cores; documents/s median (range)")
    click.echo(table(["max_len", "plain tf.function", "XLA (jit_compile)", "XLA / plain",
                      "max |difference|"], rows))


def _sample_texts(corpus: str, docs: int) -> list[str]:
    from embcache.cache.corpus import CorpusSpec, iter_documents

    texts = []
    for d in iter_documents(CorpusSpec(corpus, strip_headers=True)):
        texts.append(d.text)
        if len(texts) >= docs:
            break
    return texts


def precision_speed(corpus: str, encoder: str, docs: int, rounds: int, lengths: list[int],
                    batches: tuple[int, ...] = (ENCODER_BATCH,)) -> None:
    """The encoder in float32 against bfloat16 (``embed-corpus --precision``), each with and
    without XLA and at each batch size in ``batches``, all interleaved over the rounds:
    documents/s, each against float32 with XLA at the default batch (float32's default;
    bfloat16's default on a CPU is without XLA, see
    :func:`embcache.cache.encoder.xla_by_default`), and how far the bfloat16 vectors are from
    the float32 ones (largest absolute difference, relative to the largest value; the mean
    cosine similarity of the token vectors)."""
    import numpy as np

    from embcache.cache.encoder import Encoder, resolve, xla_by_default
    from embcache.cache.precision import native_bfloat16
    from embcache.cache.tfenv import quiet_tensorflow
    from jobs.bench.common import table

    quiet_tensorflow()
    texts = _sample_texts(corpus, docs)
    native, why = native_bfloat16()
    variants = [(p, xla, b) for b in batches for p in ("float32", "bfloat16") for xla in (True, False)]
    base = ("float32", True, ENCODER_BATCH if ENCODER_BATCH in batches else batches[0])
    rows = []
    for max_len in lengths:
        encs = {v: Encoder(resolve(encoder, max_len=max_len, precision=v[0], jit_compile=v[1],
                                   batch_size=v[2])) for v in variants}
        ids = encs[variants[0]].token_ids(texts)[0]
        outs = {v: e.encode(ids) for v, e in encs.items()}  # warm-up: traces and compiles
        default = {p: (p, xla_by_default(p), base[2]) for p in ("float32", "bfloat16")}
        a, b = (np.concatenate(outs[default[p]]).astype(np.float64)
                for p in ("float32", "bfloat16"))
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                          1e-12)
        got: dict[tuple, list[float]] = {v: [] for v in variants}
        for r in range(rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                t0 = time.perf_counter()
                encs[v].encode(ids)
                got[v].append(len(ids) / (time.perf_counter() - t0))
                say(f"precision max_len {max_len} round {r + 1}/{rounds} {v[0]}"
                    f"{' XLA' if v[1] else ''} batch {v[2]}: {got[v][-1]:,.1f} docs/s")
        med = {v: sorted(x)[len(x) // 2] for v, x in got.items()}
        for v in variants:
            rows.append([str(max_len), v[0], "XLA" if v[1] else "plain", str(v[2]),
                         "yes" if default[v[0]] == v else "",
                         f"{med[v]:,.1f} ({min(got[v]):,.1f}-{max(got[v]):,.1f})",
                         f"{med[v] / med[base]:.2f}x"])
        rows.append([str(max_len), "bfloat16 (default) against float32 (default)", "", "", "",
                     f"max diff {np.abs(a - b).max() / np.abs(a).max():.1e} of max",
                     f"mean cosine {cos.mean():.5f}"])
    click.echo(f"encoder float32 against bfloat16: {len(texts)} documents of {corpus}, "
               f"{encoder}, {rounds} interleaved rounds; bfloat16 "
               f"{'native' if native else 'EMULATED'} here ({why}); documents/s median (range)")
    click.echo(table(["max_len", "precision", "forward pass", "batch", "default", "docs/s",
                      f"vs float32 XLA batch {base[2]}"], rows))


@click.command()
@click.option("--corpus", required=True, help="20 Newsgroups news20.tar.gz.")
@click.option("--encoder", required=True, help="The encoder (e.g. all-MiniLM-L6-v2.zip).")
@click.option("--docs", default=800, show_default=True, help="Documents in the sample.")
@click.option("--max-len", default=128, show_default=True, help="Encoder tokens per document.")
@click.option("--heads", default="fasttext,kim_cnn,bilstm", show_default=True)
@click.option("--epochs", default=5, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--speed-docs", default=256, show_default=True,
              help="Documents for the XLA against plain forward-pass part (0: skip it).")
@click.option("--speed-rounds", default=3, show_default=True)
@click.option("--speed-only", is_flag=True, help="Only the XLA against plain part.")
@click.option("--precision-docs", default=0, show_default=True,
              help="Documents for the float32 against bfloat16 part (0: skip it).")
@click.option("--precision", default="float32", show_default=True,
              help="(a)'s embed-corpus and train --precision (auto, float32 or bfloat16); several, "
                   "comma-separated, run (a) once each in the same run.")
@click.option("--keras-precision", type=click.Choice(["same", "float32", "bfloat16"]),
              default="same", show_default=True,
              help="(b)'s backbone and heads (bfloat16: mixed_bfloat16). same: --precision's "
                   "first, so the ratio compares equal arithmetic; with auto first, float32 "
                   "(what Keras runs unless told otherwise).")
@click.option("--precision-batches", default=str(ENCODER_BATCH), show_default=True,
              help="Encoder batch sizes for the float32 against bfloat16 part, comma-separated.")
@click.option("--child", default=None, hidden=True)
def main(corpus, encoder, docs, max_len, heads, epochs, batch_size, speed_docs, speed_rounds,
         speed_only, precision_docs, precision, keras_precision, precision_batches, child):
    """Benchmark: encoder once into the store + heads from it, against the encoder in every head."""
    head_names = heads.split(",")
    if child:
        click.echo(json.dumps(keras_way_child(child, encoder, head_names, epochs, batch_size,
                                              keras_precision)))
        return
    precisions = precision.split(",")
    if any(p not in ("auto", "float32", "bfloat16") for p in precisions):
        raise click.BadParameter(f"auto, float32 or bfloat16, comma-separated; got {precision!r}",
                                 param_hint="--precision")
    if keras_precision == "same":
        keras_precision = "float32" if precisions[0] == "auto" else precisions[0]
    if precision_docs:
        precision_speed(corpus, encoder, precision_docs, speed_rounds, [128],
                        tuple(int(b) for b in precision_batches.split(",")))
        click.echo("")
    if speed_docs:
        encoder_speed(corpus, encoder, speed_docs, speed_rounds, [128, 256])
        click.echo("")
    if speed_only:
        return
    from jobs.bench.common import run_measured, table

    tmp = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
    cli = [sys.executable, "-m", "embcache.jobs.cli"]
    a_runs: dict[str, dict] = {}  # (a) per precision: its wall seconds and peak RSS per job
    try:
        n = write_sample(corpus, tmp / "corpus", docs)
        say(f"sample: {n} documents of {corpus}; heads {heads}; {epochs} epochs; max_len {max_len}")
        for prec in precisions:
            store = str(tmp / f"sample-{prec}.zarr")
            say(f"(a) at {prec}: embed-corpus --encoder ...")
            w_embed, rss_embed, _ = run_measured(cli + [
                "embed-corpus", "--corpus", str(tmp / "corpus"), "--encoder", encoder, "--out",
                store, "--max-len", str(max_len), "--precision", prec, "-q"], env=dict(os.environ))
            info = json.loads(run_measured(cli + ["info", store, "--json"])[2])
            say(f"  {w_embed:.1f} s")
            say(f"(a) at {prec}: train {heads} as one group from the store ...")
            w_train, rss_train, _ = run_measured(cli + [
                "train", "--store", store, "--model", heads, "--epochs", str(epochs), "--patience",
                str(epochs), "--batch-size", str(batch_size), "--out", str(tmp / f"runs-{prec}"),
                "--precision", prec, "-q"], env=dict(os.environ))
            say(f"  {w_train:.1f} s")
            a_runs[prec] = {"embed": (w_embed, rss_embed), "train": (w_train, rss_train),
                            "info": info, "store": store}
        say(f"(b) the Keras way at {keras_precision}: the frozen encoder inside each head ...")
        store = a_runs[precisions[0]]["store"]
        w_keras, rss_keras, out = run_measured([
            sys.executable, "-m", "jobs.bench.encoder", "--corpus", corpus, "--encoder",
            encoder, "--heads", heads, "--epochs", str(epochs), "--batch-size", str(batch_size),
            "--keras-precision", keras_precision, "--child", store], env=dict(os.environ))
        child_out = json.loads(out.strip().splitlines()[-1])
        say(f"  {w_keras:.1f} s")
        size = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = a_runs[precisions[0]]["info"]
    encode_s = info["seconds"]
    docs_s, tokens_s = info["num_docs"] / encode_s, info["kept_tokens"] / encode_s
    click.echo(f"encoder benchmark: {info['num_docs']} 20 Newsgroups documents (headers stripped), "
               f"{encoder}, max_len {max_len} tokens, heads {heads}, {epochs} epochs each, batch "
               f"{batch_size}; (a) at {', '.join(precisions)}, (b) at {keras_precision}; "
               f"{os.cpu_count()} cores; wall seconds of fresh processes")
    rows = []
    for prec, r in a_runs.items():
        (w_embed, rss_embed), (w_train, rss_train) = r["embed"], r["train"]
        a = w_embed + w_train
        rows += [[f"(a) at {prec}: encode once into the store", f"{w_embed:,.1f}",
                  f"{rss_embed:,.0f}", ""],
                 [f"(a) at {prec}: train the heads as one group from the store", f"{w_train:,.1f}",
                  f"{rss_train:,.0f}", ""],
                 [f"(a) at {prec}: total", f"{a:,.1f}", f"{max(rss_embed, rss_train):,.0f}",
                  f"{w_keras / a:.2f}x faster (goal 10x)"]]
    rows.append([f"(b) Keras way at {keras_precision}: frozen encoder inside each head, token ids",
                 f"{w_keras:,.1f}", f"{rss_keras:,.0f}", "1.00x"])
    click.echo(table(["way", "wall s", "peak RSS MB", "vs (b)"], rows))
    click.echo(f"\nencoder at {precisions[0]}: {docs_s:,.1f} documents/s, {tokens_s:,.0f} tokens/s "
               f"({info['kept_tokens'] / info['num_docs']:,.0f} tokens per document kept); store "
               f"{size / 1e6:,.1f} MB on disk = {size / 1e6 / info['num_docs'] * 1000:,.1f} MB per "
               "1,000 documents")
    (w_embed, _), (w_train, _) = a_runs[precisions[0]]["embed"], a_runs[precisions[0]]["train"]
    # Per-unit costs: (b) pays the encoder per head and epoch; (a) pays it once.
    fit = child_out["seconds"]
    per_head_epoch_b = sum(fit.values()) / len(fit) / epochs
    per_head_epoch_a = max(w_train - 10.0, 1e-3) / len(head_names) / epochs  # minus ~10 s start-up
    rows = []
    for h, e in ((1, 1), (3, 5), (6, 10), (20, 10)):
        proj_a = w_embed + 10.0 + h * e * per_head_epoch_a
        proj_b = 10.0 + h * e * per_head_epoch_b
        rows.append([f"{h} x {e}", f"{proj_a:,.0f}", f"{proj_b:,.0f}", f"{proj_b / proj_a:.1f}x"])
    click.echo(f"\nhow the ratio grows (projected from this run: (b) {per_head_epoch_b:,.1f} s per "
               f"head-epoch, (a) {per_head_epoch_a:,.2f} s per head-epoch plus the one encoding, "
               "~10 s process start-up each)")
    click.echo(table(["heads x epochs", "(a) s", "(b) s", "(b) / (a)"], rows))


if __name__ == "__main__":
    main()
