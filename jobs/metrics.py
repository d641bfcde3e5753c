"""Classification metrics accumulated batch by batch (a confusion matrix is all they need)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embcache.jobs.runs import draw

# At most this many labels get the whole matrix, in metrics.json and in the picture; with more,
# the picture shows the most confused labels and the JSON lists the most confused pairs.
MATRIX_LABELS = 50
CONFUSED_PAIRS = 100


class Confusion:
    """A running confusion matrix; true labels outside the model's label set (-1) are skipped.

    Memory: kept sparse (one count per (true, predicted) pair that occurred, plus per-label
    totals), so 10,000 labels cost what the documents scored cost, not 10,000^2 counts.
    """

    def __init__(self, label_names: list[str]):
        self.label_names = list(label_names)
        n = len(self.label_names)
        self.pairs: dict[int, int] = {}  # true * n + predicted -> count
        self.actual = np.zeros(n, dtype=np.int64)
        self.predicted = np.zeros(n, dtype=np.int64)
        self.correct = np.zeros(n, dtype=np.int64)

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        keep = truth >= 0
        t, p = np.asarray(truth)[keep].astype(np.int64), np.asarray(predicted)[keep].astype(np.int64)
        n = len(self.label_names)
        self.actual += np.bincount(t, minlength=n)
        self.predicted += np.bincount(p, minlength=n)
        self.correct += np.bincount(t[t == p], minlength=n)
        keys, counts = np.unique(t * n + p, return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist()):
            self.pairs[k] = self.pairs.get(k, 0) + c

    @property
    def matrix(self) -> np.ndarray:
        """The dense ``(n, n)`` matrix (for at most :data:`MATRIX_LABELS` labels: callers with
        more use :meth:`most_confused`)."""
        n = len(self.label_names)
        m = np.zeros((n, n), dtype=np.int64)
        for k, c in self.pairs.items():
            m[k // n, k % n] = c
        return m

    def most_confused(self, k: int = CONFUSED_PAIRS) -> list[tuple[int, int, int]]:
        """The ``k`` largest off-diagonal counts as ``(true, predicted, count)``."""
        n = len(self.label_names)
        off = [(c, key // n, key % n) for key, c in self.pairs.items() if key // n != key % n]
        off.sort(key=lambda x: (-x[0], x[1], x[2]))
        return [(t, p, c) for c, t, p in off[:k]]

    def report(self) -> dict:
        tp = self.correct.astype(float)
        predicted, actual = self.predicted, self.actual
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                       where=(precision + recall) > 0)
        present = actual > 0
        total = int(actual.sum())
        out = {
            "docs": total,
            "accuracy": float(tp.sum() / total) if total else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                                 "support": int(s)}
                          for name, p, r, f, s in zip(self.label_names, precision, recall, f1, actual)},
            "labels": self.label_names,
        }
        if len(self.label_names) <= MATRIX_LABELS:
            out["confusion_matrix"] = self.matrix.tolist()
        else:
            names = self.label_names
            out["most_confused"] = [{"true": names[t], "predicted": names[p], "count": c}
                                    for t, p, c in self.most_confused()]
        return out

    def plot(self, path: Path, title: str) -> None:
        """The matrix; with more than :data:`MATRIX_LABELS` labels, only the rows and columns of
        the labels most involved in confusions (a 10,000-label picture is unreadable and would
        not fit in memory)."""
        from matplotlib.figure import Figure  # no pyplot: nothing process-wide

        n = len(self.label_names)
        if n <= MATRIX_LABELS:
            keep = np.arange(n)
            matrix = self.matrix
        else:
            weight: dict[int, int] = {}
            for t, p, c in self.most_confused(10 * MATRIX_LABELS):
                weight[t] = weight.get(t, 0) + c
                weight[p] = weight.get(p, 0) + c
            keep = np.array(sorted(sorted(weight, key=lambda i: -weight[i])[:MATRIX_LABELS]
                                   or range(MATRIX_LABELS)), dtype=np.int64)
            index: dict[int, int] = {int(i): j for j, i in enumerate(keep)}
            matrix = np.zeros((len(keep), len(keep)), dtype=np.int64)
            for key, c in self.pairs.items():
                at, ap = index.get(key // n), index.get(key % n)
                if at is not None and ap is not None:
                    matrix[at, ap] = c
            title = f"{title}\n(the {len(keep)} most confused of {n:,} labels)"
        names = [self.label_names[i] for i in keep]
        k = len(keep)
        fig = Figure(figsize=(max(5, 0.45 * k + 3), max(4, 0.45 * k + 2)))
        ax = fig.subplots()
        im = ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def write_metrics(confusions: dict[str, Confusion], folder: Path, models: list[str],
                  ensemble: dict | None = None) -> dict:
    """``metrics.json`` and ``confusion_<model>.png`` in ``folder``; returns the metrics.

    ``ensemble``: how the ensemble was made (``{"method": ..., "weights": {model: weight}}``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {"models": {name: confusions[name].report() for name in models}}
    if "ensemble" in confusions:
        out["ensemble"] = {**confusions["ensemble"].report(), **(ensemble or {})}
    (folder / "metrics.json").write_text(json.dumps(out, indent=2))
    for name, conf in confusions.items():
        path = folder / f"confusion_{name}.png"
        draw(path, conf.plot, path, title=f"{name}: accuracy {conf.report()['accuracy']:.3f}")
    return out


def metrics_table(metrics: dict) -> str:
    rows = [("model", "accuracy", "macro-F1", "docs")]
    entries = list(metrics.get("models", {}).items())
    if "ensemble" in metrics:
        entries.append(("ensemble", metrics["ensemble"]))
    for name, m in entries:
        rows.append((name, f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", f"{m['docs']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
