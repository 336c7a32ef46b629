"""Devices: choose one (``cpu``, ``cuda``, ``cuda:N``, ``mps``), check a model is on it, mixed precision.

Rules (the whole project): the default device is ``cuda`` when available, else ``cpu``; a model built by
fortify is created on the requested device; a model the user hands over is *never* moved - when it lives on
another device than requested, :func:`check_model_device` raises :class:`fortify.errors.ConfigError`
naming both devices. Mixed precision (:func:`autocast`) is used for the training forward only and only on
CUDA with bfloat16 support (same exponent range as float32: no loss scaling needed); other GPUs, CPU and
MPS train in float32 (autocast there is slower or numerically less safe for the attack inside the step).

Determinism: the Trainer seeds every generator it uses; on CUDA, bit-reproducible runs additionally need
``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set by the caller
(:func:`deterministic` does both; it costs speed and some ops then raise), and AMP off.

The CLI's ``--device`` (every verb that runs a model), the pipeline's one run device and the CPU-only steps
are described in docs/devices.md. :func:`model_device` refuses a model split over several devices;
:func:`describe` is the device as recorded with a run.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.validation import model_device  # the one split-device check, re-exported here

DEVICE_KINDS = ("cpu", "cuda", "mps")


def available() -> list[str]:
    """Device kinds usable in this process, ``cpu`` first."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu`` (``LOCAL_RANK`` picks the GPU under torchrun)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def resolve(name: str | torch.device | None) -> torch.device:
    """The device ``name`` names (``None`` or ``"auto"``: :func:`default_device`); ConfigError when it is
    malformed or not available here."""
    if name is None or name == "auto":
        return default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use one of cpu, cuda, cuda:N, mps") from None
    if dev.type not in DEVICE_KINDS:
        raise ConfigError(f"unsupported device {name!r}; use one of cpu, cuda, cuda:N, mps")
    if dev.type not in available():
        raise ConfigError(f"device {name!r} is not available here (available: {', '.join(available())})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


def same(a: torch.device, b: torch.device) -> bool:
    """Same device, where ``cuda`` without an index means the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    cur = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)


def check_model_device(model: nn.Module, device: torch.device, what: str = "model") -> None:
    """ConfigError when ``model`` has a parameter or buffer on another device than ``device``
    (the model is never moved)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if not same(t.device, device):
            raise ConfigError(f"the {what} is on {t.device} but the requested device is {device}; move it "
                              f"yourself (model.to('{device}')) or pass --device {t.device.type}")


def describe(device: torch.device) -> str:
    """``cpu``, ``cuda:0 (NVIDIA H100 80GB HBM3)``, ``mps``: the device as recorded with a run."""
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[object]:
    """Mixed-precision context for the training forward (CUDA only; a no-op elsewhere)."""
    if not enabled or device.type != "cuda" or not torch.cuda.is_bf16_supported():
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def deterministic(on: bool = True) -> None:
    """Ask torch for deterministic kernels (see the module doc); call before building models."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


__all__ = ["available", "default_device", "resolve", "same", "check_model_device", "model_device", "describe",
           "autocast", "deterministic", "DEVICE_KINDS"]
