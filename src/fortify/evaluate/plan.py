"""The attack cascade's plan: per threat, the ordered steps the cascade runs (built once, then data).

A :class:`Plan` is made once from the preset, the threats, the budget and whether sanity checks run
(:meth:`Plan.build`); it holds one :class:`ThreatPlan` per threat, each an ordered tuple of
:class:`Step` (the attack spec, its :class:`Kind`, which points it runs on, whether it is
conditional on signs of gradient masking, and its seed). The order per threat (Croce & Hein 2020,
AutoAttack, for the cascade; Athalye et al. 2018 and Carlini et al. 2019 for the checks):

1. the preset's gradient attacks (``whitebox``);
2. with sanity checks: an FGSM probe on every clean-correct point (``fgsm-probe``), the first gradient
   attack with doubled iterations on up to :data:`PROBE_POINTS` survivors (``double-probe``), a
   transfer attack from a standard-trained surrogate (``transfer``);
3. the preset's score- and decision-based attacks (``blackbox``; with sanity checks and none in the
   preset, a cheap gradient-free probe from :data:`BLACKBOX_PROBES`);
4. the preset's ``when="suspect"`` attacks (black-box ones first), each after its cheap probe, run in
   full only on signs of masking (``conditional``); gradient ones have kind ``late``;
5. with sanity checks: the first gradient attack again through BPDA with the surrogate's gradients
   (``adaptive``), only if probes, transfer or black-box attacks broke points the gradient attacks
   missed.

The plan does no work and touches no model; the runner (:mod:`fortify.evaluate.runner`) executes it
against a :class:`fortify.evaluate.state.CascadeState`.
"""
from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field
from typing import Sequence

from fortify.attacks import ATTACKS
from fortify.errors import ThreatModelError
from fortify.evaluate import sanity as S
from fortify.evaluate.presets import AttackSpec, preset_specs
from fortify.evaluate.report import AttackRow
from fortify.threat import ThreatModel

ThreatLike = ThreatModel | str
Preset = str | Sequence[AttackSpec]

#: most points the doubled-iterations probe and a suspect attack's probe attack (evidence, not every point)
PROBE_POINTS = 128

#: cheap gradient-free probe added when the preset itself has no black-box attack
BLACKBOX_PROBES: tuple[AttackSpec, ...] = (
    AttackSpec("square-probe", "square", {"queries": 1000}),
    AttackSpec("hopskipjump-probe", "hopskipjump", {"queries": 1000}),
    AttackSpec("signopt-probe", "signopt", {"queries": 1000}),
    AttackSpec("nes-probe", "nes", {"queries": 1000}),
)


class Kind(str, enum.Enum):
    """What a step is for; the post-attack sanity flags read the rows of probe kinds."""

    WHITEBOX = "whitebox"
    BLACKBOX = "blackbox"
    FGSM_PROBE = "fgsm-probe"
    DOUBLE_PROBE = "double-probe"
    TRANSFER = "transfer"
    LATE = "late"
    ADAPTIVE = "adaptive"


class Scope(str, enum.Enum):
    """Which points a step attacks: the still-robust ones, every clean-correct one, or a probe subset
    (the first :data:`PROBE_POINTS` still-robust ones)."""

    REMAINING = "remaining"
    ALL = "all"
    PROBE = "probe"


#: kinds whose broken points, missed by the gradient attacks, are signs of gradient masking
CHEAP_KINDS: frozenset[Kind] = frozenset({Kind.FGSM_PROBE, Kind.TRANSFER, Kind.BLACKBOX})


@dataclass(frozen=True)
class Step:
    """One cascade step: attack ``spec`` at ``budget``; ``on_surrogate``: attack the surrogate and
    score on the model (transfer); ``conditional``: run only on signs of gradient masking."""

    label: str
    kind: Kind
    spec: AttackSpec
    budget: float
    on_surrogate: bool = False
    scope: Scope = Scope.REMAINING
    conditional: bool = False

    def seed(self, base_seed: int, threat_index: int) -> int:
        """Deterministic per-step seed: resumed and fresh runs draw the same random numbers."""
        return (base_seed * 1_000_003 + zlib.crc32(f"{threat_index}:{self.label}".encode())) % (2**62)

    @property
    def is_probe(self) -> bool:
        """Whether the step attacks at most :data:`PROBE_POINTS` points."""
        return self.kind is Kind.DOUBLE_PROBE or self.scope is Scope.PROBE


