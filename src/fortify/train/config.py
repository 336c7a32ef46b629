"""Training configuration: one frozen dataclass validated at construction.

Every invalid value raises :class:`fortify.errors.ConfigError` naming the field and the allowed
values or range, so a bad recipe key or CLI override fails before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from fortify.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "lars", "lamb")
LR_SCALINGS = ("none", "linear", "sqrt")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
DIST_MODES = ("sync", "async", "producers")
#: fraction of the steps spent warming up to the peak for ``onecycle`` when ``warmup`` is None
#: (Smith & Topin 2019, "Super-convergence"; also PyTorch's ``OneCycleLR`` default ``pct_start``).
ONECYCLE_DEFAULT_WARMUP = 0.3


def _is_int(v: object) -> bool:
    """True for ints that are not bools."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    """True for finite ints/floats that are not bools."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


@dataclass(frozen=True)
class TrainConfig:
    """Resolved hyper-parameters of one training run.

    Fields
    ------
    epochs: passes over the training data, ``>= 1``. For tasks that replay each minibatch
        (``task.replays = m > 1``, free adversarial training, Shafahi et al. 2019) one epoch is one
        pass *including replays*: it performs as many optimiser steps as a plain epoch but sees
        ``1/m`` of the data, each minibatch ``m`` times, so ``m`` epochs cover the data once.
    batch_size: minibatch size, ``>= 1`` (the last batch of an epoch may be smaller).
    optimizer: ``"sgd"`` (heavy-ball momentum), ``"adam"`` (Kingma & Ba 2015; ``momentum`` unused) or the
        large-batch ``"lars"`` (You et al. 2017, with ``momentum``) / ``"lamb"`` (You et al. 2020): layer-wise
        trust ratios, biases and normalisation parameters excluded from weight decay and adaptation
        (:mod:`fortify.train.optim`).
    lr: peak learning rate, ``> 0`` (before ``lr_scaling``).
    lr_scaling: ``none``, ``linear`` (Goyal et al. 2017: peak ``lr * batch_size / base_batch_size``; pair it
        with ``warmup``) or ``sqrt`` (``lr * sqrt(batch_size / base_batch_size)``); see :attr:`peak_lr`.
    base_batch_size: the batch size ``lr`` was tuned for, ``>= 1`` (scaling rules only).
    momentum: SGD momentum in ``[0, 1)``.
    weight_decay: L2 penalty coefficient, ``>= 0`` (coupled, as in ``torch.optim``).
    schedule: per-step learning-rate schedule, one of ``constant``, ``cosine`` (Loshchilov &
        Hutter 2017, SGDR without restarts), ``onecycle`` (Smith & Topin 2019; linear up from
        ``lr/25`` to ``lr`` then linear down to 0, the cyclic schedule of Wong et al. 2020) or
        ``step`` (``lr / 5`` at 5/7 and again at 6/7 of training; Shi et al. 2021's MNIST schedule).
    warmup: fraction of all steps in ``[0, 1)`` spent ramping up linearly to ``lr``; ``None``
        means 0 for ``constant``/``cosine`` and 0.3 for ``onecycle`` (where it places the peak).
    seed: non-negative integer; fixes data order, the task's generator and torch's global RNG
        inside :meth:`fortify.train.Trainer.fit` (the caller's global RNG is left untouched).
    grad_clip: ``None`` or a positive max global L2 norm of the parameter gradient.
    nproc: worker processes, ``>= 1`` (see :mod:`fortify.train.distributed`); ``1`` with
        ``dist_mode="sync"`` trains in the calling process as before.
    dist_mode: ``"sync"`` (data-parallel: each global batch of ``batch_size`` is split over the
        ``nproc`` workers and the gradients are averaged) or ``"async"`` (a parameter server
        applies each worker's gradient as it arrives, Downpour SGD, Dean et al. 2012) or ``"producers"``
        (``nproc`` processes generate adversarial examples with the latest weights they pulled, the
        trainer drops those staler than ``max_staleness``; :mod:`fortify.train.distributed.producers`).
    max_staleness: async / producers only; a gradient (an adversarial example) computed on parameters more than this many updates old
        is dropped (and counted), ``>= 0``.
    device: ``None`` (train where the model is) or ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto`` (cuda when
        available, else cpu): the Trainer checks the model is there (ConfigError naming both devices; a
        user's model is never moved); models fortify builds (pipeline) are created there. Not compared on
        resume, like ``nproc``.
    amp: mixed precision (``torch.autocast`` bfloat16 forward; bfloat16 has float32's exponent range, so no
        gradient scaler) for the training forward/backward; honoured on CUDA devices with bfloat16 support
        only (ignored on cpu/mps and older GPUs, where it is not safe or not faster), never for evaluation
        or attacks outside the training step.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup: float | None = None
    seed: int = 0
    grad_clip: float | None = None
    nproc: int = 1
    dist_mode: str = "sync"
    max_staleness: int = 4
    lr_scaling: str = "none"
    base_batch_size: int = 256
    amp: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        """Validate every field (ConfigError naming field and allowed values)."""
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ConfigError(f"TrainConfig.epochs must be an integer >= 1, got {self.epochs!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"TrainConfig.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"TrainConfig.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}"
            )
        if not _is_real(self.lr) or self.lr <= 0:
            raise ConfigError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not _is_real(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"TrainConfig.momentum must lie in [0, 1), got {self.momentum!r}")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"TrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}"
            )
        if self.warmup is not None and (not _is_real(self.warmup) or not 0.0 <= self.warmup < 1.0):
            raise ConfigError(f"TrainConfig.warmup must be None or a fraction in [0, 1), got {self.warmup!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"TrainConfig.seed must be an integer >= 0, got {self.seed!r}")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or self.grad_clip <= 0):
            raise ConfigError(f"TrainConfig.grad_clip must be None or a finite number > 0, got {self.grad_clip!r}")
        if not _is_int(self.nproc) or self.nproc < 1:
            raise ConfigError(f"TrainConfig.nproc (world size) must be an integer >= 1, got {self.nproc!r}")
        if self.dist_mode not in DIST_MODES:
            raise ConfigError(
                f"TrainConfig.dist_mode must be one of {', '.join(DIST_MODES)}; got {self.dist_mode!r}"
            )
        if not _is_int(self.max_staleness) or self.max_staleness < 0:
            raise ConfigError(f"TrainConfig.max_staleness must be an integer >= 0, got {self.max_staleness!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(
                f"TrainConfig.lr_scaling must be one of {', '.join(LR_SCALINGS)}; got {self.lr_scaling!r}"
            )
        if not _is_int(self.base_batch_size) or self.base_batch_size < 1:
            raise ConfigError(f"TrainConfig.base_batch_size must be an integer >= 1, got {self.base_batch_size!r}")
        if self.device is not None and (not isinstance(self.device, str) or self.device.split(":")[0] not in
                                        ("cpu", "cuda", "mps", "auto")):
            raise ConfigError(f"TrainConfig.device must be null, auto, cpu, cuda, cuda:N or mps; got {self.device!r}")
        if not isinstance(self.amp, bool):
            raise ConfigError(f"TrainConfig.amp must be true or false, got {self.amp!r}")
        # normalise ints given for float fields so checkpoints and comparisons are stable
        for name in ("lr", "momentum", "weight_decay", "warmup", "grad_clip"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, float(v))

    @property
    def warmup_fraction(self) -> float:
        """The effective warmup fraction (``warmup`` with the schedule's default filled in)."""
        if self.warmup is not None:
            return float(self.warmup)
        return ONECYCLE_DEFAULT_WARMUP if self.schedule == "onecycle" else 0.0

    @property
    def peak_lr(self) -> float:
        """``lr`` after the ``lr_scaling`` rule (the schedule's peak)."""
        k = self.batch_size / self.base_batch_size
        return self.lr * (k if self.lr_scaling == "linear" else math.sqrt(k) if self.lr_scaling == "sqrt" else 1.0)

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all fields, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build a config from a mapping (recipe section, CLI overrides).

        Unknown keys raise ConfigError naming the allowed ones. Numeric strings for float fields
        (YAML 1.1 reads ``1e-3`` as a string) are converted.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"training config must be a mapping, got {type(d).__name__}")
        allowed = cls.field_names()
        unknown = sorted(str(k) for k in d if k not in allowed)
        if unknown:
            raise ConfigError(f"unknown training config key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        kwargs = dict(d)
        for name in ("lr", "momentum", "weight_decay", "warmup", "grad_clip"):
            v = kwargs.get(name)
            if isinstance(v, str):
                try:
                    kwargs[name] = float(v)
                except ValueError:
                    raise ConfigError(f"TrainConfig.{name} must be a number, got {v!r}") from None
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields (JSON / ``torch.save(weights_only)``-safe)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated again)."""
        unknown = sorted(k for k in changes if k not in self.field_names())
        if unknown:
            raise ConfigError(
                f"unknown training config key(s) {', '.join(unknown)}; allowed: {', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **changes)


__all__ = ["TrainConfig", "OPTIMIZERS", "LR_SCALINGS", "SCHEDULES", "DIST_MODES", "ONECYCLE_DEFAULT_WARMUP"]
