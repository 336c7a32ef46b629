"""The poisoning protocol: ``result = poison(x, y)`` plants a trigger in a fraction of a training set.

* ``x``: images ``(N, C, H, W)`` float in ``[0, 1]``; ``y``: labels ``(N,)`` int64.
* ``rate``: the fraction of the *whole* set that is poisoned: exactly ``round(rate * N)`` rows, drawn
  without replacement by a ``torch.Generator`` seeded with ``seed`` (never the global RNG) from the
  eligible rows: those whose label differs from their attack label (dirty-label attacks: BadNets,
  blended, WaNet) or those of the target class (clean-label, Turner et al. 2019).
* ``target`` / ``mode``: ``all-to-one`` sends every triggered input to ``target``;
  ``all-to-all`` sends class ``c`` to ``(c + 1) mod C`` (Gu et al. 2017).
* returns :class:`PoisonResult`: ``x`` and ``y`` copies in which only ``indices`` differ (the
  untouched remainder is bit-identical), plus the indices and the labels given to them.

:meth:`Poison.apply` puts the trigger on any batch (test time, ASR) without touching labels.
:class:`Poison.__call__` is final (the template of :mod:`fortify.protocol`); subclasses write
``_run(x) -> x'`` (and, for clean-label, ``_prepare``).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from fortify.errors import ConfigError, InputError
from fortify.protocol import TemplateCall, template
from fortify.registry import Registry
from fortify.validation import check_images, check_labels

POISONS: Registry = Registry("poison")
MODES = ("all-to-one", "all-to-all")
Mode = Literal["all-to-one", "all-to-all"]


@dataclass
class PoisonResult:
    """A poisoned copy of a training set.

    x: ``(N, C, H, W)`` inputs, triggered on ``indices`` (and warped with noise on ``noise_indices``
    for WaNet's noise mode), identical to the input elsewhere; y: ``(N,)`` labels, the attack label on
    ``indices``; indices: ``(P,)`` int64 sorted poisoned rows; noise_indices: ``(Q,)`` int64 rows that
    got a random warp with their true label (WaNet noise mode, empty otherwise).
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    noise_indices: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    attack: str = ""
    target: int | None = None
    mode: str = "all-to-one"

    def record(self) -> dict[str, Any]:
        """JSON-ready description (indices as lists) for the run folder."""
        return {"attack": self.attack, "target": self.target, "mode": self.mode, "n": int(self.y.shape[0]),
                "poisoned": int(self.indices.numel()), "rate": float(self.indices.numel() / max(1, self.y.shape[0])),
                "indices": self.indices.tolist(), "noise_indices": self.noise_indices.tolist()}


def check_rate(rate: object, name: str = "rate") -> float:
    """A real number in ``[0, 1]`` (ConfigError otherwise)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1] (the poisoned fraction), got {rate!r}")
    return float(rate)


def check_unit(value: object, name: str, *, closed_low: bool = False) -> float:
    """A real number in ``(0, 1]`` (``[0, 1]`` with ``closed_low``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not ((0.0 <= float(value)) if closed_low else (0.0 < float(value))) or float(value) > 1.0:  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a number in {'[0' if closed_low else '(0'}, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_pattern(pattern: object, name: str = "pattern") -> torch.Tensor | None:
    """None, or a finite tensor / nested list with values in ``[0, 1]`` (2-D ``(h, w)`` or 3-D ``(C, h, w)``)."""
    if pattern is None:
        return None
    try:
        t = pattern.detach().clone() if isinstance(pattern, torch.Tensor) else torch.as_tensor(pattern)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{name} must be a 2-D or 3-D array of values in [0, 1], got {pattern!r}") from None
    t = t.to(torch.float32)
    if t.dim() not in (2, 3) or t.numel() == 0 or not bool(torch.isfinite(t).all()) or t.min() < 0 or t.max() > 1:
        raise ConfigError(f"{name} must be a non-empty 2-D (h, w) or 3-D (C, h, w) array in [0, 1]")
    return t if t.dim() == 3 else t.unsqueeze(0)


class Poison(TemplateCall, abc.ABC):
    """Base class of poisoning attacks (a trigger plus a labelling rule).

    ``rate`` in ``[0, 1]``; ``target`` the attack label (all-to-one) or ignored (all-to-all);
    ``mode`` ``all-to-one`` | ``all-to-all``; ``seed`` draws the poisoned rows (and random triggers).
    """

    name: ClassVar[str] = ""
    #: clean-label attacks poison target-class rows and keep their labels
    clean_label: ClassVar[bool] = False

    def __init__(self, rate: float = 0.1, target: int = 0, mode: Mode = "all-to-one", seed: int = 0) -> None:
        self.rate = check_rate(rate)
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ConfigError(f"target must be a class index >= 0, got {target!r}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if self.clean_label and mode != "all-to-one":
            raise ConfigError("a clean-label attack is all-to-one (its poisoned rows keep their target label)")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        self.target, self.mode, self.seed = target, mode, seed

    # -- labels ------------------------------------------------------------------------------
    def target_of(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Attack labels ``(N,)`` for true labels ``y (N,)``: ``target`` or ``(y + 1) mod C``."""
        if self.mode == "all-to-all":
            return (y + 1) % num_classes
        return torch.full_like(y, self.target)

    def check_target(self, y: torch.Tensor, num_classes: int | None) -> int:
        """The class count (``num_classes`` or ``max(y) + 1``); ConfigError when ``target`` is not a label
        of the dataset (all-to-one)."""
        classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
        present = set(torch.unique(y).tolist())
        if self.mode == "all-to-one" and (self.target >= classes or self.target not in present):
            raise ConfigError(f"target label {self.target} is not a label of the dataset (labels present: "
                              f"{sorted(present)})")
        return classes

    # -- the trigger -------------------------------------------------------------------------
    def check_image(self, x: torch.Tensor) -> None:
        """InputError unless ``x`` is a batch of images ``(N, C, H, W)``; subclasses add trigger-size checks."""
        if x.dim() != 4:
            raise InputError(f"backdoor triggers need images (N, C, H, W), got shape {tuple(x.shape)}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, H, W)`` in [0, 1] with the trigger on every row (labels untouched); a new tensor."""
        xt = check_images(x, name="x")
        self.check_image(xt)
        out = self._run(xt.detach())
        return out.clamp(0.0, 1.0).to(xt.dtype)

    @abc.abstractmethod
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The triggered version of a validated batch ``(N, C, H, W)`` (clamped to [0, 1] by the caller)."""

    def _prepare(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``x[rows]`` before the trigger goes on (identity; clean-label perturbs them adversarially)."""
        return x[rows]

    def _noise(self, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra rows changed with their true label (WaNet noise mode); none by default."""
        return torch.zeros(0, dtype=torch.long), x[:0]

    @template
    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int | None = None) -> PoisonResult:
        """Poison exactly ``round(rate * N)`` rows of ``(x (N, C, H, W), y (N,))``; see the module docstring.
        Cost: one trigger application per poisoned row (plus a PGD attack per row for clean-label)."""
        xt = check_images(x, name="x")
        self.check_image(xt)
        yt = check_labels(y, xt.shape[0], num_classes, name="y")
        classes = self.check_target(yt, num_classes)
        n = xt.shape[0]
        k = int(round(self.rate * n))
        attack_labels = self.target_of(yt, classes)
        eligible = (yt == self.target) if self.clean_label else (attack_labels != yt)
        pool = torch.nonzero(eligible).flatten()
        if k > pool.numel():
            what = "target-class" if self.clean_label else "non-target"
            raise ConfigError(f"rate {self.rate} asks for {k} poisoned rows but the set has only {pool.numel()} "
                              f"{what} rows to poison")
        gen = torch.Generator().manual_seed(self.seed)
        rows = pool[torch.randperm(pool.numel(), generator=gen)[:k]].sort().values
        x_out, y_out = xt.detach().clone(), yt.clone()
        if k:
            x_out[rows] = self._run(self._prepare(xt.detach(), yt, rows)).clamp(0.0, 1.0).to(xt.dtype)
            y_out[rows] = attack_labels[rows]
        rest = torch.ones(n, dtype=torch.bool, device=rows.device)
        rest[rows] = False
        noise_rows, noisy = self._noise(xt.detach(), yt, torch.nonzero(rest).flatten(), gen)
        if noise_rows.numel():
            x_out[noise_rows] = noisy.clamp(0.0, 1.0).to(xt.dtype)
        return PoisonResult(x_out, y_out, rows, noise_rows.sort().values, attack=self.name,
                            target=self.target if self.mode == "all-to-one" else None, mode=self.mode)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_") and not isinstance(v, (torch.Tensor, torch.nn.Module)))
        return f"{type(self).__name__}({fields})"


def create_poison(kind: str, **options: Any) -> Poison:
    """The poisoning attack registered as ``kind`` (``badnets``, ``blended``, ``wanet``, ``clean-label``)."""
    poison: Poison = POISONS.create(kind, **options)
    return poison


__all__ = ["MODES", "POISONS", "Poison", "PoisonResult", "check_pattern", "check_rate", "check_unit",
           "create_poison"]
