"""DeepFool (Moosavi-Dezfooli et al. 2016, "DeepFool: a simple and accurate method to fool deep
neural networks"), multi-class, for ``l2`` and ``linf``; minimum-norm.

At the current iterate ``x_i`` every candidate class ``k`` gives a linearised boundary
``f_k + <w_k, r> = 0`` with ``f_k = z_k - z_y`` and ``w_k = grad f_k``. The closest one,
``l = argmin_k |f_k| / ||w_k||_q`` (``q`` the dual norm), is stepped onto exactly::

    l2:   r_i = |f_l| / ||w_l||_2^2 * w_l          linf:   r_i = |f_l| / ||w_l||_1 * sign(w_l)

and ``x_{i+1} = clip(x + (1 + overshoot) * sum_i r_i)``. A sample stops as soon as it is
misclassified. Candidates are the ``candidates - 1`` highest wrong classes at the clean input
(the original uses 10 classes in total). The original adds 1e-4 (absolute, in logit units) to
``|f_l|``; here the relative ``overshoot`` alone pushes across, which keeps small-scale problems
exact. ``minimum_norm = True``: see :mod:`fortify.attacks._minnorm`.
Shapes: ``x (B, ...)``, ``y (B,)`` -> ``x_adv (B, ...)``.
"""
from __future__ import annotations

import torch

from fortify.attacks._minnorm import MinNormMixin
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.registry import ATTACKS
from fortify.errors import ConfigError
from fortify.threat import ThreatModel


@ATTACKS.register("deepfool", help="DeepFool multi-class minimum-norm attack (l2 / linf)")
class DeepFool(MinNormMixin, Attack):
    """DeepFool.

    Args:
        steps: maximum iterations (default 50).
        overshoot: relative overshoot ``> 0`` (default 0.02).
        candidates: number of classes considered, the true one included (default 10).
    """

    norms = ("l2", "linf")
    access = "gradient"
    supports_targeted = False
    minimum_norm = True

    def __init__(self, steps: int = 50, overshoot: float = 0.02, candidates: int = 10) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
        if not float(overshoot) > 0:
            raise ConfigError(f"overshoot must be > 0, got {overshoot!r}")
        if not isinstance(candidates, int) or candidates < 2:
            raise ConfigError(f"candidates must be an integer >= 2, got {candidates!r}")
        self.steps, self.overshoot, self.candidates = steps, float(overshoot), candidates

    def _run(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             targeted: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """Search ``x (B, ...)`` labelled ``y (B,)``; returns the first adversarial iterate per
        sample (the last iterate where none was found)."""
        b = x.shape[0]
        clean = oracle.logits(x)
        clean.scatter_(1, y[:, None], float("-inf"))
        k = min(self.candidates, oracle.num_classes) - 1
        cand = clean.argsort(dim=1, descending=True)[:, :k]  # (B, K)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        act = torch.arange(b, device=x.device)
        for _ in range(self.steps):
            xa, ya, ca = x_adv[act], y[act], cand[act]
            fs, ws = [], []
            logits = clean[act]  # replaced by the logits at x_adv below (k >= 1)
            for j in range(k):
                cj = ca[:, j]

                def diff(z: torch.Tensor, cj: torch.Tensor = cj) -> torch.Tensor:
                    return z.gather(1, cj[:, None]).squeeze(1) - z.gather(1, ya[:, None]).squeeze(1)

                logits, f, g = oracle.value_and_grad(xa, diff)
                fs.append(f)
                ws.append(g.reshape(len(act), -1))
            still = logits.argmax(dim=1) == ya  # robust at x_adv: keep going
            act, f, w = act[still], torch.stack(fs, 1)[still], torch.stack(ws, 1)[still]
            if act.numel() == 0:
                break
            dual = w.abs().sum(-1) if threat.norm == "linf" else w.norm(dim=-1)
            l = (f.abs() / dual.clamp_min(1e-12)).argmin(dim=1)
            rows = torch.arange(act.numel(), device=x.device)
            fl, wl, dl = f[rows, l].abs(), w[rows, l], dual[rows, l].clamp_min(1e-12)
            if threat.norm == "linf":
                r = (fl / dl)[:, None] * wl.sign()
            else:
                r = (fl / dl**2)[:, None] * wl
            r_tot[act] += r.reshape((-1,) + x.shape[1:])
            x_adv[act] = threat.clip(x[act] + (1 + self.overshoot) * r_tot[act], x[act])
        return x_adv
