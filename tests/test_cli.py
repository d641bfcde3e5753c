"""Every bad input gets one clear line and a non-zero exit code, never a traceback."""

import json

import click
import pytest
from click.testing import CliRunner

from embcache.jobs.cli import main


def run(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    return result.exit_code, result.output


def embed_args(corpus, vectors, out, *extra):
    return ("embed-corpus", "--corpus", corpus, "--vectors", vectors, "--out", out, "-q", *extra)


def test_embed_and_info(tmp_path, folder_corpus, vectors_file):
    out = tmp_path / "s.zarr"
    code, text = run(*embed_args(folder_corpus, vectors_file[0], out, "--max-len", "10"))
    assert code == 0, text
    assert text.startswith("Embedded 24 documents (") and "OOV rate" in text
    code, text = run("info", out)
    assert code == 0 and "24 of up to 10 tokens x 8 float16 (ragged" in text and "labels       neg, pos" in text
    code, text = run("info", out, "--json")
    info = json.loads(text)
    assert info["complete"] is True and info["label_names"] == ["neg", "pos"]


@pytest.mark.parametrize("make, message", [
    (lambda p: (str(p / "missing"), None), "Error: Corpus not found: {p}/missing"),
    (lambda p: ((p / "e").mkdir() or str(p / "e"), None), "Error: Corpus {p}/e holds no documents"),
    (lambda p: (str(p / "c.csv"), "nocol"),
     "Error: Text column 'nocol' does not exist in {p}/c.csv; its columns are: text, label"),
    (lambda p: ((p / "x.tar.gz").write_bytes(b"\x1f\x8bjunkjunkjunk") and str(p / "x.tar.gz"), None),
     "Error: Cannot read archive {p}/x.tar.gz:"),
])
def test_bad_corpus(tmp_path, vectors_file, make, message):
    (tmp_path / "c.csv").write_text("text,label\nhello,a\n")
    corpus, column = make(tmp_path)
    extra = ("--text-column", column) if column else ()
    code, text = run(*embed_args(corpus, vectors_file[0], tmp_path / "o.zarr", *extra))
    assert code == 1
    assert text.strip().splitlines() == [text.strip().splitlines()[0]]
    assert text.startswith(message.format(p=tmp_path))
    assert not (tmp_path / "o.zarr").exists()


def test_bad_vectors_and_outputs(tmp_path, folder_corpus, vectors_file):
    bad = tmp_path / "v.txt"
    bad.write_text("a 1 2\nb 1\n")
    code, text = run(*embed_args(folder_corpus, bad, tmp_path / "o.zarr"))
    assert (code, text.strip()) == (1, f"Error: {bad}, line 2: expected a word and 2 values, found 2 fields")
    assert not (tmp_path / "o.zarr").exists()
    code, text = run(*embed_args(folder_corpus, tmp_path / "none.txt", tmp_path / "o.zarr"))
    assert (code, text.strip()) == (1, f"Error: Vectors file not found: {tmp_path}/none.txt")
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    code, text = run(*embed_args(folder_corpus, vectors_file[0], afile))
    assert (code, text.strip()) == (1, f"Error: Output {afile} is a file, not a store folder")
    code, text = run(*embed_args(folder_corpus, vectors_file[0], tmp_path / "o.zarr", "--max-len", "0"))
    assert code == 2 and "Invalid value for '--max-len': 0 is not in the range x>=1." in text
    code, text = run(*embed_args(folder_corpus, vectors_file[0], tmp_path / "o.zarr", "--padding", "mid"))
    assert code == 2 and "Invalid value for '--padding'" in text
    for option, value in (("--val-frac", "1"), ("--test-frac", "-0.1"), ("--chunk-docs", "0"),
                          ("--workers", "0"), ("--max-len", "ten")):
        code, text = run(*embed_args(folder_corpus, vectors_file[0], tmp_path / "o.zarr", option, value))
        assert code == 2 and f"Invalid value for '{option}'" in text, (option, text)
    assert not (tmp_path / "o.zarr").exists()


def test_info_refuses_what_is_not_a_store(tmp_path):
    code, text = run("info", tmp_path / "nothing.zarr")
    assert (code, text.strip()) == (1, f"Error: Store not found: {tmp_path}/nothing.zarr (build it "
                                       "with `embcache embed-corpus`)")
    code, text = run("verify", tmp_path / "nothing.zarr")  # the error alone, no progress bar before it
    assert (code, text.strip()) == (1, f"Error: Store not found: {tmp_path}/nothing.zarr (build it "
                                       "with `embcache embed-corpus`)")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x").write_text("x")
    code, text = run("info", tmp_path / "folder")
    assert (code, text.strip()) == (1, f"Error: {tmp_path}/folder is not an embcache store")
    import zarr

    zarr.create_array(str(tmp_path / "array.zarr"), shape=(3,), dtype="int32")  # a store's `tokens`
    code, text = run("info", tmp_path / "array.zarr")
    assert (code, text.strip()) == (1, f"Error: {tmp_path}/array.zarr is not an embcache store")


def test_the_cli_reference_is_generated_from_the_commands():
    """Every option of every command is in docs/cli.md, as the commands describe it."""
    import re
    from pathlib import Path

    from embcache.jobs.reference import BEGIN, END, markdown

    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    section = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    assert section, "docs/cli.md lacks the CLI reference section"
    assert section.group(1) == markdown(), "stale: run `make cli-reference`"
    # Help texts are joined into single-spaced lines: no docstring indentation survives.
    assert [ln for ln in markdown().splitlines() if "  " in ln] == []
    for name, cmd in main.commands.items():
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("--"):
                    assert f"`{opt}`" in section.group(1), f"{name} {opt}"


def test_the_cli_reference_shows_every_default_that_help_shows():
    """Zero defaults too (`--seed` is 0): `0 in (None, False)` is true in Python."""
    from click.testing import CliRunner

    from embcache.jobs.reference import _option

    for name, cmd in main.commands.items():
        shown = [p for p in cmd.params if isinstance(p, click.Option) and p.show_default
                 and not p.is_flag and p.default is not None and p.default != ()]
        help_text = " ".join(CliRunner().invoke(main, [name, "--help"]).output.split())
        for p in shown:
            assert f"(default: {p.default})" in _option(p), f"{name} {p.opts}"
            assert f"[default: {p.default}" in help_text, f"{name} {p.opts}"
    seeds = [_option(p) for p in main.commands["train"].params if "--seed" in p.opts]
    assert seeds and seeds[0].endswith("(default: 0) |")


def test_choices_and_defaults_come_from_the_functions():
    """The CLI reads its choice lists and defaults from the typed functions' homes."""
    import inspect

    from embcache.cache import corpus, vectors
    from embcache.cache.meta import SPLIT_NAMES
    from embcache.cache.settings import default_settings
    from embcache.jobs import tune

    def option(cmd, name):
        return next(p for p in main.commands[cmd].params if name in p.opts)

    assert tuple(option("embed-corpus", "--corpus-format").type.choices) == corpus.FORMATS
    assert tuple(option("embed-corpus", "--vectors-format").type.choices) == vectors.FORMATS
    assert tuple(option("score", "--split").type.choices) == SPLIT_NAMES
    signature = inspect.signature(tune.tune).parameters
    for flag, arg in [("--trials", "trials"), ("--parallel", "parallel"), ("--out", "out"),
                      ("--sampler", "sampler"), ("--pruner", "pruner")]:
        assert option("tune", flag).default == signature[arg].default, flag
    assert tuple(option("tune", "--sampler").type.choices) == tune.SAMPLERS
    assert tuple(option("tune", "--pruner").type.choices) == tune.PRUNERS
    encoder = default_settings(True)
    assert (encoder.max_len, encoder.truncating) == (256, "post")
    assert default_settings(False, max_len=None, truncating="post").max_len == 1000
