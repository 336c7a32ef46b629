"""Epoch checkpoints: atomic, pickle-free on read, verified.

One checkpoint is two files in the checkpoint folder:

* ``epoch-NNNN.safetensors``: model parameters and buffers (``safetensors.torch.save_model``, so
  tied weights are handled);
* ``epoch-NNNN.pt``: a plain container (``dict``/``list``/numbers/strings/tensors) written with
  ``torch.save`` holding the optimiser, LR-schedule, RNG and task state, the history and the
  SHA-256 of the model file. It is read back only with ``torch.load(weights_only=True)``.

Each file is written to a temporary name, fsynced and moved into place with ``os.replace``; the
state file is written last, so a checkpoint is complete exactly when its ``.pt`` exists. A
process killed at any point (SIGKILL included) leaves the previous complete checkpoint readable.
Anything unreadable, truncated, of the wrong format or not matching its model file raises
:class:`fortify.errors.ModelFileError`.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from fortify.errors import ModelFileError, OutputError

FORMAT = "fortify-train-checkpoint/1"
_NAME = re.compile(r"^epoch-(\d{4,})\.(pt|safetensors)$")
KEEP = 2  # the newest checkpoint and the one before it (rollback target)


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and atomically move it to ``final``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def paths(folder: Path, epoch: int) -> tuple[Path, Path]:
    """``(model_file, state_file)`` of the checkpoint taken after ``epoch`` epochs."""
    return folder / f"epoch-{epoch:04d}.safetensors", folder / f"epoch-{epoch:04d}.pt"


def complete_epochs(folder: Path) -> list[int]:
    """Epochs (ascending) that have a state file, i.e. a complete checkpoint."""
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and m.group(2) == "pt":
            out.append(int(m.group(1)))
    return sorted(out)


def clear(folder: Path) -> None:
    """Remove this module's checkpoint and temporary files from ``folder`` (nothing else)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if _NAME.match(p.name) or (p.name.startswith("epoch-") and ".tmp-" in p.name):
            p.unlink(missing_ok=True)


def save(folder: Path, epoch: int, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write the checkpoint of ``epoch`` atomically and prune older ones; return the state path.

    ``state`` must be a plain container (loadable with ``weights_only=True``).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        model_path, state_path = paths(folder, epoch)
        tmp_model = model_path.with_name(f"{model_path.name}.tmp-{os.getpid()}")
        save_model(model, str(tmp_model), metadata={"format": FORMAT, "epoch": str(epoch)})
        _commit(tmp_model, model_path)
        payload = dict(state, format=FORMAT, epoch=int(epoch), model_sha256=_sha256(model_path))
        tmp_state = state_path.with_name(f"{state_path.name}.tmp-{os.getpid()}")
        torch.save(payload, tmp_state)
        _commit(tmp_state, state_path)
        _fsync_dir(folder)
    except OSError as e:
        raise OutputError(f"cannot write checkpoint to {folder}: {e}") from e
    for old in complete_epochs(folder)[:-KEEP]:
        for p in paths(folder, old):
            p.unlink(missing_ok=True)
    return state_path


def load_state(folder: Path, epoch: int) -> dict[str, Any]:
    """Read and verify the state file of ``epoch`` (no model weights are touched)."""
    model_path, state_path = paths(folder, epoch)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle safely means a bad file
        raise ModelFileError(f"corrupt or unsafe checkpoint {state_path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("epoch") != epoch:
        raise ModelFileError(f"{state_path} is not a fortify training checkpoint of epoch {epoch}")
    if not model_path.is_file():
        raise ModelFileError(f"checkpoint {state_path} has no model file {model_path.name}")
    if _sha256(model_path) != state.get("model_sha256"):
        raise ModelFileError(f"model file {model_path} does not match its checkpoint (corrupt or replaced)")
    return state


def load_model_into(folder: Path, epoch: int, model: nn.Module) -> None:
    """Load the weights of ``epoch`` into ``model`` in place (strict: same names and shapes)."""
    model_path, _ = paths(folder, epoch)
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    dev: str | int = device.index if device.type == "cuda" and device.index is not None else str(device)
    try:
        load_model(model, str(model_path), strict=True, device=dev)
    except Exception as e:  # noqa: BLE001 - header errors, shape mismatches, missing keys
        raise ModelFileError(f"cannot load model weights from {model_path}: {type(e).__name__}: {e}") from None


__all__ = ["save", "load_state", "load_model_into", "complete_epochs", "clear", "paths", "FORMAT"]
