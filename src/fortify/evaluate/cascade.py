"""Cascade ensemble evaluation: ``robust_accuracy(model, x, y, threat, preset=...)``.

Attacks run in sequence, each only on the points still robust, and the per-sample worst case is
kept (the adversarial example that broke the point, the attack, its distance) -- the scheme of
AutoAttack (Croce & Hein 2020). Every adversarial example is *re-scored* on the unwrapped model
(its EoT prediction for randomized models) and checked against the threat model, so wrappers and
surrogates can only make the evaluation stronger, never falsely break a point.

Stages per threat: the preset's gradient attacks; with ``sanity=True`` then an FGSM probe, the
first gradient attack with doubled iterations, a transfer attack from a standard-trained
surrogate; then the preset's score- and decision-based attacks (a cheap Square probe if the preset
has none); finally, only if the probes, transfer or black-box attacks broke points the gradient
attacks missed (masked gradients the pre-checks could not remedy), the first gradient attack again
through BPDA with the surrogate's gradients (:class:`SurrogateGradient`). The state is saved atomically
after each stage, so a rerun with the same ``state_path`` resumes where it stopped.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from fortify.attacks import ATTACKS
from fortify.models.state import device_of, frozen
from fortify.errors import ConfigError, InputError, ThreatModelError
from fortify.evaluate import sanity as S
from fortify.evaluate.presets import AttackSpec, build_attack, preset_specs
from fortify.evaluate.report import AttackRow, EvaluationReport, SanityFlag, ThreatResult
from fortify.evaluate.state import fingerprint, load_state, save_state
from fortify.evaluate.surrogate import train_surrogate
from fortify.evaluate.wrappers import SurrogateGradient
from fortify.threat import ThreatModel
from fortify.validation import check_images, check_labels, check_logits

ThreatLike = ThreatModel | str


@dataclass
class _Stage:
    label: str
    kind: str  # whitebox | blackbox | fgsm-probe | double-probe | transfer | adaptive
    spec: AttackSpec
    budget: float
    on_surrogate: bool = False
    scope: str = "remaining"  # or "all": every clean-correct point; "probe": the first PROBE_POINTS survivors
    conditional: bool = False  # run only on signs of gradient masking (see _suspect)


def _as_threats(threat: ThreatLike | Sequence[ThreatLike]) -> list[ThreatModel]:
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


class _Scorer:
    """Predictions of the unwrapped model; for randomized models the argmax of the mean softmax over
    ``samples`` draws (the EoT prediction; the cascade uses ``4 * eot_samples`` so that a point is
    not counted as broken by sampling noise alone)."""

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


def _stage_seed(seed: int, threat_index: int, label: str) -> int:
    """Deterministic per-stage seed: resumed and fresh runs draw the same random numbers."""
    return (seed * 1_000_003 + zlib.crc32(f"{threat_index}:{label}".encode())) % (2**62)


def _doubled(spec: AttackSpec) -> AttackSpec:
    """The same attack with twice the iterations (the convergence probe)."""
    kw = dict(spec.kwargs)
    kw["steps"] = 2 * int(kw.get("steps", 50))
    return AttackSpec(spec.label + "-x2", spec.attack, kw)


def _plan(preset: str | Sequence[AttackSpec], norm: str, budget: float, sanity: bool,
          suspect: bool = False) -> tuple[list[_Stage], list[tuple[str, str]]]:
    """Ordered stages for one norm: gradient attacks, probes, transfer, black-box, the preset's
    ``when="suspect"`` attacks (each after its cheap probe; run in full only on signs of masking,
    always when ``suspect`` -- a fired pre-check flag -- or without sanity checks), adaptive BPDA."""
    specs, skipped = preset_specs(preset, norm)
    eager = suspect or not sanity
    unflagged = [s for s in specs if s.when == "flagged" and not eager]
    skipped = skipped + [(s.label, "not needed: no pre-check flag fired") for s in unflagged]
    cond = [s for s in specs if s.when == "suspect" and not eager]
    white = [s for s in specs if s.access == "gradient" and s not in cond + unflagged]
    black = [s for s in specs if s.access != "gradient" and s not in cond + unflagged]
    stages = [_Stage(s.label, "whitebox", s, budget) for s in white]
    if sanity:
        stages.append(_Stage("fgsm-probe", "fgsm-probe", AttackSpec("fgsm-probe", "fgsm"), 1.0, scope="all"))
        if white:
            d = _doubled(white[0])
            stages.append(_Stage(d.label, "double-probe", d, budget))
        t = AttackSpec("transfer", "pgd", {"steps": 20}) if "pgd" in ATTACKS else AttackSpec("transfer", "fgsm")
        stages.append(_Stage("transfer", "transfer", t, budget, on_surrogate=True))
    if sanity and not black and not any(s.access != "gradient" for s in cond):
        probe = _blackbox_probe(norm)
        if probe is not None:
            stages.append(_Stage(probe.label, "blackbox", probe, budget))
    stages += [_Stage(s.label, "blackbox", s, budget) for s in black]
    for s in sorted(cond, key=lambda c: c.access == "gradient"):  # black-box ones first
        kind = "late" if s.access == "gradient" else "blackbox"
        if s.probe is not None:
            p = AttackSpec(s.label + "-probe", s.attack, {**s.kwargs, **s.probe})
            stages.append(_Stage(p.label, kind, p, budget, scope="probe"))
        stages.append(_Stage(s.label, kind, s, budget, conditional=True))
    if sanity and white:
        a = white[0]
        stages.append(_Stage(f"{a.label}+bpda(surrogate)", "adaptive", AttackSpec(a.label + "+bpda", a.attack,
                                                                                  dict(a.kwargs)), budget))
    return stages, skipped


#: most points the doubled-iterations probe attacks (it only needs evidence, not every point)
PROBE_POINTS = 128

#: cheap gradient-free probe added when the preset itself has no black-box attack
BLACKBOX_PROBES: tuple[AttackSpec, ...] = (
    AttackSpec("square-probe", "square", {"queries": 1000}),
    AttackSpec("hopskipjump-probe", "hopskipjump", {"queries": 1000}),
    AttackSpec("signopt-probe", "signopt", {"queries": 1000}),
    AttackSpec("nes-probe", "nes", {"queries": 1000}),
)


def _suspect(rows: list[AttackRow], kind_of: dict[str, str], n: int) -> bool:
    """Signs of gradient masking so far: the FGSM probe, the transfer attack or a black-box attack
    broke a point the gradient attacks missed, or doubling the iterations broke ``count_threshold``."""
    cheap = ("fgsm-probe", "transfer", "blackbox")
    return any(r.broken > 0 for r in rows if kind_of.get(r.label) in cheap) or any(
        r.broken >= S.count_threshold(n) for r in rows if kind_of.get(r.label) == "double-probe")


def _blackbox_probe(norm: str) -> AttackSpec | None:
    """First registered gradient-free probe supporting ``norm`` (None if there is none)."""
    for spec in BLACKBOX_PROBES:
        if spec.attack in ATTACKS and norm in ATTACKS.get(spec.attack).norms:
            return spec
    return None


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatLike | Sequence[ThreatLike],
    *,
    preset: str | Sequence[AttackSpec] = "fast",
    budget: float = 1.0,
    batch_size: int = 256,
    state_path: str | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    sanity: bool = True,
    surrogate: nn.Module | None = None,
    eot_samples: int = 16,
    eps_check_points: int = 64,
    callback: Callable[[str, AttackRow], None] | None = None,
    progress: bool = False,
) -> EvaluationReport:
    """Robust accuracy of ``model`` on ``x (N, ...)``, ``y (N,)`` under one or several threats.

    Args:
        threat: a :class:`ThreatModel`, a ``"linf:0.3"`` string or a list of them (each evaluated,
            plus their union: a point is robust only if robust under every threat).
        preset: ``"fast"``, ``"standard"`` or ``"thorough"`` (see :mod:`fortify.evaluate.presets`),
            or a custom list of :class:`AttackSpec` run in that order.
        budget: multiplies every attack's iterations and queries (``0.1`` for smoke tests).
        batch_size: points per attack call.
        state_path: safetensors file for resumable state; finished stages are skipped on rerun.
        seed / generator: reproducibility; the global RNG is restored afterwards.
        sanity: run the sanity checks and their remedies (BPDA / EoT / rescaling, probes).
        surrogate: standard-trained model for the transfer check (trained on ``x, y`` if None).
        eot_samples: draws per EoT forward and per randomized-model prediction.
        callback: called as ``callback(threat, row)`` after each stage's state is saved.
        progress: show a rich progress bar (one step per stage) on stderr.

    Raises: UnknownNameError (preset), ThreatModelError, InputError, ConfigError,
    :class:`fortify.evaluate.state.StateMismatchError`.
    """
    preset_specs(preset, "linf")  # UnknownNameError / ConfigError for a bad preset, before any work
    threats = _as_threats(threat)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(budget, (int, float)) or not budget > 0:
        raise ConfigError(f"budget must be a number > 0, got {budget!r}")
    if not isinstance(eot_samples, int) or eot_samples < 1:
        raise ConfigError(f"eot_samples must be a positive integer, got {eot_samples!r}")
    for t in threats:
        check_images(x, t.bounds)
    dev = device_of(model)
    if dev is not None and x.device != dev:
        raise InputError(f"x is on {x.device} but the model is on {dev}; fortify never moves the model")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
    x = x.detach()
    n = x.shape[0]
    t0 = time.perf_counter()
    rng_devices = [x.device.index or 0] if x.is_cuda else []
    with torch.random.fork_rng(devices=rng_devices), frozen(model):
        torch.manual_seed(seed)
        with torch.no_grad():
            logits = check_logits(model(x[:batch_size]), min(n, batch_size))
        y = check_labels(y, n, logits.shape[1]).to(x.device)
        num_classes = logits.shape[1]
        sur: list[nn.Module | None] = [surrogate]

        def get_surrogate() -> nn.Module:
            trained = sur[0]
            if trained is None:
                trained = sur[0] = train_surrogate(x, y, num_classes, seed=seed)
            return trained

        if sanity:
            remedy = S.pre_checks(model, x, y, eot_samples=eot_samples, surrogate_factory=get_surrogate)
        else:
            remedy = S.Remedy(flags=[], attack_model=model)
        scorer = _Scorer(model, remedy.randomized, 4 * eot_samples, batch_size)
        torch.manual_seed(seed)
        clean_correct = scorer.predict(x) == y
        suspect = any(f.fired for f in remedy.flags)
        plans = [_plan(preset, t.norm, budget, sanity, suspect) for t in threats]
        config = {
            "threats": [[t.norm, t.eps, list(t.bounds)] for t in threats],
            "preset": preset if isinstance(preset, str) else [[s.label, s.attack, s.kwargs] for s in preset], "budget": budget,
            "batch_size": batch_size, "seed": seed, "sanity": sanity, "eot_samples": eot_samples,
            "stages": [[s.label for s in p[0]] for p in plans], "wrappers": remedy.wrappers,
        }
        fp = fingerprint(model, x, y, {**config, "surrogate": _surrogate_id(surrogate)})
        loaded = load_state(state_path, fp) if state_path else None
        doc: dict[str, Any] = loaded[0] if loaded else {"fingerprint": fp, "threats": [{} for _ in threats]}
        tensors: dict[str, torch.Tensor] = dict(loaded[1]) if loaded else {}

        results: list[ThreatResult] = []
        bar = _progress_bar(progress, sum(len(p[0]) for p in plans))

        def on_stage(t: str, row: AttackRow) -> None:
            if bar is not None:
                bar.advance(info=f"{t} {row.label}")
            if callback is not None:
                callback(t, row)

        try:
            for ti, (thr, (stages, skipped)) in enumerate(zip(threats, plans)):
                results.append(_evaluate_threat(
                    ti, thr, stages, skipped, remedy.attack_model, scorer, x, y, clean_correct, num_classes,
                    batch_size, seed, doc, tensors, state_path, sur, on_stage))
        finally:
            if bar is not None:
                bar.close()
        flags = list(remedy.flags)
        if sanity:
            flags += _post_flags(results, remedy.attack_model, scorer, x, y, clean_correct, threats, plans,
                                 batch_size, seed, eps_check_points, budget)
    union = torch.stack([r.robust for r in results]).all(dim=0)
    return EvaluationReport(threats=results, union_robust=union, flags=flags, wrappers=remedy.wrappers,
                            config=config, seconds=time.perf_counter() - t0)


def _progress_bar(enabled: bool, total: int) -> Any:
    """An open :func:`fortify.progress.task` (a bar on a terminal, periodic lines in a log), or None."""
    if not enabled:
        return None
    from fortify import progress as fprogress

    return fprogress.task("attack cascade", total=total, unit="attacks", enabled=True)


def _surrogate_id(surrogate: nn.Module | None) -> str:
    """Fingerprint component for the caller-supplied surrogate (``"trained"`` when built here)."""
    if surrogate is None:
        return "trained"
    return fingerprint(surrogate, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), {})


def _evaluate_threat(ti: int, thr: ThreatModel, stages: list[_Stage], skipped: list[tuple[str, str]],
                     attack_model: nn.Module, scorer: _Scorer, x: torch.Tensor, y: torch.Tensor,
                     clean_correct: torch.Tensor, num_classes: int, batch_size: int, seed: int,
                     doc: dict[str, Any], tensors: dict[str, torch.Tensor], state_path: str | None,
                     sur: list[nn.Module | None], callback: Callable[[str, AttackRow], None] | None) -> ThreatResult:
    """Run (or resume) the cascade for one threat; updates ``doc``/``tensors`` and saves them."""
    labels = [s.label for s in stages]
    tdoc = doc["threats"][ti]
    if tdoc.get("done"):
        robust = tensors[f"t{ti}.robust"].bool()
        x_adv = tensors[f"t{ti}.x_adv"].to(x.dtype)
        distance = tensors[f"t{ti}.distance"].to(torch.float64)
        code = tensors[f"t{ti}.broken_by"].long()
        rows = [AttackRow(**r) for r in tdoc["rows"]]
    else:
        robust = clean_correct.clone().cpu()
        x_adv = x.detach().cpu().clone()
        distance = torch.where(clean_correct.cpu(), torch.tensor(float("inf")), torch.tensor(0.0)).double()
        code = torch.where(clean_correct.cpu(), -1, -2).long()
        rows = []
        tdoc.update({"done": [], "rows": []})
    skipped = list(skipped) + [(r.label, f"attack {r.attack!r} could not be built with these parameters")
                               for r in rows if r.access == "-"]
    kind_of = {s.label: s.kind for s in stages}
    for stage in stages:
        if stage.label in tdoc["done"]:
            continue
        if stage.kind == "adaptive":
            missed = sum(r.broken for r in rows if kind_of.get(r.label) in ("transfer", "blackbox", "double-probe",
                                                                               "fgsm-probe"))
            if missed < S.count_threshold(int(clean_correct.sum())):
                tdoc["done"].append(stage.label)  # not needed: nothing suggests masked gradients
                continue
        if stage.conditional and not _suspect(rows, kind_of, int(clean_correct.sum())):
            tdoc["done"].append(stage.label)
            continue
        row = _run_stage(ti, thr, stage, attack_model, scorer, x, y, robust, x_adv, distance, code,
                         labels, num_classes, batch_size, seed, sur, clean_correct.cpu())
        if row is None:
            skipped.append((stage.label, f"attack {stage.spec.attack!r} could not be built with these parameters"))
            row = AttackRow(stage.label, stage.spec.attack, "-", 0, 0, int(robust.sum()), 0.0, 0, 0, ["not built"])
        rows.append(row)
        tdoc["done"].append(stage.label)
        tdoc["rows"].append(row.__dict__)
        tensors.update({f"t{ti}.robust": robust.to(torch.uint8), f"t{ti}.x_adv": x_adv,
                        f"t{ti}.distance": distance, f"t{ti}.broken_by": code.to(torch.int32)})
        if state_path:
            save_state(state_path, doc, tensors)
        if callback is not None:
            callback(str(thr), row)
    ran = {r.label for r in rows}
    skipped += [(s.label, "not needed: no sign of gradient masking (no probe broke a point the gradient attacks "
                 "missed)") for s in stages if s.conditional and s.label not in ran]
    by = ["" if c == -1 else ("clean" if c == -2 else labels[c]) for c in code.tolist()]
    return ThreatResult(threat=str(thr), clean_correct=clean_correct.cpu(), robust=robust.clone(),
                        x_adv=x_adv.to(x.device), broken_by=by, distance=distance.float(),
                        rows=[r for r in rows if r.access != "-"], skipped=skipped)


def _run_stage(ti: int, thr: ThreatModel, stage: _Stage, attack_model: nn.Module, scorer: _Scorer,
               x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor, x_adv: torch.Tensor,
               distance: torch.Tensor, code: torch.Tensor, labels: list[str], num_classes: int,
               batch_size: int, seed: int, sur: list[nn.Module | None],
               clean_correct: torch.Tensor) -> AttackRow | None:
    """Attack the still-robust points in batches; merge newly broken ones in place."""
    try:
        attack, notes = build_attack(stage.spec, stage.budget)
    except (TypeError, ConfigError) as e:
        if isinstance(e, ConfigError) and "budget" in str(e):
            raise
        return None
    if thr.norm not in attack.norms:
        return None
    sseed = _stage_seed(seed, ti, stage.label)
    torch.manual_seed(sseed)
    gen = torch.Generator(device=x.device).manual_seed(sseed)
    idx = (clean_correct if stage.scope == "all" else robust).nonzero().squeeze(1)
    if stage.kind == "double-probe" or stage.scope == "probe":
        idx = idx[:PROBE_POINTS]  # a convergence probe: a subset suffices and bounds its cost
    target_model = attack_model
    if (stage.on_surrogate or stage.kind == "adaptive") and idx.numel():  # no surrogate for nothing
        surrogate = sur[0]
        if surrogate is None:
            surrogate = sur[0] = train_surrogate(x, y, num_classes, seed=seed)
        target_model = surrogate if stage.on_surrogate else SurrogateGradient(attack_model, surrogate)
    attacked = int(idx.numel())
    broken, succeeded, grad_evals, queries = 0, 0, 0, 0
    t0 = time.perf_counter()
    for i in range(0, attacked, batch_size):
        b = idx[i:i + batch_size]
        xb, yb = x[b.to(x.device)], y[b.to(y.device)]
        res = attack(target_model, xb, yb, thr, generator=gen)
        grad_evals += int(res.grad_evals)
        queries += int(res.queries)
        ok = thr.contains(res.x_adv, xb) & (scorer.predict(res.x_adv) != yb)
        ok = ok.cpu()
        succeeded += int(ok.sum())
        ok = ok & robust[b]
        if bool(ok.any()):
            hit = b[ok]
            x_adv[hit] = res.x_adv[ok.to(res.x_adv.device)].detach().cpu().to(x_adv.dtype)
            distance[hit] = thr.distance(res.x_adv[ok.to(res.x_adv.device)], xb[ok.to(xb.device)]).double().cpu()
            code[hit] = labels.index(stage.label)
            robust[hit] = False
            broken += int(ok.sum())
    secs = time.perf_counter() - t0
    access = "transfer" if stage.on_surrogate else getattr(attack, "access", "gradient")
    if stage.on_surrogate:
        notes = notes + ["queries/grad evals are on the surrogate"]
    return AttackRow(label=stage.label, attack=stage.spec.attack, access=access, attacked=attacked, broken=broken,
                     robust_after=int(robust.sum()), seconds=secs, grad_evals=grad_evals, queries=queries,
                     notes=notes, succeeded=succeeded)


def _post_flags(results: list[ThreatResult], attack_model: nn.Module, scorer: _Scorer, x: torch.Tensor,
                y: torch.Tensor, clean_correct: torch.Tensor, threats: list[ThreatModel],
                plans: list[tuple[list[_Stage], list[tuple[str, str]]]], batch_size: int, seed: int,
                eps_check_points: int, budget: float) -> list[SanityFlag]:
    """Flags from the stage rows (worst over threats) plus the eps-sweep checks (first threat)."""
    from fortify.evaluate.eps_checks import eps_sweep_flags

    thr_n = S.count_threshold(int(clean_correct.sum()))
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    kinds = {"fgsm-probe": "single_step_beats_iterative", "double-probe": "not_converged",
             "transfer": "transfer_beats_whitebox", "blackbox": "blackbox_beats_whitebox"}
    ran: set[str] = set()
    for res, (stages, _) in zip(results, plans):
        kind_of = {s.label: s.kind for s in stages}
        for row in res.rows:
            name = kinds.get(kind_of.get(row.label, ""))
            if name is None:
                continue
            ran.add(name)
            cnt, ev = found.get(name, (0, {}))
            ev = dict(ev)
            ev[f"{res.threat}/{row.label}"] = {"broken_missed_by_whitebox": row.broken, "attacked": row.attacked}
            found[name] = (max(cnt, row.broken) if name != "blackbox_beats_whitebox" else cnt + row.broken, ev)
    for res, (stages, _) in zip(results, plans):
        kind_of = {s.label: s.kind for s in stages}
        white = [r for r in res.rows if kind_of.get(r.label) == "whitebox"]
        probe = [r for r in res.rows if kind_of.get(r.label) == "fgsm-probe"]
        if white and probe:
            white_total = white[0].attacked - white[-1].robust_after
            cnt, ev = found.get("ss", (0, {}))
            ev[res.threat] = {"fgsm_broken": probe[0].succeeded, "iterative_broken": white_total,
                              "of": white[0].attacked}
            found["ss"] = (max(cnt, probe[0].succeeded - white_total), ev)
    if "ss" in found:
        found["single_step_beats_iterative"] = found.pop("ss")
    else:
        ran.discard("single_step_beats_iterative")
    flags = []
    for name in kinds.values():
        if name not in ran:
            flags.append(S.not_run(name, "the attacks this check needs are not registered"))
            continue
        cnt, ev = found[name]
        flags.append(S.make_flag(name, cnt >= thr_n, {**ev, "threshold": thr_n}))
    first = plans[0][0]
    white_stages = [s for s in first if s.kind == "whitebox"]
    spec = white_stages[0].spec if white_stages else (AttackSpec("fgsm", "fgsm") if "fgsm" in ATTACKS else None)
    flags += eps_sweep_flags(attack_model, scorer.predict, x, y, clean_correct, threats[0], spec,
                             budget, batch_size, seed, eps_check_points)
    return flags
