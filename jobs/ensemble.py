"""Which runs score together: their cards' compatibility, unique column names, and the ensemble
(the models sharing the first one's labels, weighted by validation accuracy or equally)."""

from __future__ import annotations

import numpy as np

from embcache.cache.errors import EmbcacheError, ModelError
from embcache.cache.meta import StoreMeta
from embcache.jobs.runs import Run


def check_compatible(runs: list[Run]) -> StoreMeta:
    """All models must expect the same embedded values; returns the first one's store metadata."""
    first = runs[0].meta
    for run in runs[1:]:
        diff = first.contract_differences(run.meta)
        if diff:
            raise ModelError(f"Models {runs[0].name} and {run.name} were trained on differently "
                             f"embedded data ({'; '.join(diff)}); score them separately")
    return first


def unique_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        n = seen.get(run.name, 0)
        seen[run.name] = n + 1
        if n:
            run.name = f"{run.name}_{n + 1}"


ENSEMBLES = ("weighted", "mean")


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
