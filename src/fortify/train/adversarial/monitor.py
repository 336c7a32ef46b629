"""Per-epoch robustness measurement during training (a Trainer callback).

After every epoch :class:`RobustnessMonitor` measures, on a *fixed* held-out batch (the first ``n``
validation points, chosen once), the clean accuracy and the robust accuracy under PGD-10 (random
start, step ``2.5 eps / 10``, Madry et al. 2018) at the task's nominal threat, with a private
generator reseeded identically each epoch, so the numbers are comparable across epochs and the
Trainer's random streams are untouched. It merges into the epoch record:

* ``clean_acc``, ``robust_acc`` (fractions on the held-out batch),
* ``train_wall_s`` (cumulative training wall time, measurement excluded),
* ``monitor_s`` (time the measurement itself took); the Trainer's record already holds the
  cumulative ``grad_evals`` (one per sample per step plus the task's input-gradient evaluations).

It also hands the measurement to ``trainer.task.observe(...)`` when the task has that method, which
is how accuracy-driven schedules see robust accuracy. Shapes: ``x (N, ...)``, ``y (N,)``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from fortify.models.state import frozen
from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train.adversarial.base import parse_threat
from fortify.train.adversarial.inner import check_steps
from fortify.train.callbacks import Callback
from fortify.validation import check_images, check_labels

if TYPE_CHECKING:  # pragma: no cover
    from fortify.train.trainer import Trainer


def robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                    steps: int = 10, batch_size: int = 500, seed: int = 0, restarts: int = 1) -> tuple[float, float]:
    """``(clean_acc, robust_acc)`` of ``model`` on ``x (N, ...)``, ``y (N,)`` under fortify's PGD
    attack (``steps`` steps, ``restarts`` random starts; a point is robust only if no restart breaks
    it). A seeded private generator keeps the figure comparable across calls."""
    from fortify.attacks import create as create_attack

    pgd = create_attack("pgd", steps=steps, restarts=restarts)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    clean = robust = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with frozen(model), torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        robust += int((~pgd(model, xb, yb, threat, generator=gen).success).sum())
    n = max(1, x.shape[0])
    return clean / n, robust / n


class RobustnessMonitor(Callback):
    """Measure clean and PGD-``steps`` robust accuracy on a fixed held-out batch every ``every`` epochs.

    Args:
        x, y: held-out inputs ``(N, ...)`` in [0, 1] and labels ``(N,)``; the first ``n`` are used.
        threat: threat model to measure (default: the task's nominal ``threat``).
        n: size of the fixed batch.
        steps: PGD steps (10).
        every: measure every ``every`` epochs (and always at the last one).
        seed: seed of the measurement's own generator.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, threat: object = None, *, n: int = 256,
                 steps: int = 10, every: int = 1, seed: int = 0) -> None:
        check_images(x, name="monitor x")
        check_labels(y, x.shape[0], name="monitor y")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"monitor n must be an integer >= 1, got {n!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"monitor every must be an integer >= 1, got {every!r}")
        self.x, self.y = x[:n].detach(), y[:n].detach().long()
        self.threat = None if threat is None else parse_threat(threat)
        self.steps = check_steps(steps)
        self.every = every
        self.seed = int(seed)
        self.last: dict[str, Any] = {}
        self._epoch = -1
        self._at: dict[tuple[int, str], float] = {}

    def _threat(self, trainer: "Trainer") -> ThreatModel:
        if self.threat is not None:
            return self.threat
        t = getattr(trainer.task, "threat", None)
        if not isinstance(t, ThreatModel):
            raise ConfigError("RobustnessMonitor needs a threat: the task has none, pass threat='linf:0.3'")
        return t

    def measure(self, trainer: "Trainer") -> dict[str, Any]:
        """Measure now (cached per epoch, so a guard placed after the monitor reuses it)."""
        if self._epoch == trainer.epoch and self.last:
            return self.last
        t0 = time.perf_counter()
        x, y = self.x.to(trainer.device), self.y.to(trainer.device)
        clean, robust = robust_accuracy(trainer.model, x, y, self._threat(trainer), steps=self.steps, seed=self.seed)
        wall = sum(float(h.get("wall_s", 0.0)) for h in trainer.history)
        self.last = {"clean_acc": clean, "robust_acc": robust, "train_wall_s": wall,
                     "monitor_s": time.perf_counter() - t0}
        self._epoch = trainer.epoch
        return self.last

    def measure_at(self, trainer: "Trainer", threat: ThreatModel) -> float:
        """PGD-``steps`` robust accuracy on the fixed batch at another ``threat`` (e.g. the ramped eps
        the task trains at); same seed, cached per epoch and threat."""
        key = (int(trainer.epoch), str(threat))
        if key not in self._at:
            x, y = self.x.to(trainer.device), self.y.to(trainer.device)
            self._at = {k: v for k, v in self._at.items() if k[0] == key[0]}
            self._at[key] = robust_accuracy(trainer.model, x, y, threat, steps=self.steps, seed=self.seed)[1]
        return self._at[key]

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> dict[str, Any] | None:
        last_epoch = record.get("epoch") == trainer.config.epochs
        if int(record.get("epoch", 0)) % self.every and not last_epoch:
            observe = getattr(trainer.task, "observe", None)
            if observe is not None:
                observe({})
            return None
        out = dict(self.measure(trainer))
        out["train_wall_s"] += float(record.get("wall_s", 0.0))
        observe = getattr(trainer.task, "observe", None)
        if observe is not None:
            observe({"clean_acc": out["clean_acc"], "robust_acc": out["robust_acc"]})
        return out


__all__ = ["RobustnessMonitor", "robust_accuracy"]
