"""Execute a :class:`fortify.evaluate.plan.Plan` against a :class:`fortify.evaluate.state.CascadeState`.

Each step attacks the points its scope selects (the still-robust ones by default) in batches; a
point counts as broken only if the adversarial example lies inside the threat model and the
*unwrapped* model (its EoT prediction for randomized models, :class:`Scorer`) misclassifies it, so
wrappers and surrogates can make the evaluation stronger but never falsely break a point (Croce &
Hein 2020, AutoAttack's re-scoring; Athalye et al. 2018 for BPDA/EoT). Newly broken points update
the threat's state in place (adversarial example, distance, breaking step); the state is saved
after every step, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.evaluate.plan import PROBE_POINTS, Kind, Scope, Step, ThreatPlan
from fortify.evaluate.presets import build_attack
from fortify.evaluate.report import AttackRow, ThreatResult
from fortify.evaluate.state import CLEAN_WRONG_CODE, ROBUST_CODE, CascadeState, ThreatState
from fortify.evaluate.surrogate import train_surrogate
from fortify.evaluate.wrappers import SurrogateGradient

StepCallback = Callable[[str, AttackRow], None]
NOT_BUILT = "could not be built with these parameters"
NOT_NEEDED = "not needed: no sign of gradient masking (no probe broke a point the gradient attacks missed)"


class Scorer:
    """Predictions of the unwrapped model; for randomized models the argmax of the mean softmax over
    ``samples`` draws (the EoT prediction; the cascade uses ``4 * eot_samples`` so that a point is
    not counted as broken by sampling noise alone). Batches of ``batch_size``; ``x (N, ...) -> (N,)``."""

    def __init__(self, model: nn.Module, randomized: bool, samples: int, batch_size: int) -> None:
        self.model, self.randomized, self.samples, self.bs = model, randomized, samples, batch_size

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], self.bs):
            xb = x[i:i + self.bs]
            if self.randomized:
                p = torch.stack([torch.softmax(self.model(xb), 1) for _ in range(self.samples)]).mean(0)
                outs.append(p.argmax(1))
            else:
                outs.append(self.model(xb).argmax(1))
        return torch.cat(outs)


@dataclass(frozen=True)
class CascadeInputs:
    """What every step shares: the (possibly wrapped) model the attacks run on, the scorer, the
    validated inputs ``x (N, ...)`` and labels ``y (N,)``, ``clean_correct (N,)`` bool on the CPU,
    the class count, the batch size and the evaluation's base seed."""

    attack_model: nn.Module
    scorer: Scorer
    x: torch.Tensor
    y: torch.Tensor
    clean_correct: torch.Tensor
    num_classes: int
    batch_size: int
    seed: int

    @property
    def n_correct(self) -> int:
        return int(self.clean_correct.sum())

    def train_surrogate(self) -> nn.Module:
        """A standard-trained surrogate on ``(x, y)`` (:func:`fortify.evaluate.surrogate.train_surrogate`)."""
        return train_surrogate(self.x, self.y, self.num_classes, seed=self.seed)


