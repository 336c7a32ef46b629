"""Resumable cascade state: one safetensors file, JSON metadata inside, written atomically.

The file holds, per threat ``i``, tensors ``t{i}.robust`` (uint8 ``(N,)``), ``t{i}.x_adv``
(``(N, ...)``), ``t{i}.distance`` (``(N,)``), ``t{i}.broken_by`` (int32 ``(N,)``, index into the
stage labels, ``-1`` for none) and, in the ``fortify_state`` metadata entry, a JSON document with
the fingerprint of inputs, model and configuration, the finished stages and their contribution
rows. No pickle is involved; a file whose fingerprint differs is refused with
:class:`StateMismatchError`, a corrupt one with :class:`fortify.errors.DataFileError`.

:class:`CascadeState` is the typed, in-memory form of that file (one :class:`ThreatState` per
threat, plus what is never written: the surrogate and the sanity flags); :meth:`CascadeState.save`
and :meth:`CascadeState.restore` convert to and from the file format above, so files written before
the typed state existed are read unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fortify.io import atomic_target
from fortify.errors import ConfigError, DataFileError, OutputError
from fortify.evaluate.report import AttackRow, SanityFlag

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


#: ``broken_by`` code of a point still robust, and of a point misclassified before any attack
ROBUST_CODE, CLEAN_WRONG_CODE = -1, -2


@dataclass
class ThreatState:
    """The cascade's progress on one threat (all tensors on the CPU).

    robust: ``(N,)`` bool, still correctly classified. x_adv: ``(N, ...)`` the adversarial example that
    broke each point (``x`` where none did). distance: ``(N,)`` float64, its distance to ``x`` (``inf``
    while robust, 0 for clean-wrong points). code: ``(N,)`` int64, index of the breaking step in the
    threat plan's labels (:data:`ROBUST_CODE`, :data:`CLEAN_WRONG_CODE`). rows: one per step that ran
    (``access == "-"``: could not be built). done: labels of finished or skipped steps.
    """

    robust: torch.Tensor
    x_adv: torch.Tensor
    distance: torch.Tensor
    code: torch.Tensor
    rows: list[AttackRow] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, x: torch.Tensor, clean_correct: torch.Tensor) -> "ThreatState":
        """Nothing attacked yet: ``x (N, ...)``, ``clean_correct (N,)`` bool."""
        cc = clean_correct.cpu()
        return cls(robust=cc.clone(), x_adv=x.detach().cpu().clone(),
                   distance=torch.where(cc, torch.tensor(float("inf")), torch.tensor(0.0)).double(),
                   code=torch.where(cc, ROBUST_CODE, CLEAN_WRONG_CODE).long())

    def tensors(self, i: int) -> dict[str, torch.Tensor]:
        """The file's tensors for threat ``i`` (see module doc)."""
        return {f"t{i}.robust": self.robust.to(torch.uint8), f"t{i}.x_adv": self.x_adv,
                f"t{i}.distance": self.distance, f"t{i}.broken_by": self.code.to(torch.int32)}

    def document(self) -> dict[str, Any]:
        """The file's JSON entry for this threat."""
        return {"done": list(self.done), "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_file(cls, i: int, doc: dict[str, Any], tensors: dict[str, torch.Tensor],
                  dtype: torch.dtype) -> "ThreatState":
        """Threat ``i`` of a loaded file; ``x_adv`` cast to the inputs' ``dtype``."""
        try:
            return cls(robust=tensors[f"t{i}.robust"].bool(), x_adv=tensors[f"t{i}.x_adv"].to(dtype),
                       distance=tensors[f"t{i}.distance"].to(torch.float64), code=tensors[f"t{i}.broken_by"].long(),
                       rows=[AttackRow(**r) for r in doc["rows"]], done=list(doc["done"]))
        except (KeyError, TypeError) as e:
            raise DataFileError(f"evaluation state is missing or has a malformed entry for threat {i}: {e}") from None


@dataclass
class CascadeState:
    """Everything the cascade has measured so far, typed.

    threats: one entry per threat, ``None`` until the cascade starts on it. surrogate: the
    standard-trained surrogate model once there is one (given by the caller or trained lazily by
    :meth:`surrogate_or`); flags: the sanity flags found so far. ``fingerprint`` and ``path``:
    the resume file (``path`` None: nothing is written). Only threats, fingerprint and the
    finished steps reach the file; a rerun re-derives the rest.
    """

    threats: list[ThreatState | None]
    surrogate: nn.Module | None = None
    flags: list[SanityFlag] = field(default_factory=list)
    fingerprint: str = ""
    path: str | None = None

    @classmethod
    def empty(cls, n_threats: int, surrogate: nn.Module | None = None) -> "CascadeState":
        return cls(threats=[None] * n_threats, surrogate=surrogate)

    def surrogate_or(self, train: Callable[[], nn.Module]) -> nn.Module:
        """The surrogate, trained once with ``train()`` the first time one is needed."""
        if self.surrogate is None:
            self.surrogate = train()
        return self.surrogate

    def restore(self, path: str | None, fingerprint_: str, dtype: torch.dtype) -> None:
        """Use ``path`` for resuming: load its finished threats and steps if it exists (its
        fingerprint must be ``fingerprint_``; :class:`StateMismatchError` otherwise)."""
        self.fingerprint, self.path = fingerprint_, path
        loaded = load_state(path, fingerprint_) if path else None
        if loaded is None:
            return
        doc, tensors = loaded
        entries = doc.get("threats")
        if not isinstance(entries, list) or len(entries) != len(self.threats):
            raise DataFileError(f"evaluation state {path} does not hold {len(self.threats)} threat(s)")
        self.threats = [ThreatState.from_file(i, e, tensors, dtype) if isinstance(e, dict) and e.get("done")
                        else None for i, e in enumerate(entries)]

    def save(self) -> None:
        """Write the state to :attr:`path` atomically (nothing without a path)."""
        if not self.path:
            return
        tensors: dict[str, torch.Tensor] = {}
        for i, t in enumerate(self.threats):
            if t is not None:
                tensors.update(t.tensors(i))
        doc = {"fingerprint": self.fingerprint,
               "threats": [{} if t is None else t.document() for t in self.threats]}
        save_state(self.path, doc, tensors)
