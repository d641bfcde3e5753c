"""``embcache runs``: every run folder under a folder, compared in one table and one picture.

A run is any folder holding a ``model.json`` written by ``embcache train`` (found recursively,
so ``runs/`` with groups and sweeps in subfolders works). Cards are read and verified as
``score`` reads them; a folder whose card does not verify is listed apart with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embcache.cache.errors import EmbcacheError, ModelError, StrPath, path_arg
from embcache.jobs.ensemble import ENSEMBLE_FILE
from embcache.jobs.runs import CARD_FILE, read_card

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("run", "model", "parameters", "val_accuracy", "test_accuracy", "val_macro_f1",
           "test_macro_f1", "best_epoch", "epochs", "samples_per_s", "train_seconds",
           "parameter_count", "model_mb")


@dataclass
class Listing:
    runs: list[dict[str, Any]]
    invalid: dict[str, str]  # folder -> why its card was not read

    def to_frame(self):
        """The runs as ``embcache runs`` shows them, one row each (best validation accuracy
        first), as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.runs, columns=list(self.runs[0]) if self.runs else ["run"])


def runs(folder: StrPath = "runs") -> pd.DataFrame:
    """Every run (and ensemble card) under ``folder`` as a ``pandas.DataFrame``: the table
    ``embcache runs`` prints (run, path, model, parameters, val/test accuracy and macro-F1,
    epochs, speed, size), best validation accuracy first. Runs whose card cannot be read are
    left out (:func:`list_runs` names them).

    Raises:
        EmbcacheError: ``folder`` does not exist.
    """
    return list_runs(Path(path_arg(folder, "folder"))).to_frame()


def _parameters(card: dict) -> str:
    """What the run set: its hyperparameters given (``--param``/``--grid``) and a learning rate
    other than the default."""
    shown = dict(card.get("hyperparameters_given") or {})
    from embcache.jobs.config import TrainConfig

    lr = (card.get("training") or {}).get("learning_rate")
    if lr is not None and lr != TrainConfig.learning_rate:
        shown["learning_rate"] = lr
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in shown.items())


def _row(path: Path, root: Path, card: dict) -> dict[str, Any]:
    t, m = card.get("training") or {}, card.get("metrics") or {}
    rel = path.relative_to(root) if path != root else Path(path.name)
    return {
        "run": str(rel), "path": str(path), "model": card.get("model"),
        "parameters": _parameters(card),
        "val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy"),
        "val_macro_f1": m.get("val_macro_f1"), "test_macro_f1": m.get("test_macro_f1"),
        "best_epoch": t.get("best_epoch"), "epochs": t.get("epochs_run"),
        "samples_per_s": t.get("samples_per_s"), "train_seconds": t.get("seconds"),
        "parameter_count": card.get("parameter_count"),
        "model_mb": round(card["model_bytes"] / 1e6, 3) if card.get("model_bytes") else None,
        "group": (card.get("group") or {}).get("runs"),
    }


def list_runs(folder: str | Path) -> Listing:
    """Every run under ``folder`` (or ``folder`` itself), best validation accuracy first.

    Raises:
        EmbcacheError: ``folder`` does not exist.
    """
    root = Path(folder)
    if not root.is_dir():
        raise EmbcacheError(f"Runs folder not found: {root}; train runs into it "
                            "first (`out=...`)")
    rows, invalid = [], {}
    for card_path in sorted(root.rglob(CARD_FILE)):
        run = card_path.parent
        if any(p.name.startswith(".") for p in run.relative_to(root).parents if p.name) or \
                run.name.startswith("."):
            continue  # a run being built (.name.partial) or replaced (.name.old)
        try:
            rows.append(_row(run, root, read_card(run)))
        except ModelError as e:
            invalid[str(run)] = str(e)
    for card_path in sorted(root.rglob(ENSEMBLE_FILE)):
        if card_path.parent.name.startswith("."):
            continue
        try:
            rows.append(_ensemble_row(card_path.parent, root, json.loads(card_path.read_text())))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            invalid[str(card_path.parent)] = f"not an ensemble card written by embcache ({e})"
    rows.sort(key=lambda r: -(r["val_accuracy"] if r["val_accuracy"] is not None else -1))
    return Listing(rows, invalid)


def _ensemble_row(path: Path, root: Path, card: dict) -> dict[str, Any]:
    """A fitted ensemble (``embcache score --ensemble fit``): its validation accuracy is the
    chosen pool's accuracy held out by cross-fitting (fitting it saw those documents)."""
    fit = card["fit"]
    rel = path.relative_to(root) if path != root else Path(path.name)
    members = ",".join(m["name"] for m in card["members"])
    return {"run": str(rel), "path": str(path), "model": f"ensemble ({card['chosen']})",
            "parameters": f"members={members}",
            "val_accuracy": fit["cross_fit"][card["chosen"]]["accuracy"], "test_accuracy": None,
            "val_macro_f1": None, "test_macro_f1": None, "best_epoch": None, "epochs": None,
            "samples_per_s": None, "train_seconds": None, "parameter_count": None,
            "model_mb": None, "group": None}


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict]) -> str:
    """A fixed-width text table of the runs (one line each)."""
    heads = ["run", "model", "parameters", "val acc", "test acc", "val F1", "test F1", "best",
             "samples/s", "train s", "params", "MB"]
    body = [[r["run"], r["model"], r["parameters"] or "-", _cell(r["val_accuracy"]),
             _cell(r["test_accuracy"]), _cell(r["val_macro_f1"]), _cell(r["test_macro_f1"]),
             f"{_cell(r['best_epoch'])}/{_cell(r['epochs'])}", _cell(r["samples_per_s"], 0),
             _cell(r["train_seconds"], 1), _cell(r["parameter_count"]), _cell(r["model_mb"], 2)]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(heads, *body)]
    numeric = set(range(3, len(heads)))

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(heads), line(["-" * w for w in widths]), *map(line, body)])


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Validation accuracy against training time, one labelled point per run."""
    from matplotlib.figure import Figure  # no pyplot: nothing process-wide (backend, figures)

    points = [r for r in rows if r["val_accuracy"] is not None and r["train_seconds"]]
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for r in points:
        ax.scatter(r["train_seconds"], r["val_accuracy"], s=30)
        ax.annotate(r["run"], (r["train_seconds"], r["val_accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training time, s (log scale; a group's runs share one stream)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
