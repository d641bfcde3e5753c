"""Run folders: the model card written by ``train`` and read back, verified, by ``score``.

A card ties a model file to the store settings it was trained on. ``model_sha256`` makes the pair
tamper-evident: a card edited by hand, or a model file swapped under it, is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embcache.cache.errors import ModelError, StrPath, path_arg, renamed
from embcache.cache.meta import StoreMeta

if TYPE_CHECKING:  # a type only: runs.py stays below the training code
    from embcache.jobs.config import TrainConfig

CARD_VERSION = 3  # 3: the store's metadata embedded whole; 2: fields copied by hand
CARD_FILE = "model.json"
MODEL_FILE = "model.keras"
_REQUIRED = ("card_version", "model", "store", "model_sha256", "card_sha256")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store_card_fields(store) -> dict[str, Any]:
    """What a card records of the store it was trained on: its whole metadata (all a scorer
    needs to embed new input the same way, and to check a store against the model)."""
    from embcache.cache import __version__

    return {"card_version": CARD_VERSION, "store_url": str(store.url),
            "store": store.meta.to_attrs(), "embcache_version": __version__}


def card_digest(card: dict[str, Any]) -> str:
    """sha256 of the card's canonical JSON, without its own ``card_sha256`` field."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_card(run_dir: Path, card: dict[str, Any]) -> None:
    """Write ``model.json`` with the model file's and the card's own checksums."""
    card = {**card, "model_sha256": file_sha256(run_dir / MODEL_FILE)}
    card["card_sha256"] = card_digest(card)
    tmp = run_dir / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2))
    os.replace(tmp, run_dir / CARD_FILE)  # atomic: a card is whole or absent


@dataclass
class Run:
    """A run folder: its verified card, and its Keras model once loaded (``None`` before)."""

    path: Path
    name: str
    card: dict[str, Any]
    model: Any

    @cached_property
    def meta(self) -> StoreMeta:
        """The metadata of the store the model was trained on (checked by ``read_card``;
        parsed once: score reads the label names on every batch)."""
        return card_meta(self.card, self.path / CARD_FILE)

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.label_names or ())


def card_meta(card: dict[str, Any], where: Path) -> StoreMeta:
    if not isinstance(card.get("store"), dict):
        raise ModelError(f"Model card {where}: `store` is not an object; it was not written by "
                         "`embcache train` or has been edited")
    return StoreMeta.from_attrs(card["store"], f"Model card {where}", error=ModelError)


def read_card(run_dir: str | Path) -> dict[str, Any]:
    """Read and check a run folder's card and model file (without loading the model)."""
    run = Path(run_dir)
    card_path, model_path = run / CARD_FILE, run / MODEL_FILE
    if not run.is_dir():
        raise ModelError(f"Run folder not found: {run}")
    if not card_path.is_file():
        raise ModelError(f"{run} has no model card ({CARD_FILE}); train it with `embcache train`")
    if not model_path.is_file():
        raise ModelError(f"{run} has no model file ({MODEL_FILE})")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"Model card {card_path} is not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise ModelError(f"Model card {card_path} is not a JSON object; it was not written by "
                         "`embcache train`")
    if "card_version" in card and card["card_version"] != CARD_VERSION:
        raise ModelError(f"Model card {card_path} has version {card['card_version']}; this "
                         f"embcache reads version {CARD_VERSION}: retrain it into the same folder "
                         "with `overwrite=True`")
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise ModelError(f"Model card {card_path} lacks {', '.join(missing)}; it was not written "
                         "by `embcache train` or has been edited")
    if card_digest(card) != card["card_sha256"]:
        raise ModelError(f"Model card {card_path} was edited after training (its checksum does "
                         "not match); retrain, or restore the card that train wrote")
    if file_sha256(model_path) != card["model_sha256"]:
        raise ModelError(f"{model_path} does not match its card (sha256 differs): the card or "
                         "the model was changed after training")
    if not card_meta(card, card_path).labelled:
        raise ModelError(f"Model card {card_path} names no labels; it was not written by "
                         "`embcache train`")
    return card


