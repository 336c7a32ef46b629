"""The attack protocol (template method) shared by every attack.

``result = attack(model, x, y, threat, *, targeted=None, generator=None)``

* ``model``: any ``torch.nn.Module`` mapping inputs in ``threat.bounds`` to logits ``(N, C)``.
* ``x``: inputs ``(N, ...)`` in the threat's bounds; ``y``: labels ``(N,)`` int64.
* ``targeted``: ``None`` (untargeted) or target labels ``(N,)``.
* returns :class:`AttackResult`.

:meth:`Attack.__call__` is final: it validates with :mod:`fortify.validation` (the checks every entry
point shares: dtype equal to the model's, the sample shape the model declares, finite values inside
``threat.bounds``, integer labels ``(N,)`` below the class count; all typed errors), switches the
model to eval mode (restoring every module's ``training`` flag and every parameter's
``requires_grad`` afterwards), runs the subclass' search :meth:`Attack._run` only on the points not
already misclassified (or already on target), projects onto the threat model and scores success. Subclasses implement ``_run`` against an
:class:`Oracle`, which is the only way they touch the model and which counts queries and
gradient evaluations. Attacks never write ``param.grad`` (gradients are taken with
``torch.autograd.grad`` on the input), never move the model and never print.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from fortify.errors import InputError, ThreatModelError
from fortify.models.state import frozen
from fortify.protocol import TemplateCall, template
from fortify.threat import ThreatModel
from fortify.validation import (
    check_device, check_images, check_labels, check_logits, check_model_input, forward_checked, generator_for,
)


@dataclass
class AttackResult:
    """Outcome of one attack call.

    x_adv: ``(N, ...)`` adversarial inputs, inside the threat model and bounds.
    success: ``(N,)`` bool; misclassified (untargeted) or classified as the target (targeted).
    grad_evals: total per-sample input-gradient evaluations (a batch of B rows counts B).
    queries: total per-sample forward evaluations, gradient ones included.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    grad_evals: int
    queries: int

    @property
    def robust(self) -> torch.Tensor:
        return ~self.success


