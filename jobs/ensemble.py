"""Which runs score together and how: unique column names, the ensemble (the models sharing the
first one's labels, weighted by validation accuracy or equally, or a pool fitted on the
validation split and saved as an ensemble card)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embcache.cache.errors import EmbcacheError, ModelError
from embcache.jobs.runs import Run


def unique_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        n = seen.get(run.name, 0)
        seen[run.name] = n + 1
        if n:
            run.name = f"{run.name}_{n + 1}"


ENSEMBLES = ("weighted", "mean", "fit")


def ensemble_group(runs: list[Run]) -> list[Run]:
    """Models sharing the first model's label set (the ensemble averages their probabilities)."""
    group = [r for r in runs if r.label_names == runs[0].label_names]
    return group if len(group) > 1 else []


def ensemble_weights(group: list[Run], how: str) -> np.ndarray:
    """One weight per model, summing to 1: equal (``mean``) or proportional to each model's
    validation accuracy from its card (``weighted``: a weak model pulls the ensemble less).

    Raises:
        ModelError: ``weighted`` with a card that records no validation accuracy.
    """
    if how not in ENSEMBLES:
        raise EmbcacheError(f"Invalid value for `ensemble`. Expected one of {ENSEMBLES}. "
                            f"Received: ensemble={how!r}")
    if how == "mean":
        return np.full(len(group), 1.0 / len(group))
    acc = []
    for run in group:
        value = (run.card.get("metrics") or {}).get("val_accuracy")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ModelError(f"{run.path / 'model.json'} records no validation accuracy to weight "
                             "the ensemble by; pass `ensemble='mean'`")
        acc.append(float(value))
    if sum(acc) == 0:  # every model at 0 validation accuracy: nothing to weight by
        return np.full(len(group), 1.0 / len(group))
    return np.asarray(acc) / sum(acc)


# -- fitted ensembles --------------------------------------------------------------------------
ENSEMBLE_FILE = "ensemble.json"


@dataclass
class EnsembleFit:
    """How a fitted ensemble pools its members' probabilities. ``chosen`` ``"fit"``,
    ``"geometric"`` or ``"single"``: a log-linear pool ``p ∝ exp(sum_i a_i log p_i)``, whose
    coefficients ``a_i`` factor as ``sharpness * weight_i / temperature_i`` (each member's
    temperature calibrates it alone, the weights share the vote); ``"mean"``: the plain mean of
    the probabilities (``a_i`` the weights)."""

    members: list[str]
    coefficients: np.ndarray
    temperatures: np.ndarray
    chosen: str  # "fit", "geometric" (equal weights), "mean" (linear) or "single" (the best)
    report: dict

    @property
    def linear(self) -> bool:
        return self.chosen == "mean"

    @property
    def weights(self) -> np.ndarray:
        w = self.coefficients * (1.0 if self.linear else self.temperatures)
        return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))


def pool(stacked: np.ndarray, coefficients: np.ndarray, linear: bool = False) -> np.ndarray:
    """Members' probabilities ``(m, n, C)`` -> the pool ``(n, C)``: log-linear, or with
    ``linear`` the weighted mean."""
    a = np.asarray(coefficients, np.float64)
    if linear:
        return np.tensordot(a, stacked.astype(np.float64), axes=1).astype(np.float32)
    z = np.tensordot(a, np.log(np.clip(stacked.astype(np.float64), 1e-12, 1.0)), axes=1)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


