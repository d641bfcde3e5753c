"""The ``embcache`` command: thin click commands over the typed jobs in this package."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys

import click

from embcache.cache.corpus import FORMATS as CORPUS_FORMATS
from embcache.cache.errors import EmbcacheError, os_error_line
from embcache.cache.meta import SPLIT_NAMES, SplitSettings
from embcache.cache.precision import PRECISIONS
from embcache.cache.settings import (
    DTYPES,
    ENCODER_BATCH,
    ENCODER_MAX_LEN,
    ENCODER_TRUNCATING,
    OOV_POLICIES,
    PADDINGS,
    EmbedSettings,
    default_settings,
)
from embcache.cache.vectors import FORMATS as VECTORS_FORMATS
from embcache.jobs import tune as tune_defaults
from embcache.jobs.config import TrainConfig
from embcache.jobs.ensemble import ENSEMBLES
from embcache.jobs.multiworker import STRATEGIES
from embcache.jobs.score import ScoreConfig
from embcache.jobs.score_dask import PART_DOCS
from embcache.models.registry import BUILTINS

# Every option's default has one home, in the typed settings the jobs take (importing them loads
# no TensorFlow): the CLI only reads them.
_EMBED, _SPLIT, _TRAIN, _SCORE = EmbedSettings(), SplitSettings(), TrainConfig(), ScoreConfig()


# Messages name options as Python arguments, in backticks (`overwrite=True`, `vectors=`): that is
# what a caller of the Python API passes. The command line rewrites each as its flag
# (:func:`cli_words`).
FLAGS = {"overwrite": "--overwrite", "repair": "--repair", "exist_ok": "--exist-ok",
         "vectors": "--vectors", "vectors_path": "--vectors",
         "encoder": "--encoder", "tokenizer": "--tokenizer", "oov": "--oov",
         "vectors_member": "--vectors-member", "vectors_format": "--vectors-format",
         "cache_dir": "--cache-dir", "corpus_format": "--corpus-format",
         "text_columns": "--text-column", "out": "--out", "out_dir": "--out",
         "val_frac": "--val-frac", "test_frac": "--test-frac", "ensemble": "--ensemble",
         "split": "--split", "metrics_dir": "--metrics-dir", "memory_mb": "--memory-mb",
         "runs": "--models", "scheduler": "--scheduler", "strategy": "--strategy",
         "hparams": "--param", "grid": "--grid", "format": "--corpus-format",
         "label_column": "--label-column", "id_column": "--id-column", "header": "--no-header",
         "strip_headers": "--strip-headers", "label_names_file": "--label-names",
         "stores": "--stores", "model": "--model", "space": "--space", "store": "--store",
         "data": "--input", "top_k": "--top-k", "probabilities": "--probabilities",
         **{name: "--" + name.replace("_", "-") for name in (
             "epochs", "batch_size", "patience", "seed", "shuffle_docs", "steps_per_execution",
             "length_buckets", "precision", "trials", "parallel", "max_len", "chunk_docs",
             "workers", "keep_store", "part_docs")}}


def cli_words(message: str) -> str:
    """``pass `overwrite=True` `` -> ``pass --overwrite``; ``needs `vectors=` `` -> ``needs
    --vectors``; ``leave `oov='unk'` out`` -> ``leave --oov unk out``; ``Invalid value for
    `space` `` -> ``Invalid value for --space``. Names that are no option (or a bare name
    elsewhere: a store's attribute `max_len`) stay as they are."""
    def flag(m):
        name, value = m.group(1), m.group(2)
        if name not in FLAGS:
            return m.group(0)
        value = value.strip("'\"")
        return FLAGS[name] if value in ("", "True", "...") else f"{FLAGS[name]} {value}"

    def invalid(m):
        name = m.group(1)
        return f"Invalid value for {FLAGS[name]}" if name in FLAGS else m.group(0)

    message = re.sub(r"Invalid value for `(\w+)`", invalid, message)
    return re.sub(r"`(\w+)=([^`]*)`", flag, message)


_REMOTE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs")


def _quiet_shutdown() -> None:
    """After the one ``Error:`` line, nothing more: async resources that zarr/fsspec/aiobotocore
    abandoned mid-request ("Exception ignored in: <coroutine ...>", "Task was destroyed but it
    is pending") would otherwise print pages at interpreter shutdown."""
    import logging

    sys.unraisablehook = lambda _unraisable: None
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _friendly(interrupted: str):
    """Decorator: library errors, OS errors (disk full, permissions, read-only file systems),
    object-storage failures and Ctrl-C become one ``Error: ...`` line and a non-zero exit
    (1; 130 for an interrupt), never a traceback. ``interrupted`` says what an interrupt left."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except EmbcacheError as e:
                _quiet_shutdown()
                raise click.ClickException(cli_words(str(e))) from None
            except OSError as e:
                _quiet_shutdown()
                raise click.ClickException(os_error_line(e)) from None
            except KeyboardInterrupt:
                _quiet_shutdown()
                click.echo(f"Error: Interrupted: {interrupted}", err=True)
                sys.exit(130)
            except Exception as e:  # noqa: BLE001 - object-storage clients' own exceptions
                if not type(e).__module__.startswith(_REMOTE_MODULES):
                    raise  # a bug: keep its traceback
                _quiet_shutdown()
                raise click.ClickException(f"Object storage failed: {type(e).__name__}: "
                                           f"{str(e).splitlines()[0] if str(e) else ''}") from None

        return wrapper

    return deco


def _importable_cwd() -> None:
    """Let ``--model pkg.mod:fn`` (and a card naming such a module) import from the current folder,
    as uvicorn and gunicorn do; appended, so it never shadows an installed package."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def corpus_options(fn):
    """The corpus-reading options shared by embed-corpus and score."""
    options = [
        click.option("--corpus-format", default=CORPUS_FORMATS[0], show_default=True,
                     type=click.Choice(CORPUS_FORMATS)),
        click.option("--text-column", "text_columns", multiple=True,
                     help="CSV/TSV column (name or 0-based index) or JSON field holding text; "
                          "repeat to join several. JSON default: text."),
        click.option("--label-column", default=None,
                     help="CSV/TSV column or JSON field of the label."),
        click.option("--id-column", default=None,
                     help="CSV/TSV column or JSON field of the document id."),
        click.option("--header/--no-header", default=True, show_default=True,
                     help="Whether the CSV/TSV file starts with a header row."),
        click.option("--label-names", "label_names_file", default=None,
                     help="File naming labels 1..K, one per line (e.g. AG News classes.txt)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embcache")
def main() -> None:
    """Embed a corpus once into a Zarr store; train and score embedding-free Keras models from it."""


def precision_option(help_text: str):
    return click.option("--precision", default=_TRAIN.precision, show_default=True,
                        type=click.Choice(PRECISIONS), help=help_text)


@main.command("embed-corpus")
@click.option("--corpus", "corpus_path", required=True,
              help="Folder per label, .tar.gz, .csv/.tsv, .jsonl or .txt (one document per line).")
@click.option("--vectors", "vectors_path", default=None,
              help="Word vectors (GloVe .txt/.txt.gz/.zip, word2vec .txt/.bin, fastText .vec) or "
                   "a static subword table: a model2vec or sentence-transformers StaticEmbedding "
                   "folder, or a .safetensors table with --tokenizer (WordLlama).")
@click.option("--tokenizer", default=None,
              help="The Hugging Face tokenizer.json of a --vectors table file.")
@click.option("--encoder", default=None,
              help="Instead of --vectors: a frozen transformer encoder (keras-hub text backbone) "
                   "whose last-layer token vectors are stored: a keras-hub preset folder, a "
                   "Hugging Face folder (config.json + model.safetensors + tokenizer), a .zip of "
                   "one, or a keras-hub preset name. Needs the encoders extra.")
@click.option("--encoder-batch", default=ENCODER_BATCH, show_default=True, type=click.IntRange(min=1),
              help="Documents per encoder forward pass (documents of similar length together).")
@click.option("--out", required=True, help="The store to write (a folder, e.g. news20.zarr).")
@corpus_options
@click.option("--strip-headers", is_flag=True,
              help="Drop everything before the first blank line (Usenet headers), as the Keras "
                   "20 Newsgroups example does.")
@click.option("--vectors-member", default=None, help="The vectors file inside a .zip.")
@click.option("--vectors-format", default=VECTORS_FORMATS[0], show_default=True,
              type=click.Choice(VECTORS_FORMATS))
@click.option("--max-len", default=None, type=click.IntRange(min=1),
              help=f"Tokens per sequence; longer documents are truncated [default: "
                   f"{_EMBED.max_len}; with --encoder {ENCODER_MAX_LEN} of its own tokens, at most "
                   "its position limit].")
@click.option("--padding", default=_EMBED.padding, show_default=True, type=click.Choice(PADDINGS))
@click.option("--truncating", default=None, type=click.Choice(PADDINGS),
              help=f"Where long documents lose tokens [default: {_EMBED.truncating}; with "
                   f"--encoder {ENCODER_TRUNCATING}: the start is kept].")
@click.option("--oov", default=_EMBED.oov, show_default=True, type=click.Choice(OOV_POLICIES),
              help="Vector for out-of-vocabulary words: zeros, one seeded random vector, or the "
                   "mean vector (word vectors only).")
@click.option("--dtype", default=_EMBED.dtype, show_default=True,
              type=click.Choice(DTYPES),
              help="How token vectors are stored: int8 keeps one scale per token vector (about "
                   "half of float16's bytes), dequantised where batches are made.")
@click.option("--val-frac", default=_SPLIT.val_frac, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Fraction of documents in the validation split (by hash of the doc id).")
@click.option("--test-frac", default=_SPLIT.test_frac, show_default=True,
              type=click.FloatRange(0, 1, max_open=True))
@click.option("--seed", default=_SPLIT.seed, show_default=True, type=click.IntRange(min=0),
              help="Seed of the split hash and the unk vector.")
@click.option("--chunk-docs", default=None, type=click.IntRange(min=1),
              help="Documents per block (the unit of writing and reading) [default: as many as "
                   "48 MiB would hold at max_len, within 64-1024: 503 at 1000 x 50 float16].")
@click.option("--shard-blocks", default=None, type=click.IntRange(min=0),
              help="Blocks per shard: each array's chunks of K consecutive blocks packed into one "
                   "object (Zarr v3 sharding; fewer, larger objects for object storage); 0 writes "
                   "one object per chunk [default: an existing store's own, else 8, fewer for a "
                   "corpus of under 32 blocks].")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Worker processes [default: all cores].")
@click.option("--scheduler", default=None,
              help="Run on Dask: local:N (a local cluster of N workers) or a scheduler address "
                   "(tcp://host:8786). Workers need embcache installed and the vectors cache.")
@click.option("--overwrite", is_flag=True, help="Replace an existing complete store.")
@click.option("--repair", is_flag=True,
              help="Verify a complete store (every chunk read) and rewrite only its damaged "
                   "blocks; give the options that built it.")
@click.option("--exist-ok", is_flag=True,
              help="Leave a complete store as it is (exit 0) instead of refusing; its settings "
                   "are not compared.")
@click.option("--cache-dir", default=None, envvar="EMBCACHE_CACHE_DIR",
              type=click.Path(file_okay=False),
              help="Where parsed vectors are cached [default: ~/.cache/embcache].")
@precision_option("An encoder's forward pass: auto is bfloat16 where this machine runs it "
                  "natively (a CPU with amx_bf16 or avx512_bf16, a GPU of compute capability "
                  "8.0+), else float32. The store records it; scoring raw text re-encodes at it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_friendly("the store is incomplete (marked so); rerun the same command to resume it from "
           "its last completed block")
def embed_corpus_cmd(corpus_path, vectors_path, tokenizer, encoder, encoder_batch, out,
                     corpus_format,
                     text_columns, label_column,
                     id_column, header, label_names_file, strip_headers, vectors_member,
                     vectors_format, max_len, padding, truncating, oov, dtype, val_frac, test_frac,
                     seed, chunk_docs, shard_blocks, workers, scheduler, overwrite, repair,
                     exist_ok, cache_dir, precision, quiet):
    """Tokenize a corpus once and write its embedded sequences to a Zarr v3 store.

    \b
    Example (20 Newsgroups with GloVe):
      embcache embed-corpus --corpus data/news20.tar.gz \\
          --vectors data/glove.6B.50d.txt.gz --strip-headers --out news20.zarr

    \b
    Example (the same with WordLlama's static subword table):
      embcache embed-corpus --corpus data/news20.tar.gz \\
          --vectors data/wordllama-l2-supercat-256/l2_supercat_256.safetensors \\
          --tokenizer data/wordllama-l2-supercat-256/l2_supercat_tokenizer_config.json \\
          --strip-headers --out news20-wordllama.zarr

    \b
    Example (the same with a frozen MiniLM encoder's token vectors):
      embcache embed-corpus --corpus data/news20.tar.gz \\
          --encoder data/all-MiniLM-L6-v2.zip --strip-headers --out news20-minilm.zarr

    Rerunning an interrupted command resumes it from its last completed chunk. A complete
    store is refused (no chunk is read) unless --overwrite, --repair or --exist-ok says what to
    do with it.
    """
    from embcache.cache.corpus import CorpusSpec
    from embcache.jobs.embed_corpus import embed_corpus

    spec = CorpusSpec(path=corpus_path, format=corpus_format, text_columns=tuple(text_columns),
                      label_column=label_column, id_column=id_column, header=header,
                      strip_headers=strip_headers, label_names_file=label_names_file)
    if (vectors_path is None) == (encoder is None):
        raise click.UsageError("Give either --vectors (word vectors or a static subword table) "
                               "or --encoder (a transformer encoder)")
    if encoder is not None:
        from embcache.cache.tfenv import quiet_tensorflow

        quiet_tensorflow()
    settings = default_settings(encoder is not None, max_len=max_len, padding=padding,
                                truncating=truncating, oov=oov, dtype=dtype, seed=seed)
    summary = embed_corpus(spec, vectors_path, out, settings=settings, encoder=encoder,
                           encoder_batch=encoder_batch, tokenizer=tokenizer,
                           split=SplitSettings(val_frac=val_frac, test_frac=test_frac, seed=seed),
                           vectors_member=vectors_member, vectors_format=vectors_format,
                           chunk_docs=chunk_docs, workers=workers, overwrite=overwrite,
                           repair=repair, exist_ok=exist_ok, progress=not quiet,
                           cache_dir=cache_dir, scheduler=scheduler, precision=precision,
                           shard_blocks=shard_blocks)
    click.echo(summary.line())


@main.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the attributes as JSON.")
@_friendly("nothing was changed")
def info_cmd(store, as_json):
    """Describe a store: its shape, vectors, tokenizer, labels and state.

    \b
    Example:
      embcache info news20.zarr --json
    """
    from embcache.jobs.info import describe_store

    info = describe_store(store)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        from embcache.jobs.info import format_info

        click.echo(format_info(info))


@main.command("verify")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (faults with their chunk keys and documents).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_friendly("nothing was changed")
def verify_cmd(store, as_json, quiet):
    """Read every chunk of STORE and report damaged or missing ones, with the documents they hold.
    Exit code 0 when the store is intact, 1 when it is damaged.

    Checksums (crc32c, on every chunk of stores written by this embcache) find changed bytes;
    the listing, compared with the chunks each block must hold, finds deleted ones. To repair a
    damaged store, rerun the embed-corpus command that built it (same corpus and options) with
    --repair: it rewrites only the damaged blocks.

    \b
    Example:
      embcache verify news20.zarr --json
    """
    from embcache.jobs.verify import verify

    report = verify(store, progress=not quiet and not as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(cli_words("\n".join(report.lines())))
    sys.exit(0 if report.ok else 1)


def training_options(fn):
    """The stream and optimiser options that train and tune share (TrainConfig's fields)."""
    options = [
        click.option("--epochs", default=_TRAIN.epochs, show_default=True, type=click.IntRange(min=1),
                     help="Most epochs to train (early stopping may end sooner)."),
        click.option("--batch-size", default=_TRAIN.batch_size, show_default=True, type=click.IntRange(min=1),
                     help="Documents per batch."),
        click.option("--learning-rate", default=_TRAIN.learning_rate, show_default=True,
                     type=click.FloatRange(min=0, min_open=True), help="Adam's learning rate."),
        click.option("--patience", default=_TRAIN.patience, show_default=True, type=click.IntRange(min=1),
                     help="Epochs without a better validation accuracy before stopping."),
        click.option("--seed", default=_TRAIN.seed, show_default=True, type=click.IntRange(min=0),
                     help="Seed of the initial weights, dropout and batch order."),
        click.option("--shuffle-docs", default=_TRAIN.shuffle_docs, show_default=True,
                     type=click.IntRange(min=1),
                     help="Shuffle buffer (documents; about 190 MB at 20 Newsgroups' mean length when "
                          "streaming), on top of per-epoch block shuffling."),
        click.option("--memory-mb", default=_TRAIN.memory_mb, show_default=True, type=click.IntRange(min=0),
                     help="Memory for the train and val splits decoded once and served from RAM in every "
                          "epoch; a split that does not fit streams from the store (0: always stream)."),
        click.option("--steps-per-execution", default=_TRAIN.steps_per_execution, show_default=True,
                     type=click.IntRange(min=1),
                     help="Training steps per compiled call (fewer Python round trips)."),
        click.option("--length-buckets/--no-length-buckets", default=_TRAIN.length_buckets,
                     show_default=True,
                     help="Pad each batch to its length bucket, or every batch to max_len."),
        precision_option("Arithmetic of the models: auto is bfloat16 (Keras' mixed policy: "
                         "float32 variables, softmax and loss) where the CPU or GPU runs it "
                         "natively, else float32; recurrent models, and on a CPU models "
                         "without a convolution, stay float32 at auto."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("train")
@click.option("--store", required=True, help="A complete, labelled store from embed-corpus.")
@click.option("--model", "model_name", default="cnn", show_default=True,
              help=f"A built-in model ({', '.join(sorted(BUILTINS))}), an "
                   "installed plugin (entry-point group embcache.models), or your own builder as "
                   "an import string package.module:function. Several, comma-separated "
                   "(cnn,kim_cnn,fasttext), train as a group from one stream of the store.")
@click.option("--out", default=None,
              help="Run folder of a lone model [default: runs/MODEL's name]; for a group (several "
                   "models, or a --grid) the parent folder of its runs [default: runs].")
@training_options
@click.option("--strategy", default=_TRAIN.strategy, show_default=True,
              type=click.Choice(STRATEGIES),
              help="multi-worker: tf.distribute.MultiWorkerMirroredStrategy over the workers in "
                   "TF_CONFIG, each reading its own chunks of the store (one model at a time).")
@click.option("--param", "params", multiple=True,
              help="Model hyperparameter as key=value (JSON value), e.g. --param filters=64.")
@click.option("--grid", "grid", multiple=True,
              help="Values to try as key=[v1,v2,...] (a JSON list), e.g. --grid 'dropout=[0.2,0.5]' "
                   "--grid 'widths=[[3,4],[3,4,5]]' or --grid 'learning_rate=[0.001,0.003]': every "
                   "combination, for every model, trains in one group.")
@click.option("--overwrite", is_flag=True, help="Replace run folders that hold a trained model.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own logs.")
@_friendly("training stopped and the run folders are as they were before; training does not "
           "resume: rerun the command to train again from the start")
def train_cmd(store, model_name, out, epochs, batch_size, learning_rate, patience, seed,
              shuffle_docs, memory_mb, steps_per_execution, length_buckets, precision, strategy,
              params, grid, overwrite, quiet, verbose):
    """Train embedding-free Keras models by streaming a store: one, or a group from one stream.

    \b
    Examples:
      embcache train --store news20.zarr --model cnn --out runs/cnn
      embcache train --store news20.zarr --model cnn,kim_cnn,fasttext --out runs
      embcache train --store news20.zarr --model fasttext --grid 'hidden=[0,64,256]' \\
          --grid 'learning_rate=[0.001,0.01]' --out runs/sweep
    """
    from embcache.cache.tfenv import quiet_tensorflow
    from embcache.jobs.grid import parse_grid, parse_hparams

    models = [m.strip() for m in model_name.split(",") if m.strip()]
    if not models:
        raise click.BadParameter("name at least one model", param_hint="'--model'")
    hparams, grid_values = parse_hparams(params), parse_grid(grid)
    quiet_tensorflow(verbose)
    _importable_cwd()
    from embcache.jobs.train import train_group

    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         patience=patience, seed=seed, shuffle_docs=shuffle_docs,
                         memory_mb=memory_mb, steps_per_execution=steps_per_execution,
                         length_buckets=length_buckets, strategy=strategy, precision=precision)
    result = train_group(store, models, out, grid=grid_values, config=config, hparams=hparams,
                         progress=not quiet, overwrite=overwrite)
    for line in result.lines():
        click.echo(line)
    if result.failed:
        for name, reason in result.failed.items():
            click.echo(f"Error: {name} failed: {reason}; its run folder was not written", err=True)
        sys.exit(1)


@main.command("tune")
@click.option("--store", required=True, help="A complete, labelled store from embed-corpus.")
@click.option("--model", "model_name", required=True,
              help="The model(s) to tune, as for train; with several (kim_cnn,fasttext) the model "
                   "is itself a parameter of the search.")
@click.option("--space", "space", multiple=True,
              help="A parameter to search, NAME=int:LOW:HIGH[:log], NAME=float:LOW:HIGH[:log] or "
                   "NAME=cat:A,B,... (JSON values: 'widths=cat:[3,4],[3,4,5]'); each applies to "
                   "every model that takes it, learning_rate to all.")
@click.option("--space-file", default=None, type=click.Path(dir_okay=False),
              help="A YAML file of parameters, with each model's own under `models:` (see the "
                   "README's \"Search hyperparameters\").")
@click.option("--trials", default=tune_defaults.TRIALS, show_default=True, type=click.IntRange(min=1),
              help="Trials in the study in all (finished and running), shared with other "
                   "processes working on it.")
@click.option("--parallel", default=tune_defaults.PARALLEL, show_default=True, type=click.IntRange(min=1),
              help="Trials trained together, as one group from one stream of the store.")
@click.option("--study", "study_url", default=None,
              help="Optuna storage: an SQLAlchemy URL (sqlite:///runs/tune.db, "
                   "postgresql://...) or journal:PATH [default: sqlite:///OUT/study.db].")
@click.option("--study-name", default=None, help="[default: the name of --out]")
@click.option("--out", default=tune_defaults.OUT, show_default=True,
              help="Parent folder of the trials' run folders (trial-NNNN), tune.png.")
@click.option("--sampler", default=tune_defaults.SAMPLERS[0], show_default=True,
              type=click.Choice(tune_defaults.SAMPLERS))
@click.option("--pruner", default=tune_defaults.PRUNERS[0], show_default=True,
              type=click.Choice(tune_defaults.PRUNERS))
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Seconds after which no new trial starts (running ones finish).")
@training_options
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own logs.")
@_friendly("the study keeps every finished trial and the running ones are marked failed; "
           "rerun the command to go on with the study")
def tune_cmd(store, model_name, space, space_file, trials, parallel, study_url, study_name, out,
             sampler, pruner, timeout, epochs, batch_size, learning_rate, patience, seed,
             shuffle_docs, memory_mb, steps_per_execution, length_buckets, precision, quiet,
             verbose):
    """Search hyperparameters: an Optuna study whose trials train in groups from one stream.

    \b
    Example:
      embcache tune --store news20.zarr --model kim_cnn,fasttext \\
          --space 'filters=int:32:256:log' --space 'dropout=float:0.0:0.5' \\
          --space 'learning_rate=float:1e-4:1e-2:log' --trials 32 --parallel 8 \\
          --study sqlite:///runs/tune.db --out runs/tune
      embcache runs runs/tune
    """
    from embcache.cache.tfenv import quiet_tensorflow

    if bool(space) == bool(space_file):
        raise click.UsageError("give the search space with --space (one or more) or "
                               "--space-file, not both")
    quiet_tensorflow(verbose)
    _importable_cwd()
    from embcache.jobs.tune import best_line, tune

    with contextlib.suppress(ImportError):  # no "study created" lines: the CLI's choice only
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         patience=patience, seed=seed, shuffle_docs=shuffle_docs,
                         memory_mb=memory_mb, steps_per_execution=steps_per_execution,
                         length_buckets=length_buckets, precision=precision)
    study = tune(store, model_name, space_file or list(space), trials=trials, parallel=parallel,
                 study=study_url, study_name=study_name, out=out, sampler=sampler, pruner=pruner,
                 timeout=timeout, config=config, progress=not quiet)
    click.echo(best_line(study))
    if not quiet:
        from pathlib import Path

        picture = f"Picture: {out}/tune.png; " if (Path(out) / "tune.png").exists() else ""
        click.echo(f"{picture}every trial: embcache runs {out}", err=True)


@main.command("runs")
@click.argument("folder", default="runs", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON (for programs).")
@click.option("--plot", "plot_path", default=None,
              help="Where the picture goes (accuracy against training time, one point per run) "
                   "[default: FOLDER/runs.png; 'none' for no picture].")
@_friendly("nothing was changed")
def runs_cmd(folder, as_json, plot_path):
    """Compare every trained run under FOLDER [default: runs], best validation accuracy first.

    \b
    Example:
      embcache runs runs
      tensorboard --logdir runs      # every run's curves side by side
    """
    from embcache.jobs.compare import list_runs, plot, table
    from embcache.jobs.runs import draw

    listing = list_runs(folder)
    if as_json:
        click.echo(json.dumps({"runs": listing.runs, "invalid": listing.invalid}, indent=2))
    elif listing.runs:
        click.echo(table(listing.runs))
    else:
        click.echo(f"No trained runs under {folder}", err=True)
    for path, why in listing.invalid.items():
        click.echo(f"Skipped {path}: {why}", err=True)
    if listing.runs and (plot_path or "").lower() != "none":
        from pathlib import Path

        target = Path(plot_path) if plot_path else Path(folder) / "runs.png"
        drawn = draw(target, plot, listing.runs, target, title=f"{len(listing.runs)} runs in {folder}")
        if drawn and not as_json:
            click.echo(f"Picture: {target}", err=True)


@main.command("score")
@click.option("--models", "model_dirs", required=True,
              help="Comma-separated run folders from `embcache train`, e.g. runs/cnn,runs/bilstm.")
@click.option("--input", "input_path", required=True,
              help="A store, or raw documents: folder, .tar.gz, .csv/.tsv, .jsonl, .txt.")
@click.option("--out", default="predictions.csv", show_default=True,
              help="Predictions file: .csv, .jsonl or .parquet.")
@click.option("--vectors", "vectors_path", default=None,
              help="The vectors file or static subword table the models were trained with (raw "
                   "input only); comma-separated for models of several representations.")
@click.option("--tokenizer", default=None,
              help="With a subword table file: its tokenizer.json (raw input only).")
@click.option("--stores", default=None,
              help="Comma-separated stores of the same documents for the models of other "
                   "representations than --input's (store input; default: the stores their "
                   "cards name).")
@click.option("--encoder", default=None,
              help="The transformer encoder the models were trained on, for models trained on an "
                   "encoder's store (raw input only; checked against their cards).")
@click.option("--split", default=None, type=click.Choice(SPLIT_NAMES),
              help="Score only this split of a store [default: every document].")
@click.option("--top-k", default=_SCORE.top_k, show_default=True, type=click.IntRange(min=1),
              help="Labels and probabilities per model and document.")
@click.option("--probabilities", is_flag=True,
              help="Also every label's probability, per model and for the ensemble: columns "
                   "<model>_p_<label>.")
@click.option("--batch-size", default=_SCORE.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--ensemble", default=_SCORE.ensemble, show_default=True,
              type=click.Choice(ENSEMBLES),
              help="Average the models' probabilities weighted by each card's validation "
                   "accuracy, or equally; or fit a pool on the validation split (a temperature "
                   "and a weight per model, kept only where cross-fitting shows it beats equal "
                   "weights and the best model alone), saved to --ensemble-out.")
@click.option("--ensemble-out", default=None, type=click.Path(file_okay=False),
              help="With --ensemble fit: the folder of the ensemble card (later: --models "
                   "FOLDER scores with it) [default: ensemble/ beside the first run].")
@click.option("--keep-store", default=None,
              help="Keep the scoring store of raw input here (default: a temporary one).")
@click.option("--metrics-dir", default=None, type=click.Path(file_okay=False),
              help="Where metrics.json and confusion_<model>.png go [default: beside --out].")
@corpus_options
@click.option("--cache-dir", default=None, envvar="EMBCACHE_CACHE_DIR",
              type=click.Path(file_okay=False),
              help="Where parsed vectors are cached [default: ~/.cache/embcache].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own logs.")
@precision_option("Arithmetic of the models: auto runs each as it trained, but a model "
                  "trained in bfloat16 in float32 where the CPU or GPU lacks native bfloat16; "
                  "float32 or bfloat16 converts every model.")
@click.option("--scheduler", default=None,
              help="Score on Dask: local:N (N worker processes here) or a scheduler address "
                   "(tcp://host:8786). Parts of whole blocks go to the workers (models loaded "
                   "once per worker) and are assembled into --out; rerun after a stop, it skips "
                   "the parts in OUT.parts/. Workers need embcache, the runs and the store.")
@click.option("--part-docs", default=PART_DOCS, show_default=True, type=click.IntRange(min=1),
              help="With --scheduler: documents per task (rounded up to whole blocks).")
@_friendly("no predictions were written (an earlier predictions file is unchanged); rerun "
           "the command to score again")
def score_cmd(model_dirs, input_path, out, vectors_path, tokenizer, stores, encoder, split, top_k,
              probabilities, batch_size, ensemble, ensemble_out, keep_store, metrics_dir, precision,
              scheduler, part_docs, corpus_format, text_columns, label_column, id_column, header,
              label_names_file, cache_dir, quiet, verbose):
    """Batch-classify documents with many models sharing one embedding pass.

    \b
    Example (the held-out test split of a store, two models):
      embcache score --models runs/cnn,runs/fasttext --input news20.zarr --split test \\
          --out predictions.csv
    """
    from embcache.cache.tfenv import quiet_tensorflow

    quiet_tensorflow(verbose)
    _importable_cwd()
    from embcache.cache.corpus import CorpusSpec
    from embcache.jobs.metrics import metrics_table
    from embcache.jobs.score import score

    spec = CorpusSpec(path=input_path, format=corpus_format, text_columns=tuple(text_columns),
                      label_column=label_column, id_column=id_column, header=header,
                      label_names_file=label_names_file)
    vectors = [v for v in vectors_path.split(",") if v] if vectors_path else None
    summary = score([d for d in model_dirs.split(",") if d], input_path, out, corpus=spec,
                    vectors=vectors[0] if vectors and len(vectors) == 1 else vectors,
                    encoder=encoder, tokenizer=tokenizer, split=split, top_k=top_k,
                    probabilities=probabilities, batch_size=batch_size,
                    stores=[x for x in stores.split(",") if x] if stores else None, ensemble_out=ensemble_out,
                    keep_store=keep_store, metrics_dir=metrics_dir, progress=not quiet,
                    cache_dir=cache_dir, ensemble=ensemble, precision=precision,
                    scheduler=scheduler, part_docs=part_docs)
    if summary.ensemble_card:
        click.echo(f"Ensemble fitted on the validation split -> {summary.ensemble_card}", err=True)
    if summary.metrics:
        click.echo(metrics_table(summary.metrics))
    click.echo(summary.line())


if __name__ == "__main__":
    main()
