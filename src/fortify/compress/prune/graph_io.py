"""Files of channel-pruned graph models (ResNets, DenseNets, ...): safetensors, no pickle.

A pruned graph model no longer matches its factory's widths, so :func:`fortify.models.save` refuses
it. :func:`save_graph_model` writes the state dict plus a JSON header holding the *base*
architecture record (the one the model was created from, kept by
:func:`fortify.compress.prune.graph_prune.prune_graph` as ``fortify_arch_base``) and the optional
``Normalized`` mean/std. :func:`load_graph_model` builds the base architecture, replaces every
Conv1d/Conv2d/Linear/BatchNorm whose stored tensors are narrower by one of the stored widths
(depthwise convs keep ``groups == channels``), and loads the state dict strictly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fortify.errors import ConfigError, ModelFileError
from fortify.io import write_atomic
from fortify.models.normalized import Normalized
from fortify.models.registry import ARCH_ATTR

BASE_ATTR = "fortify_arch_base"
FORMAT = "fortify.graph_pruned"
_KEY = "fortify_graph_pruned"


def base_record(model: nn.Module) -> dict[str, Any] | None:
    """The architecture record ``model`` was created from (before any pruning), or ``None``."""
    target = model.inner if isinstance(model, Normalized) else model
    rec = getattr(target, BASE_ATTR, None) or getattr(target, ARCH_ATTR, None)
    return dict(rec) if isinstance(rec, dict) else None


def save_graph_model(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (weights + base record) atomically; ConfigError without a registry record."""
    from safetensors.torch import save as st_save

    rec = base_record(model)
    if rec is None or "factory" in rec:
        raise ConfigError(f"cannot save {type(model).__name__}: it was not built by fortify.models.create(name, ...)")
    norm = ({"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
            if isinstance(model, Normalized) else None)
    header = json.dumps({"format": FORMAT, "architecture": rec, "normalization": norm}, sort_keys=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return write_atomic(path, st_save(state, metadata={_KEY: header}), what="model file", fsync=True)


def _resized(m: nn.Module, prefix: str, state: dict[str, torch.Tensor]) -> nn.Module | None:
    """``m`` rebuilt with the widths of the stored tensors under ``prefix`` (``None`` when unchanged)."""
    w = state.get(prefix + "weight", state.get(prefix + "running_mean"))
    if w is None:
        return None
    if type(m) in (nn.Conv1d, nn.Conv2d) and isinstance(m, (nn.Conv1d, nn.Conv2d)):
        depthwise = m.groups != 1
        c_in = int(w.shape[0]) if depthwise else int(w.shape[1])
        if (int(w.shape[0]), c_in) == (m.out_channels, m.in_channels):
            return None
        return type(m)(c_in, int(w.shape[0]), m.kernel_size, m.stride, m.padding, m.dilation,  # type: ignore[arg-type]
                       c_in if depthwise else 1, m.bias is not None, m.padding_mode)
    if type(m) is nn.Linear and isinstance(m, nn.Linear):
        if tuple(w.shape) == (m.out_features, m.in_features):
            return None
        return nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=m.bias is not None)
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) and isinstance(m, nn.modules.batchnorm._BatchNorm):
        if int(w.shape[0]) == m.num_features:
            return None
        return type(m)(int(w.shape[0]), m.eps, m.momentum, m.affine, m.track_running_stats)
    return None


def load_graph_model(path: str | os.PathLike[str]) -> nn.Module:
    """Inverse of :func:`save_graph_model`: the pruned model in eval mode (ModelFileError if malformed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fortify.models import create

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_KEY])
        state = load_file(str(path))
        rec = meta["architecture"]
        model = create(rec["name"], in_shape=tuple(rec["in_shape"]), num_classes=rec["num_classes"],
                       **rec.get("args", {}))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a fortify graph-pruned model file ({exc})") from None
    if meta.get("normalization") is not None:
        model = Normalized(model, meta["normalization"]["mean"], meta["normalization"]["std"])
    for name, m in list(model.named_modules()):
        new = _resized(m, f"{name}." if name else "", state)
        if new is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit the architecture ({str(exc).splitlines()[0]})") from None
    target = model.inner if isinstance(model, Normalized) else model
    setattr(target, BASE_ATTR, rec)
    if hasattr(target, ARCH_ATTR):
        delattr(target, ARCH_ATTR)
    return model.eval()


__all__ = ["BASE_ATTR", "base_record", "load_graph_model", "save_graph_model"]
