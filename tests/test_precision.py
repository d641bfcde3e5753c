"""``--precision``: bfloat16 where the machine runs it natively (what ``auto`` sees is simulated
with ``EMBCACHE_NATIVE_BF16``), float32 elsewhere exactly as before; recurrent models stay
float32 at ``auto``; a model trained in bfloat16 scores in float32 on a machine without it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embcache.cache.errors import EmbcacheError
from embcache.cache.precision import native_bfloat16, resolve_precision
from tests.helpers import cli, small_store


@pytest.fixture(scope="module")
def store(tmp_path_factory, vectors_file):
    # 450 documents: 99.5% agreement allows two labels that differ
    return small_store(tmp_path_factory.mktemp("precision"), vectors_file[0], docs_per_label=150,
                       val_frac=0.2, test_frac=0.3)


@pytest.fixture
def native(monkeypatch):
    def set_native(on: bool):
        monkeypatch.setenv("EMBCACHE_NATIVE_BF16", "1" if on else "0")
    return set_native


def test_auto_follows_what_the_machine_runs_natively(native, monkeypatch):
    native(True)
    assert resolve_precision("auto").name == "bfloat16"
    assert resolve_precision("float32").name == "float32"
    native(False)
    p = resolve_precision("auto")
    assert p.name == "float32" and p.why == "auto: EMBCACHE_NATIVE_BF16=0"
    assert "emulated" in resolve_precision("bfloat16").why
    monkeypatch.delenv("EMBCACHE_NATIVE_BF16")
    ok, why = native_bfloat16()  # this machine's own answer names what it read
    assert ("amx_bf16" in why or "avx512_bf16" in why) if ok else "neither" in why or "GPU" in why
    with pytest.raises(EmbcacheError, match="Invalid value for `precision`"):
        resolve_precision("float16")


def test_an_encoder_in_bfloat16_skips_xla_on_a_cpu(native, monkeypatch):
    """XLA's CPU backend does not reach the matrix units: bfloat16 runs the plain graph there;
    float32 keeps XLA; on a GPU both keep it."""
    import embcache.cache.precision as prec
    from embcache.cache.encoder import xla_by_default

    native(True)
    assert xla_by_default("float32") and not xla_by_default("bfloat16")
    monkeypatch.setattr(prec, "bfloat16_units", lambda: ("gpu", "a GPU of compute capability 9.0"))
    assert xla_by_default("bfloat16") and xla_by_default("float32")


def card(run) -> dict:
    return json.loads((run / "model.json").read_text())


@pytest.mark.slow
def test_train_records_its_precision_and_models_without_convolutions_stay_float32(store, tmp_path, native):
    native(True)
    code, out = cli("train", "--store", store, "--model", "kim_cnn,gru,fasttext", "--epochs", "1",
                    "--batch-size", "32", "--out", tmp_path / "runs")
    assert code == 0, out
    first = next(line for line in out.splitlines() if line.startswith("Precision: "))
    assert "bfloat16 (auto: EMBCACHE_NATIVE_BF16=1)" in first
    assert "float32 (auto: recurrent layers run no faster in bfloat16)" in first
    # on a CPU, a model without a convolution (fasttext: pooling) stays float32 too
    assert "float32 (auto: without a convolution, a model runs no faster in bfloat16" in first
    assert card(tmp_path / "runs" / "kim_cnn")["precision"]["name"] == "bfloat16"
    assert card(tmp_path / "runs" / "gru")["precision"]["name"] == "float32"
    assert card(tmp_path / "runs" / "fasttext")["precision"]["name"] == "float32"
    native(False)
    code, out = cli("train", "--store", store, "--model", "kim_cnn", "--epochs", "1",
                    "--batch-size", "32", "--out", tmp_path / "f32")
    assert code == 0 and "Precision: float32 (auto: EMBCACHE_NATIVE_BF16=0)" in out
    assert card(tmp_path / "f32")["precision"]["name"] == "float32"
    assert card(tmp_path / "f32")["training"]["precision"] == "auto"


@pytest.mark.slow
def test_a_bfloat16_model_scores_in_float32_without_native_bfloat16(store, tmp_path, native):
    import embcache
    from embcache.models.precision import precision_of

    native(True)
    code, out = cli("train", "--store", store, "--model", "kim_cnn", "--epochs", "3",
                    "--batch-size", "16", "--out", tmp_path / "run")
    assert code == 0, out
    bf16 = embcache.Scorer([tmp_path / "run"])
    assert precision_of(bf16.runs[0].model) == "bfloat16"
    native(False)
    f32 = embcache.Scorer([tmp_path / "run"])
    assert precision_of(f32.runs[0].model) == "float32"
    assert f32.precision_line() == "Precision: float32 (auto: EMBCACHE_NATIVE_BF16=0)"
    a = bf16.classify(str(store))
    b = f32.classify(str(store))
    same = float(np.mean(a["run_label"].to_numpy() == b["run_label"].to_numpy()))
    assert same >= 0.995, same
    assert np.allclose(a["run_prob"], b["run_prob"], atol=0.05)
    code, out = cli("score", "--models", tmp_path / "run", "--input", store, "--out",
                    tmp_path / "p.csv", "--precision", "float32")
    assert code == 0 and "Precision: float32 (asked for)" in out


@pytest.mark.slow
def test_float32_is_exactly_as_before(store, tmp_path, native):
    """Without native bfloat16 nothing changes: the same weights as --precision float32."""
    import embcache

    native(False)
    runs = {}
    for precision in ("auto", "float32"):
        out = tmp_path / precision
        embcache.train(str(store), "cnn", str(out), config={"epochs": 1, "batch_size": 32,
                                                            "precision": precision})
        runs[precision] = embcache.Scorer([out]).runs[0].model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(runs["auto"], runs["float32"]))


def test_info_says_what_auto_runs_here(store, native):
    native(False)
    code, out = cli("info", store)
    assert code == 0
    assert "precision    jobs on this machine run float32 at --precision auto " \
           "(EMBCACHE_NATIVE_BF16=0)" in out


USER_MODEL = '''
import keras
from embcache.models import inputs

def build_plain(*, dim, num_classes, max_len=0, padding="pre"):
    ins = inputs(dim)
    x = keras.layers.GlobalAveragePooling1D()(ins["embedded"])
    return keras.Model(ins, keras.layers.Dense(num_classes, activation="softmax")(x))

def build_conv(*, dim, num_classes, max_len=0, padding="pre"):
    ins = inputs(dim)
    x = keras.layers.Conv1D(16, 3, padding="same", activation="relu")(ins["embedded"])
    x = keras.layers.GlobalMaxPooling1D()(x)
    return keras.Model(ins, keras.layers.Dense(num_classes, activation="softmax")(x))
'''


def test_a_model_of_your_own_gets_a_float32_output(store, tmp_path, native, monkeypatch):
    """Its softmax ran in bfloat16: a float32 layer is appended, so the loss is float32."""
    import keras

    from embcache.cache.precision import resolve_precision
    from embcache.models.precision import build, precision_of

    (tmp_path / "plain_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import plain_models

    native(True)
    model, p = build(lambda: plain_models.build_conv(dim=8, num_classes=3),
                     resolve_precision("auto"), "auto")
    assert p.name == "bfloat16" and precision_of(model) == "bfloat16"
    # without a convolution (pooling only), auto keeps a model float32 on a CPU
    plain, q = build(lambda: plain_models.build_plain(dim=8, num_classes=3),
                     resolve_precision("auto"), "auto")
    assert q.name == "float32" and precision_of(plain) == "float32" and "convolution" in q.why
    assert model.outputs[0].dtype == "float32" and model.layers[-1].name == "float32_output"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    tfidf, p = build(lambda: __import__("embcache").models.build(
        "tfidf", max_len=160, dim=8, num_classes=3), resolve_precision("auto"), "auto")
    assert p.name == "float32" and p.why == "its layers compute in float32"
