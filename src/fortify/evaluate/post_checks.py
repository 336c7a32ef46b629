"""Post-attack sanity flags, computed from the rows of the cascade's probe steps.

Croce & Hein 2020 (AutoAttack ``checks.py``), Athalye et al. 2018 and Carlini et al. 2019 ("On
evaluating adversarial robustness"): a probe that breaks points the gradient attacks missed means
the white-box figure is unreliable. Per flag the count is the worst over threats (the sum for
black-box attacks), and the flag fires at :func:`fortify.evaluate.sanity.count_threshold` points:

* ``single_step_beats_iterative`` -- FGSM on every clean-correct point broke more points than the
  gradient attacks did in total;
* ``not_converged`` / ``transfer_beats_whitebox`` / ``blackbox_beats_whitebox`` -- the points the
  doubled-iterations probe / the transfer attack / the black-box attacks newly broke;
* ``non_monotone_in_eps`` and ``large_eps_not_broken`` -- the eps sweep of the first threat
  (:mod:`fortify.evaluate.eps_checks`).
"""
from __future__ import annotations

from typing import Any, Sequence

from fortify.attacks import ATTACKS
from fortify.evaluate import sanity as S
from fortify.evaluate.eps_checks import eps_sweep_flags
from fortify.evaluate.plan import Kind, Plan
from fortify.evaluate.presets import AttackSpec
from fortify.evaluate.report import SanityFlag, ThreatResult
from fortify.evaluate.runner import CascadeInputs

SINGLE_STEP = "single_step_beats_iterative"
#: flags counted from the rows of one probe kind: the points that kind newly broke
ROW_FLAGS: dict[Kind, str] = {Kind.DOUBLE_PROBE: "not_converged", Kind.TRANSFER: "transfer_beats_whitebox",
                              Kind.BLACKBOX: "blackbox_beats_whitebox"}
#: the order the row-based flags appear in the report
FLAG_ORDER: tuple[str, ...] = (SINGLE_STEP, *ROW_FLAGS.values())

Count = tuple[int, dict[str, Any]]


def _row_counts(plan: Plan, results: Sequence[ThreatResult]) -> dict[str, Count]:
    """Per row-based flag: the count (max over threats, sum for black-box) and per-row evidence."""
    found: dict[str, Count] = {}
    for res, tp in zip(results, plan.threats):
        for row in res.rows:
            kind = tp.kind_of.get(row.label)
            name = ROW_FLAGS.get(kind) if kind is not None else None
            if name is None:
                continue
            cnt, ev = found.get(name, (0, {}))
            ev = {**ev, f"{res.threat}/{row.label}": {"broken_missed_by_whitebox": row.broken, "attacked": row.attacked}}
            found[name] = (cnt + row.broken if kind is Kind.BLACKBOX else max(cnt, row.broken), ev)
    return found


def _single_step(plan: Plan, results: Sequence[ThreatResult]) -> Count | None:
    """FGSM successes minus the gradient attacks' total, worst over threats (None: nothing to compare)."""
    out: Count | None = None
    for res, tp in zip(results, plan.threats):
        white = tp.rows_of(res.rows, Kind.WHITEBOX)
        probe = tp.rows_of(res.rows, Kind.FGSM_PROBE)
        if white and probe:
            white_total = white[0].attacked - white[-1].robust_after
            cnt, ev = out if out is not None else (0, {})
            ev[res.threat] = {"fgsm_broken": probe[0].succeeded, "iterative_broken": white_total,
                              "of": white[0].attacked}
            out = (max(cnt, probe[0].succeeded - white_total), ev)
    return out


def post_flags(plan: Plan, results: Sequence[ThreatResult], inputs: CascadeInputs, *, budget: float,
               points: int) -> list[SanityFlag]:
    """The flags of the module doc, in :data:`FLAG_ORDER` then the eps-sweep flags on the first
    threat (up to ``points`` clean-correct inputs, the first white-box attack at ``budget``)."""
    thr_n = S.count_threshold(inputs.n_correct)
    found = _row_counts(plan, results)
    single = _single_step(plan, results)
    if single is not None:
        found[SINGLE_STEP] = single
    flags = []
    for name in FLAG_ORDER:
        if name not in found:
            flags.append(S.not_run(name, "the attacks this check needs are not registered"))
            continue
        cnt, ev = found[name]
        flags.append(S.make_flag(name, cnt >= thr_n, {**ev, "threshold": thr_n}))
    first = plan.threats[0]
    white = [s for s in first.steps if s.kind is Kind.WHITEBOX]
    spec = white[0].spec if white else (AttackSpec("fgsm", "fgsm") if "fgsm" in ATTACKS else None)
    x, y = inputs.x, inputs.y
    idx = inputs.clean_correct.nonzero().squeeze(1)[:points].to(x.device)
    return flags + eps_sweep_flags(inputs.attack_model, inputs.scorer.predict, x[idx], y[idx], first.threat, spec,
                                   budget=budget, batch_size=inputs.batch_size, seed=inputs.seed)