@renamed(run_dir="run")
def load_run(run: StrPath, card: dict[str, Any] | None = None) -> Run:
    """Read, verify and load a run folder; the model is loaded in Keras safe mode.

    ``card``: the folder's card as ``read_card`` already returned it (skips reading and hashing
    the files a second time).

    Raises:
        ModelError: no card, a tampered or foreign card, or a model that needs unsafe loading.
    """
    folder = Path(path_arg(run, "run"))
    card = card if card is not None else read_card(folder)
    import keras

    from embcache.models.registry import reimport_source

    # Registers the custom layers safe mode may load: the built-in modules, and the module the
    # card names for a model from elsewhere. Only now, after read_card verified the checksums:
    # importing a module runs its code.
    reimport_source(card.get("model_source"), f"Model card {folder / CARD_FILE}")

    try:
        model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True, compile=False)
    except ValueError as e:
        if "unsafe" in str(e).lower() or "lambda" in str(e).lower():
            raise ModelError(f"{folder / MODEL_FILE} needs unsafe deserialization (e.g. a Lambda "
                             "layer holding Python code); embcache loads models in safe mode "
                             "only") from None
        raise ModelError(f"{folder / MODEL_FILE} cannot be loaded: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt zip, a foreign file...
        raise ModelError(f"{folder / MODEL_FILE} cannot be loaded: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    shape = model.output_shape
    embedded = next((i for i in model.inputs if i.name.startswith("embedded")), None)
    meta = card_meta(card, folder / CARD_FILE)
    lexical_only = embedded is None and any(i.name.startswith("token_ids") for i in model.inputs)
    if not lexical_only and (embedded is None or tuple(embedded.shape[1:]) != (None, meta.dim)):
        raise ModelError(f"{folder / MODEL_FILE} does not take (any length, dim={meta.dim}) "
                         "embedded input as its card says")
    if shape[-1] != len(meta.label_names or ()):
        raise ModelError(f"{folder / MODEL_FILE} predicts {shape[-1]} classes but its card names "
                         f"{len(meta.label_names or ())} labels")
    return Run(path=folder, name=folder.name, card=card, model=model)


def as_model(model: Any) -> Any:
    """A Keras model from what a caller passed: the model itself, a :class:`Run`, or a run
    folder's path (read, verified and loaded by :func:`load_run`).

    Raises:
        ModelError: a path that is not a run folder (see :func:`load_run`).
    """
    if isinstance(model, Run):
        return model.model
    if isinstance(model, (str, os.PathLike)):
        return load_run(model).model
    return model


def run_card(store, m, config: TrainConfig, plans: dict, *, epochs_run: int, best_epoch: int,
             seconds: float, samples_per_s: float, model_path: Path) -> dict:
    """A trained run's card (before its checksums): the same fields whichever path trained it
    (a group, a lone model or several workers). ``m``: the run's
    :class:`~embcache.jobs.group.Member` (its model source, hyperparameters, learning rate,
    model, metrics and the precision it trained in)."""
    source, precision = m.source, m.precision
    return {
        **store_card_fields(store),
        "model": source.ref,
        "model_source": source.record(),
        "hyperparameters": m.hparams,
        "hyperparameters_given": m.given,
        "training": {**asdict(config), "learning_rate": m.learning_rate, "epochs_run": epochs_run,
                     "best_epoch": best_epoch, "seconds": round(seconds, 2),
                     "samples_per_s": round(samples_per_s, 1),
                     "train_docs": plans["train"].num_docs, "val_docs": plans["val"].num_docs},
        "metrics": m.metrics,
        "model_bytes": model_path.stat().st_size,
        "parameter_count": int(m.model.count_params()),
        "precision": {"name": precision.name, "why": precision.why},
    }


def publish_run(stage: Path, final: Path) -> None:
    """Put a finished run in place of ``final`` (renames: the old one goes only after)."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def draw(path: Path, picture: Callable[..., None], *args: Any, **kwargs: Any) -> bool:
    """``picture(*args, **kwargs)``, which draws ``path``, best effort: a failure (matplotlib
    missing or broken, a full disk) is one warning line on stderr, never an error. Pictures are
    drawn after the results they show are written and published, and nothing depends on them;
    returns whether it was drawn."""
    try:
        picture(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - a picture never costs a result
        import logging

        logging.getLogger("embcache").warning(
            "Warning: could not draw %s (%s: %s); everything else was written", path,
            type(e).__name__, e)
        return False
    return True


def plot_curves(history: dict, path: Path, title: str) -> None:
    """Loss and accuracy for train and validation, one panel each."""
    from matplotlib.figure import Figure  # no pyplot: nothing process-wide (backend, figures)

    epochs = range(1, len(history["loss"]) + 1)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[key], "o-", label="train")
        ax.plot(epochs, history[f"val_{key}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
