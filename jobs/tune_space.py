"""tune's search-space language: ``name=kind:low:high[:log]`` or ``name=cat:a,b,c`` pairs (on
the command line or in a YAML/JSON file), checked against the models' hyperparameters, and the
trial's suggestion of one point of the space (:func:`suggest`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embcache.cache.errors import EmbcacheError, ModelError

KINDS = ("int", "float", "cat")
# TrainConfig fields a trial cannot change: the group's members share one stream of batches.
SHARED = ("batch_size", "epochs", "patience", "seed", "shuffle_docs", "steps_per_execution",
          "length_buckets", "memory_mb", "strategy")


@dataclass(frozen=True)
class Param:
    """One dimension of the space: ``int``/``float`` between ``low`` and ``high`` (both included;
    ``log``: sampled on a log scale), or ``cat``: one of ``choices``."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial, name: str):
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)
        # Optuna stores only None/bool/int/float/str choices: others (lists) travel as JSON text.
        picked = trial.suggest_categorical(name, [_choice_key(c) for c in self.choices])
        return next(c for c in self.choices if _choice_key(c) == picked)

    def grid_values(self) -> list:
        if self.kind == "cat":
            return [_choice_key(c) for c in self.choices]
        if self.kind == "int" and self.high - self.low <= 1000:
            return list(range(int(self.low), int(self.high) + 1))
        raise EmbcacheError("Invalid value for `sampler`: grid needs a finite space; give each "
                            "float (and each int over 1,000 values) as choices, e.g. "
                            "'dropout=cat:0.0,0.25,0.5'")


def _choice_key(c):
    return c if c is None or isinstance(c, (bool, int, float, str)) else json.dumps(c)


@dataclass
class Space:
    """``common``: parameters for every model that takes them (and ``learning_rate`` for all);
    ``per_model``: each model's own (trial parameter ``<model>.<name>``)."""

    common: dict[str, Param] = field(default_factory=dict)
    per_model: dict[str, dict[str, Param]] = field(default_factory=dict)

    def describe(self) -> dict:
        def one(p: Param):
            return ({"choices": list(p.choices)} if p.kind == "cat" else
                    {"type": p.kind, "low": p.low, "high": p.high, "log": p.log})

        return {"common": {k: one(p) for k, p in self.common.items()},
                "models": {m: {k: one(p) for k, p in ps.items()}
                           for m, ps in self.per_model.items()}}


def parse_param(name: str, text: Any, where: str) -> Param:
    """``int:32:256:log``, ``float:0:0.5``, ``cat:a,b,c`` (JSON values where they parse), a list
    (choices) or a mapping ``{type, low, high, log}`` / ``{choices: [...]}``."""

    def bad(why: str) -> EmbcacheError:
        return EmbcacheError(f"Invalid value for {where}: {name}={text!r}: {why}. Expected "
                             "int:LOW:HIGH[:log], float:LOW:HIGH[:log] or cat:A,B,...")

    if isinstance(text, list):
        text = {"choices": text}
    if isinstance(text, dict):
        if "choices" in text:
            kind, parts = "cat", text["choices"]
        else:
            kind = str(text.get("type"))
            parts = [text.get("low"), text.get("high")] + (["log"] if text.get("log") else [])
    elif isinstance(text, str):
        kind, _, rest = text.partition(":")
        parts = _choices(rest) if kind == "cat" else rest.split(":")
    else:
        raise bad("not a range or a list of choices")
    if kind not in KINDS:
        raise bad(f"unknown type {kind!r}")
    if kind == "cat":
        if not isinstance(parts, list) or not parts or parts == [""]:
            raise bad("no choices")
        if len({json.dumps(_choice_key(p)) for p in parts}) != len(parts):
            raise bad("a choice is given twice")
        return Param("cat", choices=tuple(parts))
    log = len(parts) == 3 and parts[2] in ("log", True)
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise bad("give LOW and HIGH, then optionally log")
    try:
        num = int if kind == "int" else float
        low, high = (num(str(v)) for v in parts[:2])
    except (TypeError, ValueError):
        raise bad(f"LOW and HIGH must be {'integers' if kind == 'int' else 'numbers'}") from None
    if not low < high:
        raise bad(f"LOW ({low}) must be below HIGH ({high})")
    if log and low <= 0:
        raise bad(f"a log range must start above 0 (LOW is {low})")
    return Param(kind, low, high, log)


def _choices(text: str) -> list:
    """``a,b`` -> ["a", "b"]; ``0.1,0.5`` -> [0.1, 0.5]; ``[3,4],[3,4,5]`` -> [[3, 4], [3, 4, 5]]
    (the whole read as a JSON list first, so lists keep their commas)."""
    try:
        whole = json.loads(f"[{text}]")
    except json.JSONDecodeError:
        return [_json_or_text(v) for v in text.split(",")]
    return whole if isinstance(whole, list) else [whole]


