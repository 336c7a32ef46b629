"""Int8 quantization schemes and the CPU features that decide between them.

ONNX Runtime's x86-64 integer GEMM (MLAS) multiplies uint8 activations by int8 weights ("U8S8").
Which instruction does it depends on the CPU:

* with **VNNI** (AVX512-VNNI, or AVX-VNNI on client cores) ``vpdpbusd`` sums four u8 x s8 products
  straight into int32 -- exact;
* without VNNI (AVX2, and AVX-512 without VNNI) ``vpmaddubsw`` adds *pairs* of u8 x s8 products into
  a **saturating int16** first: ``255 * 127 * 2 = 64,770 > 32,767``, so large activations against
  large same-sign weights clip. ONNX Runtime's quantization guide names the two remedies: 7-bit
  weights (``reduce_range``: ``255 * 64 * 2 = 32,640`` fits, so no pair can saturate) or U8U8.

Measured with the int8 tests' models (first 500 mnist-5k test images, onnxruntime 1.32.0; the
non-VNNI path run for real under ``qemu-x86_64 -cpu Haswell``, whose CPUID has AVX2 and no AVX-512):

===========================  ===============  ===============
top-1 agreement with float   VNNI (Xeon)      AVX2 (Haswell)
===========================  ===============  ===============
small-cnn static, u8s8       0.990            **0.972**
small-cnn static, u8s8-r     0.992            0.992
mlp dynamic, u8s8            1.000            **0.984**
mlp dynamic, u8s8-r          1.000            1.000
===========================  ===============  ===============

``u8s8-reduced`` gives bitwise-identical logits on both paths (no pair saturates, so both kernels
compute the same exact int32 sums); the same kernels run, so its speed is that of ``u8s8`` on each
CPU. ``u8u8`` (uint8 weights) is also saturation-free but runs a slower widening kernel.

``auto`` therefore picks ``u8s8`` (full 8-bit weights) where the CPU has VNNI or is not x86, and
``u8s8-reduced`` elsewhere; the chosen scheme and the builder's CPU features are written into the
artefact's ONNX metadata, and :func:`portability_warning` says when a full-range artefact is run on
a CPU that would saturate it.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from fortify.errors import ConfigError

#: metadata keys written into every int8 artefact
META_SCHEME = "fortify.int8_scheme"
META_CPU = "fortify.int8_built_on"
META_SATURATION_FREE = "fortify.int8_saturation_free"

SCHEMES: tuple[str, ...] = ("auto", "u8s8", "u8s8-reduced", "u8u8")
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avx10_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """What decides the int8 kernel: the architecture and whether its integer dot product saturates."""

    machine: str
    flags: frozenset[str]

    @property
    def x86(self) -> bool:
        """True on x86-64 (the only architecture whose U8S8 kernel can saturate)."""
        return self.machine.lower() in ("x86_64", "amd64", "i686", "i386")

    @property
    def vnni(self) -> bool:
        """True when the CPU has an exact u8 x s8 -> int32 dot product (VNNI or AMX)."""
        return any(f in self.flags for f in _VNNI_FLAGS)

    @property
    def u8s8_saturates(self) -> bool:
        """True when ONNX Runtime's full-range U8S8 kernel can saturate on this CPU."""
        return self.x86 and not self.vnni

    def describe(self) -> str:
        """Short text for metadata and notes, e.g. ``x86_64 avx2 avx512_vnni``."""
        shown = sorted(f for f in self.flags if f.startswith(("avx2", "avx512f", "avx512bw")) or f in _VNNI_FLAGS)
        return " ".join([self.machine, *shown])


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The ``flags`` line of ``/proc/cpuinfo`` (None where the file does not exist or has none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def cpu_features() -> CpuFeatures:
    """Features of the CPU this process runs on.

    Flags come from ``/proc/cpuinfo`` (Linux). Elsewhere on x86 they are unknown and the CPU is
    treated as lacking VNNI, so ``auto`` chooses the scheme that cannot saturate.
    """
    flags = _cpuinfo_flags()
    return CpuFeatures(platform.machine() or "unknown", flags if flags is not None else frozenset())


def resolve_scheme(scheme: str, features: CpuFeatures | None = None) -> str:
    """``auto`` -> ``u8s8`` on CPUs without saturation, ``u8s8-reduced`` elsewhere; others unchanged."""
    if scheme not in SCHEMES:
        raise ConfigError(f"int8 scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    if scheme != "auto":
        return scheme
    feats = features if features is not None else cpu_features()
    return "u8s8-reduced" if feats.u8s8_saturates else "u8s8"


def scheme_types(scheme: str) -> tuple[bool, bool]:
    """``(uint8 weights, reduce_range)`` of a resolved scheme."""
    return {"u8s8": (False, False), "u8s8-reduced": (False, True), "u8u8": (True, False)}[scheme]


def portability_warning(scheme: str | None, features: CpuFeatures | None = None) -> str | None:
    """A one-line warning when a full-range ``u8s8`` artefact runs on a CPU whose kernel saturates."""
    feats = features if features is not None else cpu_features()
    if scheme == "u8s8" and feats.u8s8_saturates:
        return ("this int8 model uses full-range u8s8 weights and this CPU has no VNNI: ONNX Runtime's int16 "
                "accumulation can saturate and change predictions; re-export with scheme u8s8-reduced")
    return None


__all__ = ["CpuFeatures", "META_CPU", "META_SATURATION_FREE", "META_SCHEME", "SCHEMES", "cpu_features",
           "portability_warning", "resolve_scheme", "scheme_types"]