class Oracle:
    """Counting access to a model for attacks. Forward passes run under the caller's grad mode."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        self._model = model
        self.num_classes = num_classes
        self.queries = 0
        self.grad_evals = 0
        #: per-feature threats (set by ``Attack.__call__`` around ``_run``): the search runs in
        #: standardised coordinates ``u = x / scale`` (the model sees ``u * scale``), and input
        #: gradients are zero on immutable features (``mask`` False)
        self.scale: torch.Tensor | None = None
        self.grad_mask: torch.Tensor | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._model(x if self.scale is None else x * self.scale)
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` without gradient (score-based access)."""
        self.queries += x.shape[0]
        with torch.no_grad():
            return self._forward(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Hard labels ``(B,)`` (decision-based access)."""
        return self.logits(x).argmax(dim=1)

    def value_and_grad(
        self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits, loss, grad)`` where ``loss = loss_fn(logits)`` is per-sample ``(B,)``
        and ``grad`` is d(sum loss)/dx shaped like ``x``. Uses ``autograd.grad``: no ``param.grad``."""
        self.queries += x.shape[0]
        self.grad_evals += x.shape[0]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self._forward(xg)
            loss = loss_fn(logits)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        if self.grad_mask is not None:
            grad = grad.masked_fill(~self.grad_mask, 0.0)
        return logits.detach(), loss.detach(), grad.detach()


def refuse_gradient_free_model(attack: "Attack", model: nn.Module) -> None:
    """InputError (one line, saying why) for a white-box attack on a model without gradients (an
    ONNX Runtime model: ``model.gradient_free`` is True)."""
    gradient_free = getattr(model, "gradient_free", False) or type(model).__name__ == "OnnxModule"
    if attack.needs_grad and gradient_free:
        what = getattr(model, "source", None) or f"the model ({type(model).__name__})"
        raise InputError(
            f"{what} is an ONNX Runtime model without gradients: white-box attacks ({attack.name or type(attack).__name__}"
            f", ...) need a PyTorch model; use score- or decision-based attacks: square, nes, hopskipjump, signopt")


class Attack(TemplateCall, abc.ABC):
    """Base class: subclasses set the class attributes and implement :meth:`_run`."""

    #: registry name
    name: ClassVar[str] = ""
    #: norms this attack supports
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")
    #: "gradient" (white-box), "score" (logits only) or "decision" (labels only)
    access: ClassVar[str] = "gradient"
    #: whether a tensor of target labels may be passed as ``targeted``
    supports_targeted: ClassVar[bool] = False
    #: minimum-norm attacks search for the smallest perturbation; ``threat.eps`` caps it
    minimum_norm: ClassVar[bool] = False

    @property
    def needs_grad(self) -> bool:
        return self.access == "gradient"

    @template
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        *,
        targeted: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        if not isinstance(threat, ThreatModel):
            raise ThreatModelError(f"threat must be a fortify.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise ThreatModelError(
                f"{self.name or type(self).__name__} does not support norm {threat.norm!r}; "
                f"supported: {', '.join(self.norms)}"
            )
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x, threat.bounds)
        threat.check_sample_shape(x)
        refuse_gradient_free_model(self, model)
        check_device(model, x)
        check_model_input(model, x)
        generator = generator_for(generator, x.device)  # a CPU generator with CUDA data: one derived on the device
        n = x.shape[0]
        x = x.detach()
        with frozen(model):
            clean = check_logits(forward_checked(model, x).detach(), n)
            num_classes = clean.shape[1]
            y = check_labels(y, n, num_classes).to(x.device)
            if targeted is not None:
                if not self.supports_targeted:
                    raise InputError(f"{self.name or type(self).__name__} has no targeted mode")
                targeted = check_labels(targeted, n, num_classes, name="targeted").to(x.device)
            oracle = Oracle(model, num_classes)
            oracle.queries += n
            done = self._is_success(clean, y, targeted)
            # rows that already succeed on the clean input keep x: no search and no second forward pass
            x_adv, success = x.clone(), done.clone()
            todo = (~done).nonzero().squeeze(1)
            if todo.numel():
                xs, ys = x[todo], y[todo]
                ts = targeted[todo] if targeted is not None else None
                found = self._run_in_units(oracle, xs, ys, threat, ts, generator)
                if found.shape != xs.shape:
                    raise RuntimeError(f"{type(self).__name__}._run returned shape {tuple(found.shape)}")
                adv = threat.project(found.detach().to(x.dtype), xs)
                x_adv[todo] = adv
                success[todo] = self._is_success(oracle.logits(adv), ys, ts)
        return AttackResult(x_adv=x_adv, success=success, grad_evals=oracle.grad_evals, queries=oracle.queries)

    def _run_in_units(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                targeted: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """:meth:`_run`, for a per-feature threat in standardised coordinates ``u = x / scale`` (where
        eps is isotropic: step sizes and random starts mean the same in every feature) with input
        gradients zeroed on immutable features; the result is mapped back (``u * scale``)."""
        if not threat.per_feature:
            return self._run(oracle, x, y, threat, targeted, generator)
        s = threat.units(x)
        oracle.grad_mask = threat.free(x)
        oracle.scale = s
        try:
            if s is None:
                return self._run(oracle, x, y, threat, targeted, generator)
            return self._run(oracle, x / s, y, threat.standardised(), targeted, generator) * s
        finally:
            oracle.scale = oracle.grad_mask = None

    @staticmethod
    def _is_success(logits: torch.Tensor, y: torch.Tensor, targeted: torch.Tensor | None) -> torch.Tensor:
        pred = logits.argmax(dim=1)
        return pred == targeted if targeted is not None else pred != y

    @abc.abstractmethod
    def _run(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        targeted: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Search adversarial inputs for a batch ``x (B, ...)`` that is currently classified ``y``
        (or not yet as ``targeted``); return ``x_adv`` shaped like ``x``. Keep the best point found
        per sample; the base class projects the result onto the threat model and scores it."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