def _json_or_text(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def parse_space(pairs: list[str] | tuple[str, ...] | dict | None) -> Space:
    """``["filters=int:32:256:log", "dropout=float:0:0.5"]`` (or a dict name -> spec) -> a
    :class:`Space` of common parameters."""
    space = Space()
    items = pairs.items() if isinstance(pairs, dict) else [
        (p.partition("=")[0], p.partition("=")[2] if "=" in p else None) for p in pairs or ()]
    for name, spec in items:
        if not name or spec is None:
            raise EmbcacheError(f"Invalid value for `space`. Expected NAME=TYPE:..., e.g. "
                                f"'dropout=float:0.0:0.5'. Received: {name!r}")
        if name in space.common:
            raise EmbcacheError(f"Invalid value for `space`: {name!r} is given twice")
        space.common[name] = parse_param(name, spec, "`space`")
    return space


def load_space_file(path: str | Path) -> Space:
    """A YAML (or JSON) file: parameters for every model at the top, each model's own under
    ``models:``::

        learning_rate: float:1e-4:1e-2:log
        dropout: [0.0, 0.25, 0.5]          # a list: categorical choices
        models:
          kim_cnn:
            filters: int:32:256:log
            widths: [[3, 4, 5], [2, 3, 4]]
          fasttext:
            hidden: {type: int, low: 0, high: 256}
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise EmbcacheError(f"Invalid value for `space`: cannot read {path}: "
                            f"{e.strerror}") from None
    try:
        import yaml

        data = yaml.safe_load(text)
    except ImportError:
        data = _json_or_text(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise EmbcacheError(f"Space file {path}{line}: not valid YAML "
                            f"({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise EmbcacheError(f"Space file {path}: expected a mapping of parameter names (and "
                            "`models:`)")
    models = data.pop("models", None) or {}
    if not isinstance(models, dict):
        raise EmbcacheError(f"Space file {path}: `models:` must map model names to parameters")
    space = Space({k: parse_param(k, v, f"space file {path}") for k, v in data.items()})
    for model, params in models.items():
        if not isinstance(params, dict):
            raise EmbcacheError(f"Space file {path}: `models: {model}:` must map parameter "
                                "names to ranges")
        space.per_model[str(model)] = {k: parse_param(k, v, f"space file {path} (model {model})")
                                       for k, v in params.items()}
    return space


def check_space(space: Space, sources: list) -> None:
    """Every parameter is taken by some model (``learning_rate``: by all); each model's own
    parameters by that model.

    Raises:
        ModelError: an unknown parameter, in one line naming what the models take.
    """
    if not space.common and not space.per_model:
        raise EmbcacheError("Invalid value for `space`: it is empty; give at least one "
                            "NAME=RANGE, e.g. 'dropout=float:0.0:0.5'")
    names = {s.name: s for s in sources}
    takes = {s.name: set(s.hyperparameters()) | {"learning_rate"} for s in sources}
    for name in [*space.common, *(k for ps in space.per_model.values() for k in ps)]:
        if name in SHARED:
            raise EmbcacheError(f"Invalid value for `space`: {name!r} is shared by every trial "
                                f"of a group (one stream); set it for the whole group with `{name}=...`")
    for name in space.common:
        if not any(name in t for t in takes.values()):
            offer = "; ".join(f"{m} takes {', '.join(sorted(t))}" for m, t in takes.items())
            raise ModelError(f"Unknown parameter {name!r} in the space: no model takes it "
                             f"({offer})")
    for model, params in space.per_model.items():
        if model not in names:
            raise ModelError(f"Space names model {model!r}, which is not among the models tuned "
                             f"({', '.join(names)}); add it to `model=`")
        for name in params:
            if name not in takes[model]:
                raise ModelError(f"Unknown parameter {name!r} for model {model!r} in the space; "
                                 f"it takes {', '.join(sorted(takes[model]))}")


def suggest(trial, space: Space, sources: list) -> tuple[Any, dict, float | None]:
    """The trial's model, hyperparameters and learning rate (``None``: the config's)."""
    source = sources[0]
    if len(sources) > 1:
        picked = trial.suggest_categorical("model", [s.name for s in sources])
        source = next(s for s in sources if s.name == picked)
    takes = set(source.hyperparameters())
    hparams, lr = {}, None
    for name, p in space.common.items():
        if name == "learning_rate":
            lr = float(p.suggest(trial, name))
        elif name in takes:
            hparams[name] = p.suggest(trial, name)
    for name, p in space.per_model.get(source.name, {}).items():
        value = p.suggest(trial, f"{source.name}.{name}")
        if name == "learning_rate":
            lr = float(value)
        else:
            hparams[name] = value
    return source, hparams, lr