class CascadeRunner:
    """Runs the steps of each threat plan, updating ``state`` and saving it after every step;
    ``on_step(threat, row)`` is called after each step's state is saved."""

    def __init__(self, inputs: CascadeInputs, state: CascadeState, on_step: StepCallback | None = None) -> None:
        self.inputs, self.state, self.on_step = inputs, state, on_step

    def surrogate(self) -> nn.Module:
        """The state's surrogate, trained on first use."""
        return self.state.surrogate_or(self.inputs.train_surrogate)

    def run_threat(self, tp: ThreatPlan) -> ThreatResult:
        """Run (or resume) the cascade for one threat and return its result."""
        inp = self.inputs
        ts = self.state.threats[tp.index]
        if ts is None:
            ts = self.state.threats[tp.index] = ThreatState.fresh(inp.x, inp.clean_correct)
        skipped = list(tp.skipped) + [(r.label, f"attack {r.attack!r} {NOT_BUILT}") for r in ts.rows if r.access == "-"]
        for step in tp.steps:
            if step.label in ts.done:
                continue
            if (step.kind is Kind.ADAPTIVE and not tp.adaptive_needed(ts.rows, inp.n_correct)) or (
                    step.conditional and not tp.suspect(ts.rows, inp.n_correct)):
                ts.done.append(step.label)  # not needed: nothing suggests masked gradients
                continue
            row = self.run_step(tp, step, ts)
            if row is None:
                skipped.append((step.label, f"attack {step.spec.attack!r} {NOT_BUILT}"))
                row = AttackRow(step.label, step.spec.attack, "-", 0, 0, int(ts.robust.sum()), 0.0, 0, 0, ["not built"])
            ts.rows.append(row)
            ts.done.append(step.label)
            self.state.save()
            if self.on_step is not None:
                self.on_step(str(tp.threat), row)
        ran = {r.label for r in ts.rows}
        skipped += [(s.label, NOT_NEEDED) for s in tp.steps if s.conditional and s.label not in ran]
        labels = tp.labels
        by = ["" if c == ROBUST_CODE else ("clean" if c == CLEAN_WRONG_CODE else labels[c]) for c in ts.code.tolist()]
        return ThreatResult(threat=str(tp.threat), clean_correct=inp.clean_correct, robust=ts.robust.clone(),
                            x_adv=ts.x_adv.to(inp.x.device), broken_by=by, distance=ts.distance.float(),
                            rows=[r for r in ts.rows if r.access != "-"], skipped=skipped)

    def _target(self, step: Step) -> nn.Module:
        """The model the step's attack runs on: the surrogate (transfer), the model with the
        surrogate's gradients (adaptive BPDA) or the attack model."""
        if step.on_surrogate:
            return self.surrogate()
        if step.kind is Kind.ADAPTIVE:
            return SurrogateGradient(self.inputs.attack_model, self.surrogate())
        return self.inputs.attack_model

    def run_step(self, tp: ThreatPlan, step: Step, ts: ThreatState) -> AttackRow | None:
        """Attack the points of ``step``'s scope in batches; merge newly broken ones into ``ts``.
        Returns the step's row, or None when the attack cannot be built or lacks the norm."""
        inp, thr = self.inputs, tp.threat
        try:
            attack, notes = build_attack(step.spec, step.budget)
        except (TypeError, ConfigError) as e:
            if isinstance(e, ConfigError) and "budget" in str(e):
                raise
            return None
        if thr.norm not in attack.norms:
            return None
        seed = step.seed(inp.seed, tp.index)
        torch.manual_seed(seed)
        gen = torch.Generator(device=inp.x.device).manual_seed(seed)
        idx = (inp.clean_correct if step.scope is Scope.ALL else ts.robust).nonzero().squeeze(1)
        if step.is_probe:
            idx = idx[:PROBE_POINTS]  # a convergence probe: a subset suffices and bounds its cost
        target = self._target(step) if idx.numel() else inp.attack_model  # no surrogate for nothing
        attacked = int(idx.numel())
        broken, succeeded, grad_evals, queries = 0, 0, 0, 0
        code = tp.labels.index(step.label)
        t0 = time.perf_counter()
        for i in range(0, attacked, inp.batch_size):
            b = idx[i:i + inp.batch_size]
            xb, yb = inp.x[b.to(inp.x.device)], inp.y[b.to(inp.y.device)]
            res = attack(target, xb, yb, thr, generator=gen)
            grad_evals += int(res.grad_evals)
            queries += int(res.queries)
            ok = (thr.contains(res.x_adv, xb) & (inp.scorer.predict(res.x_adv) != yb)).cpu()
            succeeded += int(ok.sum())
            ok = ok & ts.robust[b]
            if bool(ok.any()):
                hit, okd = b[ok], ok.to(res.x_adv.device)
                ts.x_adv[hit] = res.x_adv[okd].detach().cpu().to(ts.x_adv.dtype)
                ts.distance[hit] = thr.distance(res.x_adv[okd], xb[ok.to(xb.device)]).double().cpu()
                ts.code[hit] = code
                ts.robust[hit] = False
                broken += int(ok.sum())
        secs = time.perf_counter() - t0
        access = "transfer" if step.on_surrogate else getattr(attack, "access", "gradient")
        if step.on_surrogate:
            notes = notes + ["queries/grad evals are on the surrogate"]
        return AttackRow(label=step.label, attack=step.spec.attack, access=access, attacked=attacked, broken=broken,
                         robust_after=int(ts.robust.sum()), seconds=secs, grad_evals=grad_evals, queries=queries,
                         notes=notes, succeeded=succeeded)


__all__ = ["CascadeInputs", "CascadeRunner", "Scorer"]
