"""Which floating-point precision a job computes in: ``--precision auto|float32|bfloat16``.

``auto`` (the default) runs bfloat16 where the device does it natively, and float32 elsewhere:
- a CPU that reports ``amx_bf16`` or ``avx512_bf16`` (its matrix units multiply bfloat16;
  TensorFlow's oneDNN kernels use them), read from ``/proc/cpuinfo``;
- a GPU of compute capability 8.0 or more (asked of TensorFlow only when it is already loaded).

Training in bfloat16 is Keras' mixed policy: variables and the softmax and loss in float32, the
layers' arithmetic in bfloat16 (:mod:`embcache.models.precision`). ``EMBCACHE_NATIVE_BF16=0`` or
``1`` overrides what ``auto`` sees (the tests simulate a machine without it this way).

Stdlib only: ``embcache info`` and every job's first line name the precision and why.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from embcache.cache.errors import EmbcacheError

PRECISIONS = ("auto", "float32", "bfloat16")
CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Precision:
    """What a job runs in (``float32`` or ``bfloat16``) and the reason, for its first line;
    ``units``: what multiplies bfloat16 here (``amx``, ``avx512``, ``gpu``, ``forced`` or
    ``none``), which decides the layer kinds ``auto`` keeps in float32."""

    name: str
    why: str
    units: str = "none"

    @property
    def mixed(self) -> bool:
        return self.name == "bfloat16"

    def line(self) -> str:
        return f"Precision: {self.name} ({self.why})"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _gpu_capability() -> tuple[int, int] | None:
    """The first GPU's compute capability, when TensorFlow is loaded and sees one."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tuple(tf.config.experimental.get_device_details(gpus[0])
                         .get("compute_capability") or (0, 0))
    except Exception:  # noqa: BLE001 - no details: treat as no GPU bfloat16
        return None
    return None


def bfloat16_units() -> tuple[str, str]:
    """What runs bfloat16 natively here (``amx``, ``avx512``, ``gpu``, ``forced``; ``none``),
    and what says so."""
    forced = os.environ.get("EMBCACHE_NATIVE_BF16", "").strip()
    if forced in ("0", "1"):
        return ("forced" if forced == "1" else "none"), f"EMBCACHE_NATIVE_BF16={forced}"
    capability = _gpu_capability()
    if capability is not None:
        return (("gpu" if capability >= (8, 0) else "none"),
                f"GPU compute capability {capability[0]}.{capability[1]}")
    flags = _cpu_flags() & set(CPU_FLAGS)
    if flags:
        return ("amx" if "amx_bf16" in flags else "avx512"), f"this CPU has {', '.join(sorted(flags))}"
    return "none", "this CPU has neither amx_bf16 nor avx512_bf16"


def native_bfloat16() -> tuple[bool, str]:
    """Whether this machine runs bfloat16 natively, and what says so."""
    units, why = bfloat16_units()
    return units != "none", why


def check_precision(precision: str) -> str:
    """Raises:
        EmbcacheError: not one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise EmbcacheError(f"Invalid value for `precision`. Expected one of "
                            f"{', '.join(PRECISIONS)}. Received: precision={precision!r}")
    return precision


def resolve_precision(precision: str = "auto") -> Precision:
    """``auto``, ``float32`` or ``bfloat16`` -> what runs here, and why."""
    check_precision(precision)
    units, why = bfloat16_units()
    native = units != "none"
    if precision == "float32":
        return Precision("float32", "asked for", units)
    if precision == "bfloat16":
        return Precision("bfloat16", "asked for" if native else
                         f"asked for; emulated, expect it slower: {why}", units)
    return Precision("bfloat16" if native else "float32", f"auto: {why}", units)


def precision_line(named: list[tuple[str, Precision]]) -> str:
    """``Precision: bfloat16 (auto: this CPU has avx512_bf16)``: the precision most of the
    named models run in, then each model that runs otherwise (a job's first line)."""
    if not named:
        return ""
    common = max({p for _, p in named}, key=lambda p: sum(q == p for _, q in named))
    return common.line() + "".join(f"; {n}: {p.name} ({p.why})" for n, p in named if p != common)
