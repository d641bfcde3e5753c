"""What a group trains: ``--param`` and ``--grid`` values parsed, and expanded into named runs."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from embcache.cache.errors import EmbcacheError
from embcache.jobs.config import TrainConfig


def parse_hparams(pairs: tuple[str, ...] | list[str]) -> dict:
    """``["filters=64", "widths=[3,4]"]`` -> ``{"filters": 64, "widths": [3, 4]}`` (JSON values)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EmbcacheError(f"Invalid value for `hparams`. Expected key=value. Received: {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_grid(pairs: tuple[str, ...] | list[str]) -> dict[str, list]:
    """``["dropout=[0.2,0.5]", "widths=[[3,4],[3,4,5]]"]`` -> ``{"dropout": [0.2, 0.5], ...}``.

    Each value is a JSON list of the values to try, so a grid stays unambiguous next to
    hyperparameters whose own values are lists (``widths=[[3,4],[3,4,5]]`` tries two widths
    lists). ``learning_rate`` may be a grid key too (each run gets its own optimizer).
    """
    out: dict[str, list] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            values = json.loads(value) if sep and key else None
        except json.JSONDecodeError:
            values = None
        if not isinstance(values, list) or not values:
            raise EmbcacheError(f"Invalid value for `grid`. Expected key=[value,value,...] (a "
                                f"JSON list of the values to try). Received: {pair!r}")
        if key in out:
            raise EmbcacheError(f"Invalid value for `grid`: {key!r} is given twice")
        out[key] = values
    return out


def _name_part(value) -> str:
    """A grid value as a folder-name part: no commas (``make score MODELS`` and ``score --models``
    split on them), no slashes."""
    text = json.dumps(value, separators=("_", "=")) if isinstance(value, (list, dict)) else (
        str(value) if not isinstance(value, str) else value)
    text = text.replace("[", "").replace("]", "").replace("{", "").replace("}", "").replace('"', "")
    return "".join(c if c.isalnum() or c in "._=-+" else "_" for c in text)


@dataclass(frozen=True)
class RunPlan:
    """One run of a group: its folder name, model, the hyperparameters given and learning rate."""

    name: str
    source: Any
    hparams: dict
    learning_rate: float


def expand_runs(models: list, *, grid: dict | None = None, hparams: dict | None = None,
                learning_rate: float = TrainConfig.learning_rate) -> list[RunPlan]:
    """Every model x every point of ``grid`` (in the order given), named ``model`` or
    ``model-key=value-...``; ``hparams`` apply to every run.

    Raises:
        ModelError: an unknown model, or a hyperparameter (given or in the grid) that a model
            does not take.
        EmbcacheError: two runs with the same name.
    """
    from embcache import models as registry

    sources = [m if isinstance(m, registry.ModelSource) else registry.resolve(m) for m in models]
    if grid is not None and not isinstance(grid, dict):
        raise EmbcacheError(f"Invalid value for `grid`. Expected a dict of lists, e.g. "
                            f"{{'filters': [64, 128]}}. Received: grid={grid!r}")
    grid = dict(grid or {})
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise EmbcacheError(f"Invalid value for `grid`: {key!r} needs a non-empty list of the "
                                f"values to try, e.g. {{{key!r}: [{values!r}]}}. Received: {values!r}")
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())] or [{}]
    runs = []
    for source in sources:
        for point in points:
            given = {**(hparams or {}), **{k: v for k, v in point.items() if k != "learning_rate"}}
            source.check_hparams(given)
            suffix = "".join(f"-{k}={_name_part(v)}" for k, v in point.items())
            runs.append(RunPlan(f"{source.name}{suffix}", source, given,
                                float(point.get("learning_rate", learning_rate))))
    names = [r.name for r in runs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise EmbcacheError(f"Two runs of the group would both be named {dup!r}; name each model "
                            "once")
    return runs