@dataclass(frozen=True)
class ThreatPlan:
    """The steps for one threat (``index`` in the evaluation's threat list) and the attacks skipped."""

    index: int
    threat: ThreatModel
    steps: tuple[Step, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    kind_of: dict[str, Kind] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind_of", {s.label: s.kind for s in self.steps})

    @property
    def labels(self) -> list[str]:
        """Step labels in order; ``broken_by`` codes index into this list."""
        return [s.label for s in self.steps]

    def rows_of(self, rows: Sequence[AttackRow], *kinds: Kind) -> list[AttackRow]:
        """The rows whose step has one of ``kinds``."""
        return [r for r in rows if self.kind_of.get(r.label) in kinds]

    def suspect(self, rows: Sequence[AttackRow], n: int) -> bool:
        """Signs of gradient masking so far: the FGSM probe, the transfer attack or a black-box attack
        broke a point the gradient attacks missed, or doubling the iterations broke
        :func:`fortify.evaluate.sanity.count_threshold` points (``n`` clean-correct points)."""
        return any(r.broken > 0 for r in self.rows_of(rows, *CHEAP_KINDS)) or any(
            r.broken >= S.count_threshold(n) for r in self.rows_of(rows, Kind.DOUBLE_PROBE))

    def adaptive_needed(self, rows: Sequence[AttackRow], n: int) -> bool:
        """Whether the probes together broke enough points the gradient attacks missed to run BPDA."""
        missed = sum(r.broken for r in self.rows_of(rows, *CHEAP_KINDS, Kind.DOUBLE_PROBE))
        return missed >= S.count_threshold(n)


@dataclass(frozen=True)
class Plan:
    """Per threat, in the order given, the steps of the cascade (see module doc)."""

    threats: tuple[ThreatPlan, ...]

    @classmethod
    def build(cls, preset: Preset, threats: Sequence[ThreatModel], *, budget: float, sanity: bool,
              suspect: bool = False, transfer: bool = False) -> "Plan":
        """The plan for ``threats``; ``suspect``: a pre-check flag fired, so ``when="suspect"`` and
        ``"flagged"`` attacks run in full (as they do without sanity checks). ``transfer``: the transfer
        step from a surrogate also without sanity checks (a black-box target, e.g. an ONNX model)."""
        out = []
        for i, thr in enumerate(threats):
            steps, skipped = _threat_steps(preset, thr.norm, budget, sanity, suspect, transfer)
            out.append(ThreatPlan(i, thr, tuple(steps), tuple(skipped)))
        return cls(tuple(out))

    @property
    def step_labels(self) -> list[list[str]]:
        """Labels per threat (part of the resume fingerprint)."""
        return [tp.labels for tp in self.threats]

    @property
    def total_steps(self) -> int:
        return sum(len(tp.steps) for tp in self.threats)


def as_threats(threat: ThreatLike | Sequence[ThreatLike]) -> list[ThreatModel]:
    """Normalise one threat / ``"norm:eps"`` string / list of them to ThreatModels (typed errors)."""
    items = [threat] if isinstance(threat, (ThreatModel, str)) else list(threat)
    if not items:
        raise ThreatModelError("at least one threat model is needed")
    out = []
    for t in items:
        if isinstance(t, str):
            t = ThreatModel.parse(t)
        if not isinstance(t, ThreatModel):
            raise ThreatModelError(f"threat must be a ThreatModel or 'norm:eps' string, got {type(t).__name__}")
        out.append(t)
    return out


def _doubled(spec: AttackSpec) -> AttackSpec:
    """The same attack with twice the iterations (the convergence probe)."""
    kw = dict(spec.kwargs)
    kw["steps"] = 2 * int(kw.get("steps", 50))
    return AttackSpec(spec.label + "-x2", spec.attack, kw)


def _blackbox_probe(norm: str) -> AttackSpec | None:
    """First registered gradient-free probe supporting ``norm`` (None if there is none)."""
    for spec in BLACKBOX_PROBES:
        if spec.attack in ATTACKS and norm in ATTACKS.get(spec.attack).norms:
            return spec
    return None


def _threat_steps(preset: Preset, norm: str, budget: float, sanity: bool,
                  suspect: bool, transfer: bool = False) -> tuple[list[Step], list[tuple[str, str]]]:
    """Ordered steps for one norm and the ``(label, reason)`` of attacks left out (see module doc)."""
    specs, skipped = preset_specs(preset, norm)
    eager = suspect or not sanity
    unflagged = [s for s in specs if s.when == "flagged" and not eager]
    skipped = skipped + [(s.label, "not needed: no pre-check flag fired") for s in unflagged]
    cond = [s for s in specs if s.when == "suspect" and not eager]
    white = [s for s in specs if s.access == "gradient" and s not in cond + unflagged]
    black = [s for s in specs if s.access != "gradient" and s not in cond + unflagged]
    steps = [Step(s.label, Kind.WHITEBOX, s, budget) for s in white]
    if sanity:
        steps.append(Step("fgsm-probe", Kind.FGSM_PROBE, AttackSpec("fgsm-probe", "fgsm"), 1.0, scope=Scope.ALL))
        if white:
            d = _doubled(white[0])
            steps.append(Step(d.label, Kind.DOUBLE_PROBE, d, budget))
    if sanity or transfer:
        t = AttackSpec("transfer", "pgd", {"steps": 20}) if "pgd" in ATTACKS else AttackSpec("transfer", "fgsm")
        steps.append(Step("transfer", Kind.TRANSFER, t, budget, on_surrogate=True))
    if sanity and not black and not any(s.access != "gradient" for s in cond):
        probe = _blackbox_probe(norm)
        if probe is not None:
            steps.append(Step(probe.label, Kind.BLACKBOX, probe, budget))
    steps += [Step(s.label, Kind.BLACKBOX, s, budget) for s in black]
    for s in sorted(cond, key=lambda c: c.access == "gradient"):  # black-box ones first
        kind = Kind.LATE if s.access == "gradient" else Kind.BLACKBOX
        if s.probe is not None:
            p = AttackSpec(s.label + "-probe", s.attack, {**s.kwargs, **s.probe})
            steps.append(Step(p.label, kind, p, budget, scope=Scope.PROBE))
        steps.append(Step(s.label, kind, s, budget, conditional=True))
    if sanity and white:
        a = white[0]
        steps.append(Step(f"{a.label}+bpda(surrogate)", Kind.ADAPTIVE,
                          AttackSpec(a.label + "+bpda", a.attack, dict(a.kwargs)), budget))
    return steps, skipped
