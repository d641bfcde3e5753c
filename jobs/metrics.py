"""Classification metrics accumulated batch by batch (a confusion matrix is all they need)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class Confusion:
    """A running confusion matrix; true labels outside the model's label set (-1) are skipped."""

    def __init__(self, label_names: list[str]):
        self.label_names = label_names
        self.matrix = np.zeros((len(label_names), len(label_names)), dtype=np.int64)

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        keep = truth >= 0
        np.add.at(self.matrix, (truth[keep], predicted[keep]), 1)

    def report(self) -> dict:
        m = self.matrix
        tp = np.diag(m).astype(float)
        predicted, actual = m.sum(axis=0), m.sum(axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                       where=(precision + recall) > 0)
        present = actual > 0
        total = int(m.sum())
        return {
            "docs": total,
            "accuracy": float(tp.sum() / total) if total else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                                 "support": int(s)}
                          for name, p, r, f, s in zip(self.label_names, precision, recall, f1, actual)},
            "confusion_matrix": m.tolist(),
            "labels": self.label_names,
        }

    def plot(self, path: Path, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self.label_names)
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 3), max(4, 0.45 * n + 2)))
        im = ax.imshow(self.matrix, cmap="Blues")
        ax.set_xticks(range(n), self.label_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), self.label_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def write_metrics(confusions: dict[str, Confusion], folder: Path, models: list[str],
                  ensemble: dict | None = None) -> dict:
    """``metrics.json`` and ``confusion_<model>.png`` in ``folder``; returns the metrics.

    ``ensemble``: how the ensemble was made (``{"method": ..., "weights": {model: weight}}``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {"models": {name: confusions[name].report() for name in models}}
    if "ensemble" in confusions:
        out["ensemble"] = {**confusions["ensemble"].report(), **(ensemble or {})}
    for name, conf in confusions.items():
        conf.plot(folder / f"confusion_{name}.png", title=f"{name}: accuracy "
                  f"{conf.report()['accuracy']:.3f}")
    (folder / "metrics.json").write_text(json.dumps(out, indent=2))
    return out
