"""Resumable cascade state: one safetensors file, JSON metadata inside, written atomically.

The file holds, per threat ``i``, tensors ``t{i}.robust`` (uint8 ``(N,)``), ``t{i}.x_adv``
(``(N, ...)``), ``t{i}.distance`` (``(N,)``), ``t{i}.broken_by`` (int32 ``(N,)``, index into the
stage labels, ``-1`` for none) and, in the ``fortify_state`` metadata entry, a JSON document with
the fingerprint of inputs, model and configuration, the finished stages and their contribution
rows. No pickle is involved; a file whose fingerprint differs is refused with
:class:`StateMismatchError`, a corrupt one with :class:`fortify.errors.DataFileError`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fortify.io import atomic_target
from fortify.errors import ConfigError, DataFileError, OutputError

STATE_VERSION = 1


class StateMismatchError(ConfigError):
    """A resume state file belongs to different inputs, model or evaluation configuration."""


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: dict[str, Any]) -> str:
    """SHA-256 over the inputs, labels, every parameter and buffer, and the JSON config."""
    h = hashlib.sha256()
    for t in (x, y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes() if t.is_floating_point()
                 else t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()


def save_state(path: str | os.PathLike, doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Atomically write ``tensors`` and the JSON ``doc`` to ``path`` (temp file + ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write evaluation state to {path}: {e}") from None
    body = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_target(path, what="evaluation state") as tmp:
        save_file(body, str(tmp), metadata={"fortify_state": json.dumps({**doc, "version": STATE_VERSION})})


def load_state(path: str | os.PathLike, expected_fingerprint: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Read a state file; ``None`` if it does not exist. Raises on corruption or mismatch."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        doc = json.loads(meta["fortify_state"])
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise DataFileError(f"evaluation state {path} is corrupt or not a fortify state file: {e}") from None
    if doc.get("version") != STATE_VERSION:
        raise DataFileError(f"evaluation state {path} has version {doc.get('version')}, expected {STATE_VERSION}")
    if doc.get("fingerprint") != expected_fingerprint:
        raise StateMismatchError(
            f"evaluation state {path} was written for different inputs, model or configuration; "
            "use another state_path or delete the file"
        )
    return doc, tensors
