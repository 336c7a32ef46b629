"""Result types of an evaluation: per-attack contributions, per-threat results, sanity flags.

:class:`EvaluationReport` is what :func:`fortify.evaluate.robust_accuracy` returns. ``to_dict()``
is JSON-ready (plain floats, ints, strings, lists); tensors (adversarial examples, per-sample
distances) stay on the objects for programmatic use. :func:`render` draws rich tables.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class AttackRow:
    """One cascade stage's contribution on one threat.

    attacked: points it ran on (the still-robust ones; probes with ``scope="all"`` run on every
    correctly classified point); broken: points it newly broke.
    """

    label: str
    attack: str
    access: str
    attacked: int
    broken: int
    robust_after: int
    seconds: float
    grad_evals: int
    queries: int
    notes: list[str] = field(default_factory=list)
    #: points of ``attacked`` this stage broke, including ones an earlier stage already broke
    succeeded: int = 0


@dataclass
class SanityFlag:
    """A named check. ``fired`` means the evaluation may be unreliable (see ``explanation``).

    ``ran`` is False when the check could not run (``evidence['reason']`` says why).
    """

    name: str
    fired: bool
    explanation: str
    evidence: dict[str, Any] = field(default_factory=dict)
    ran: bool = True


@dataclass
class ThreatResult:
    """Cascade outcome for one threat.

    robust: ``(N,)`` bool, still correctly classified after every attack.
    x_adv: ``(N, ...)`` the adversarial example that broke each point (``x`` where none did).
    broken_by: per sample, the label of the attack that broke it (``""`` if robust or clean-wrong).
    distance: ``(N,)`` distance of ``x_adv`` to ``x`` in the threat's norm (``inf`` if unbroken).
    """

    threat: str
    clean_correct: torch.Tensor
    robust: torch.Tensor
    x_adv: torch.Tensor
    broken_by: list[str]
    distance: torch.Tensor
    rows: list[AttackRow]
    skipped: list[tuple[str, str]]

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    def to_dict(self) -> dict[str, Any]:
        d = self.distance[torch.isfinite(self.distance)]
        return {
            "threat": self.threat,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "n": int(self.robust.numel()),
            "n_robust": int(self.robust.sum()),
            "median_distance_broken": float(d.median()) if d.numel() else None,
            "attacks": [asdict(r) for r in self.rows],
            "skipped": [{"label": a, "reason": b} for a, b in self.skipped],
        }


@dataclass
class EvaluationReport:
    """Everything an evaluation measured.

    threats: per-threat results in the order given. union_robust: ``(N,)`` robust under every
    threat (per-sample worst case across them). flags: sanity checks. wrappers: evaluation wrappers
    the sanity checks selected (e.g. ``["bpda", "eot"]``). config: the resolved configuration.
    """

    threats: list[ThreatResult]
    union_robust: torch.Tensor
    flags: list[SanityFlag]
    wrappers: list[str]
    config: dict[str, Any]
    seconds: float = 0.0

    @property
    def clean_accuracy(self) -> float:
        return self.threats[0].clean_accuracy

    @property
    def robust_accuracy(self) -> float:
        """Robust accuracy of the union of all threats (equals the single threat's if one)."""
        return float(self.union_robust.float().mean())

    def by_threat(self) -> dict[str, float]:
        return {t.threat: t.robust_accuracy for t in self.threats}

    def flag(self, name: str) -> SanityFlag:
        for f in self.flags:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def union_broken_by(self) -> list[str]:
        """Per sample, the first threat (in the given order) under which it was broken ("" if robust)."""
        out = []
        for i in range(int(self.union_robust.numel())):
            out.append(next((t.threat for t in self.threats if not bool(t.robust[i])), ""))
        return out

    @property
    def fired(self) -> list[str]:
        return [f.name for f in self.flags if f.fired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_by_threat": self.by_threat(),
            "n_robust_union": int(self.union_robust.sum()),
            "threats": [t.to_dict() for t in self.threats],
            "flags": [asdict(f) for f in self.flags],
            "fired": self.fired,
            "wrappers": list(self.wrappers),
            "config": dict(self.config),
            "seconds": self.seconds,
        }


def render(report: EvaluationReport, console: Any = None) -> None:
    """Print the report as rich tables (contribution table per threat, then the sanity flags)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = Table(title=f"robust accuracy (clean {report.clean_accuracy:.2%})")
    summary.add_column("threat")
    summary.add_column("robust acc", justify="right")
    for t in report.threats:
        summary.add_row(t.threat, f"{t.robust_accuracy:.2%}")
    if len(report.threats) > 1:
        summary.add_row("union", f"{report.robust_accuracy:.2%}")
    console.print(summary)
    for t in report.threats:
        tab = Table(title=f"attack contributions: {t.threat}")
        for col in ("attack", "access", "attacked", "broken", "robust after", "seconds", "grad evals", "queries"):
            tab.add_column(col, justify="left" if col in ("attack", "access") else "right")
        for r in t.rows:
            tab.add_row(r.label, r.access, str(r.attacked), str(r.broken), str(r.robust_after),
                        f"{r.seconds:.2f}", str(r.grad_evals), str(r.queries))
        if t.skipped:
            tab.caption = "skipped: " + "; ".join(f"{label} ({reason})" for label, reason in t.skipped)
        console.print(tab)
    flags = Table(title="sanity checks" + (f" (wrappers: {', '.join(report.wrappers)})" if report.wrappers else ""))
    flags.add_column("check")
    flags.add_column("status")
    flags.add_column("explanation / evidence")
    for f in report.flags:
        status = "[red]FIRED[/red]" if f.fired else ("ok" if f.ran else "not run")
        if f.fired:
            ev = json.dumps(f.evidence, default=str)
            text = f"{f.explanation}\n[dim]{ev[:160] + ('...' if len(ev) > 160 else '')}[/dim]"
        else:
            text = "" if f.ran else str(f.evidence.get("reason", ""))
        flags.add_row(f.name, status, text)
    console.print(flags)