def _nll(logp: np.ndarray, a: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood of the pool with coefficients ``a``, and its gradient."""
    z = np.tensordot(a, logp, axes=1)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    p = np.exp(z - lse[:, None])
    rows = np.arange(len(y))
    nll = float(np.mean(lse - z[rows, y]))
    grad = np.array([np.mean((p * lp).sum(axis=1) - lp[rows, y]) for lp in logp])
    return nll, grad


def fit_coefficients(logp: np.ndarray, y: np.ndarray, *, l2: float = 1e-3,
                     steps: int = 400) -> np.ndarray:
    """Non-negative ``a`` minimising the pool's NLL (convex in ``a``) plus ``l2 * |a - 1/m|^2``,
    by projected gradient descent with backtracking; ``logp``: ``(m, n, C)`` log-probabilities."""
    m = logp.shape[0]
    a = np.full(m, 1.0 / m)
    prior = a.copy()
    lr = 1.0
    f, g = _nll(logp, a, y)
    f += l2 * float(((a - prior) ** 2).sum())
    for _ in range(steps):
        g_total = g + 2 * l2 * (a - prior)
        while lr > 1e-6:
            cand = np.maximum(a - lr * g_total, 0.0)
            fc, gc = _nll(logp, cand, y)
            fc += l2 * float(((cand - prior) ** 2).sum())
            if fc <= f - 1e-4 * float(g_total @ (a - cand)):
                a, f, g = cand, fc, gc
                lr *= 1.5
                break
            lr /= 2
        else:
            break
    return a


def temperature(logp: np.ndarray, y: np.ndarray) -> float:
    """The temperature that calibrates one member alone (1-D search of its NLL)."""
    grid = np.exp(np.linspace(np.log(0.1), np.log(10.0), 61))
    return float(grid[int(np.argmin([_nll(logp[None], np.array([1.0 / t]), y)[0]
                                     for t in grid]))])


def fit_ensemble(names: list[str], probs: dict[str, np.ndarray], y: np.ndarray) -> EnsembleFit:
    """Fit the pool on validation probabilities, guarded against overfitting the validation
    split: two-fold cross-fitting (fit on even documents, score the odd ones, and back)
    compares the fitted pool with three that learn nothing, equal weights (the geometric mean
    and the plain mean) and the best member alone; the one with the lowest held-out negative
    log-likelihood (then the best accuracy) is kept, refitted on the whole split if it is the
    fitted one. Log-likelihood, not accuracy: on a validation split of a few thousand documents
    held-out accuracies differ by a document or two (noise), and ranking by them kept one member
    alone where pooling was far better held out (measured on 20 Newsgroups: a member alone
    0.001 (two documents) more accurate than the plain mean, at NLL 0.757 against 0.522)."""
    logp = np.log(np.clip(np.stack([probs[n] for n in names]).astype(np.float64), 1e-12, 1.0))
    m = len(names)
    acc = [float((logp[i].argmax(axis=1) == y).mean()) for i in range(m)]
    best = int(np.argmax(acc))

    def candidates(part):
        return {"fit": fit_coefficients(logp[:, part], y[part]),
                "geometric": np.full(m, 1.0 / m), "mean": np.full(m, 1.0 / m),
                "single": np.eye(m)[best]}

    held: dict[str, list] = {"fit": [], "geometric": [], "mean": [], "single": []}
    for train, test in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        for name, a in candidates(train).items():
            p = pool(np.exp(logp[:, test]), a, linear=name == "mean")
            nll = float(-np.mean(np.log(np.clip(p[np.arange(len(p)), y[test]], 1e-12, 1.0))))
            held[name].append((float((p.argmax(axis=1) == y[test]).mean()), nll))
    score = {k: (float(np.mean([h[0] for h in v])), float(np.mean([h[1] for h in v])))
             for k, v in held.items()}
    chosen = min(score, key=lambda k: (score[k][1], -score[k][0]))
    a = candidates(slice(None))[chosen]
    temps = np.array([temperature(logp[i], y) for i in range(m)])
    whole = pool(np.exp(logp), a, linear=chosen == "mean").argmax(axis=1)
    report = {"val_docs": int(len(y)), "member_val_accuracy": dict(zip(names, acc)),
              "cross_fit": {k: {"accuracy": round(v[0], 6), "nll": round(v[1], 6)}
                            for k, v in score.items()},
              "val_accuracy": float((whole == y).mean())}
    return EnsembleFit(list(names), a, temps, chosen, report)


def write_ensemble(out_dir: Path, fit: EnsembleFit, runs: list[Run]) -> Path:
    """The ensemble card: its members (run folders and card digests), the pool and how it was
    chosen. ``embcache score --models OUT_DIR`` scores with it again; ``embcache runs`` lists
    it."""
    import json
    from datetime import datetime, timezone

    out_dir.mkdir(parents=True, exist_ok=True)
    card = {"kind": "embcache-ensemble", "method": "fit", "chosen": fit.chosen,
            "members": [{"name": r.name, "path": str(r.path.resolve()),
                         "card_sha256": r.card.get("card_sha256")} for r in runs],
            "coefficients": [round(float(a), 8) for a in fit.coefficients],
            "temperatures": [round(float(t), 6) for t in fit.temperatures],
            "weights": [round(float(w), 6) for w in fit.weights],
            "metrics": {"val_accuracy": fit.report["val_accuracy"]},
            "fit": fit.report,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = out_dir / f".{ENSEMBLE_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=1))
    tmp.replace(out_dir / ENSEMBLE_FILE)
    return out_dir / ENSEMBLE_FILE


def expand_ensembles(paths) -> tuple[list[Path], EnsembleFit | None]:
    """Run folders, with an ensemble folder (holding ``ensemble.json``) replaced by its members;
    the fitted pool it holds, if any.

    Raises:
        ModelError: an ensemble folder among other runs, a malformed card, or a member whose
            card changed since the ensemble was fitted.
    """
    import json

    from embcache.jobs.runs import read_card

    paths = [Path(p) for p in paths]
    cards = [p / ENSEMBLE_FILE for p in paths if (p / ENSEMBLE_FILE).is_file()]
    if not cards:
        return paths, None
    if len(paths) > 1:
        raise ModelError(f"{cards[0].parent} is a fitted ensemble: score it alone (its members "
                         "are its runs)")
    try:
        card = json.loads(cards[0].read_text())
        members = card["members"]
        fit = EnsembleFit([m["name"] for m in members], np.asarray(card["coefficients"], float),
                          np.asarray(card["temperatures"], float), str(card["chosen"]),
                          dict(card.get("fit") or {}))
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{cards[0]} is not an ensemble card written by embcache ({e})") from None
    out = []
    for m in members:
        path = Path(m["path"])
        if read_card(path).get("card_sha256") != m.get("card_sha256"):
            raise ModelError(f"Run {path} changed since the ensemble {cards[0].parent} was "
                             "fitted: fit it again (`ensemble='fit'`)")
        out.append(path)
    return out, fit
