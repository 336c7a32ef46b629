"""The mitigation protocol: ``res = mitigation(model, x, y)`` returns a NEW model without the backdoor.

* ``model``: the (suspected) trojaned classifier; never mutated (a deep copy is changed).
* ``x, y``: a small clean set the defender owns (images in [0, 1], labels), used to fine-tune.
* ``poison`` / ``x_test, y_test`` (optional): when the trigger is known (a benchmark, a planted model)
  the result carries clean accuracy and ASR before and after.
* returns :class:`MitigationResult` (``model``, ``before``, ``after``, ``evidence``).
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fortify.audit.backdoor.base import Poison
from fortify.audit.backdoor.measures import BackdoorMetrics, evaluate_backdoor
from fortify.errors import InputError
from fortify.models.state import frozen
from fortify.protocol import TemplateCall, template
from fortify.registry import Registry
from fortify.validation import check_device, check_images, check_labels, check_model_input

BACKDOOR_MITIGATIONS: Registry = Registry("backdoor mitigation")


@dataclass
class MitigationResult:
    """A new model, its metrics before and after (None without a known trigger), and the method's evidence."""

    model: nn.Module
    before: BackdoorMetrics | None = None
    after: BackdoorMetrics | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Mitigation(TemplateCall, abc.ABC):
    """Base class of mitigations: subclasses implement :meth:`_run` on a copy they own."""

    name: ClassVar[str] = ""

    @template
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, poison: Poison | None = None,
                 x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None) -> MitigationResult:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        xt = check_images(x, name="x").detach()
        check_device(model, xt, name="x")
        check_model_input(model, xt, name="x")
        yt = check_labels(y, xt.shape[0], name="y")
        if poison is not None and (x_test is None or y_test is None):
            raise InputError("measuring a mitigation against a poison needs x_test and y_test")
        start = time.perf_counter()
        before = evaluate_backdoor(model, poison, x_test, y_test) if poison is not None else None  # type: ignore[arg-type]
        with frozen(model):
            new, evidence = self._run(model, xt, yt)
        after = evaluate_backdoor(new, poison, x_test, y_test) if poison is not None else None  # type: ignore[arg-type]
        for p in new.parameters():
            p.requires_grad_(True)
        return MitigationResult(new, before, after, evidence, time.perf_counter() - start)

    @abc.abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
        """A new, mitigated model (a copy of the frozen ``model``) and the evidence of what was done."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def create_mitigation(name: str, **options: Any) -> Mitigation:
    """The mitigation registered as ``name`` with its options."""
    mit: Mitigation = BACKDOOR_MITIGATIONS.create(name, **options)
    return mit


__all__ = ["BACKDOOR_MITIGATIONS", "Mitigation", "MitigationResult", "create_mitigation"]
