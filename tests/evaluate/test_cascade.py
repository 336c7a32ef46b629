"""Cascade evaluation: worst case = OR of the attacks, union of threats, resume, typed errors, report."""
from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from fortify.attacks import ATTACKS
from fortify.errors import ConfigError, DataFileError, InputError, ThreatModelError, UnknownNameError
from fortify.evaluate import AttackSpec, StateMismatchError, preset_specs, render, robust_accuracy
from fortify.evaluate.presets import resolve_kwargs
from fortify.threat import ThreatModel

from _eval_cases import trained_mlp

#: deterministic attacks (no random start): the cascade's worst case must equal their OR exactly
DETERMINISTIC = [
    AttackSpec("fgsm-half", "fgsm", {"step_ratio": 0.5}),
    AttackSpec("fgsm", "fgsm"),
    AttackSpec("pgd-det", "pgd", {"steps": 10, "random_start": False}),
]


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    return trained_mlp()


def test_worst_case_is_or_of_individual_attacks(problem) -> None:
    model, x, y = problem
    thr = ThreatModel("linf", 0.08)
    rep = robust_accuracy(model, x, y, thr, preset=DETERMINISTIC, sanity=False, batch_size=32)
    res = rep.threats[0]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    broken_any = torch.zeros_like(correct)
    for spec in DETERMINISTIC:
        kw, _ = resolve_kwargs(spec.attack, spec.kwargs)
        r = ATTACKS.get(spec.attack)(**kw)(model, x, y, thr)
        broken_any |= r.success & correct
    assert torch.equal(res.robust, correct & ~broken_any)
    assert rep.robust_accuracy == pytest.approx(float((correct & ~broken_any).float().mean()))
    # the worst case is real: every broken point's x_adv is inside the threat and misclassified
    broken = correct & ~res.robust
    with torch.no_grad():
        assert bool((model(res.x_adv[broken]).argmax(1) != y[broken]).all())
    assert bool(thr.contains(res.x_adv, x).all())
    assert torch.allclose(res.distance[broken], thr.distance(res.x_adv, x)[broken])
    assert all(res.broken_by[i] in {s.label for s in DETERMINISTIC} for i in broken.nonzero().squeeze(1).tolist())
    # each stage only saw the points still robust, and the table adds up
    rows = res.rows
    assert rows[0].attacked == int(correct.sum())
    for a, b in zip(rows, rows[1:]):
        assert b.attacked == a.robust_after == a.attacked - a.broken
    assert rows[-1].robust_after == int(res.robust.sum())


def test_union_is_per_sample_worst_case(problem) -> None:
    model, x, y = problem
    rep = robust_accuracy(model, x, y, ["linf:0.06", ThreatModel("l2", 0.25)], preset=DETERMINISTIC[1:],
                          sanity=False)
    a, b = rep.threats
    assert torch.equal(rep.union_robust, a.robust & b.robust)
    assert rep.robust_accuracy <= min(a.robust_accuracy, b.robust_accuracy)
    assert set(rep.by_threat()) == {"linf:0.06", "l2:0.25"}


def test_resume_after_interruption_gives_same_result(problem, tmp_path) -> None:
    model, x, y = problem
    kw = dict(preset="fast", budget=0.2, seed=3)
    full = robust_accuracy(model, x, y, "linf:0.08", **kw)

    class Stop(Exception):
        pass

    def stop_after_first(threat: str, row) -> None:
        raise Stop

    path = tmp_path / "state.safetensors"
    with pytest.raises(Stop):
        robust_accuracy(model, x, y, "linf:0.08", state_path=str(path), callback=stop_after_first, **kw)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    seen: list[str] = []
    resumed = robust_accuracy(model, x, y, "linf:0.08", state_path=str(path),
                              callback=lambda t, r: seen.append(r.label), **kw)
    first = full.threats[0].rows[0].label
    assert first not in seen and seen  # finished stage skipped, the rest ran
    assert torch.equal(resumed.threats[0].robust, full.threats[0].robust)
    assert torch.equal(resumed.threats[0].x_adv, full.threats[0].x_adv)
    assert [r.broken for r in resumed.threats[0].rows] == [r.broken for r in full.threats[0].rows]
    # a finished state is reused entirely
    again: list[str] = []
    robust_accuracy(model, x, y, "linf:0.08", state_path=str(path), callback=lambda t, r: again.append(r.label), **kw)
    assert again == []


def test_state_for_other_inputs_is_refused(problem, tmp_path) -> None:
    model, x, y = problem
    path = str(tmp_path / "s.safetensors")
    robust_accuracy(model, x[:20], y[:20], "linf:0.05", preset=DETERMINISTIC[:1], sanity=False, state_path=path)
    with pytest.raises(StateMismatchError):
        robust_accuracy(model, x[1:21], y[1:21], "linf:0.05", preset=DETERMINISTIC[:1], sanity=False, state_path=path)
    with pytest.raises(StateMismatchError):
        robust_accuracy(model, x[:20], y[:20], "linf:0.06", preset=DETERMINISTIC[:1], sanity=False, state_path=path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(DataFileError):
        robust_accuracy(model, x[:20], y[:20], "linf:0.05", preset=DETERMINISTIC[:1], sanity=False, state_path=str(bad))


def test_bad_input_is_typed(problem) -> None:
    model, x, y = problem
    with pytest.raises(UnknownNameError):
        robust_accuracy(model, x, y, "linf:0.1", preset="ultra")
    with pytest.raises(UnknownNameError):
        robust_accuracy(model, x, y, "linf:0.1", preset=[AttackSpec("x", "no-such-attack")])
    with pytest.raises(ThreatModelError):
        robust_accuracy(model, x, y, "linf:-0.1")
    with pytest.raises(ThreatModelError):
        robust_accuracy(model, x, y, "linf")
    with pytest.raises(ThreatModelError):
        robust_accuracy(model, x, y, [])
    with pytest.raises(InputError):
        robust_accuracy(model, x, torch.full_like(y, 7), "linf:0.1")
    with pytest.raises(InputError):
        robust_accuracy(nn.Sequential(model, nn.Flatten(0)), x, y, "linf:0.1")
    with pytest.raises(InputError):
        robust_accuracy(model, x + 2, y, "linf:0.1")
    with pytest.raises(ConfigError):
        robust_accuracy(model, x, y, "linf:0.1", budget=0)
    with pytest.raises(ConfigError):
        robust_accuracy(model, x, y, "linf:0.1", batch_size=0)


def test_presets_cover_autoattack_and_skip_unsupported() -> None:
    run, skipped = preset_specs("standard", "linf")
    labels = {s.label for s in run} | {label for label, _ in skipped}
    assert {"apgd-ce", "apgd-t", "fab-t", "square"} <= {lab.split("[")[0] for lab in labels}
    square = next(s for s in run + [AttackSpec(*s) for s in []] if s.label == "square") if "square" in ATTACKS else None
    if square is not None:
        kw, _ = resolve_kwargs("square", square.kwargs)
        assert 5000 in kw.values()
    thorough = {s.label.split("[")[0] for s in preset_specs("thorough", "linf")[0]} | {
        lab for lab, _ in preset_specs("thorough", "linf")[1]}
    assert {"hopskipjump", "signopt", "nes"} <= thorough
    if "square" in ATTACKS:  # square has no l1 version: skipped and listed, not silently dropped
        _, sk = preset_specs("standard", "l1")
        assert any(lab == "square" and "l1" in why for lab, why in sk)
    kw, notes = resolve_kwargs("fgsm", {"steps": 100, "step_ratio": 0.5}, budget=0.1)
    assert kw == {"step_ratio": 0.5} and notes
    if "pgd" in ATTACKS:
        assert resolve_kwargs("pgd", {"steps": 100}, budget=0.1)[0] == {"steps": 10}


def test_report_dict_and_render(problem) -> None:
    model, x, y = problem
    rep = robust_accuracy(model, x[:30], y[:30], ["linf:0.05", "l2:0.2"], preset="fast", budget=0.1, progress=True)
    d = rep.to_dict()
    text = json.dumps(d)
    assert "flags" in d and "attacks" in d["threats"][0] and "robust_accuracy_by_threat" in d
    assert d["robust_accuracy"] == pytest.approx(rep.robust_accuracy)
    names = {f["name"] for f in d["flags"]}
    assert {"randomized_outputs", "probability_outputs", "zero_or_nan_gradients", "blackbox_beats_whitebox",
            "single_step_beats_iterative", "non_monotone_in_eps", "large_eps_not_broken", "not_converged",
            "transfer_beats_whitebox"} == names
    assert all(f["explanation"] for f in d["flags"])
    from rich.console import Console

    buf = io.StringIO()
    render(rep, Console(file=buf, width=160))
    out = buf.getvalue()
    assert "linf:0.05" in out and "union" in out and "sanity checks" in out
    assert len(text) > 100


def test_thorough_preset_runs_every_registered_attack(problem) -> None:
    model, x, y = problem
    rep = robust_accuracy(model, x[:30], y[:30], ["linf:0.1", "l2:0.4"], preset="thorough", budget=0.03)
    for res, norm in zip(rep.threats, ("linf", "l2")):
        run, skipped = preset_specs("thorough", norm)
        labels = [r.label for r in res.rows]
        assert [s.label for s in run] == [lab for lab in labels if lab in {s.label for s in run}]
        assert {lab for lab, _ in skipped} <= {lab for lab, _ in res.skipped}
        assert res.rows[-1].robust_after == int(res.robust.sum())
        hard = [r for r in res.rows if r.access == "decision"]
        assert all(r.grad_evals == 0 for r in hard)


def test_cascade_state_round_trips_through_the_resume_file(tmp_path) -> None:
    from fortify.errors import DataFileError
    from fortify.evaluate import AttackRow, CascadeState, ThreatState
    from fortify.evaluate.state import save_state

    x = torch.rand(5, 3)
    clean = torch.tensor([True, True, False, True, False])
    ts = ThreatState.fresh(x, clean)
    assert ts.code.tolist() == [-1, -1, -2, -1, -2] and ts.distance[2] == 0 and torch.isinf(ts.distance[0])
    ts.robust[1], ts.code[1], ts.distance[1] = False, 0, 0.25
    ts.rows.append(AttackRow("fgsm", "fgsm", "gradient", 3, 1, 2, 0.1, 3, 6, ["n"], 1))
    ts.done.append("fgsm")
    path = str(tmp_path / "s.safetensors")
    state = CascadeState(threats=[ts, None], fingerprint="abc", path=path)
    state.save()
    back = CascadeState.empty(2)
    back.restore(path, "abc", torch.float32)
    assert back.threats[1] is None and back.threats[0] is not None
    got = back.threats[0]
    for a, b in ((got.robust, ts.robust), (got.x_adv, ts.x_adv), (got.distance, ts.distance), (got.code, ts.code)):
        assert torch.equal(a, b) and a.dtype == b.dtype
    assert got.rows == ts.rows and got.done == ts.done
    with pytest.raises(StateMismatchError):
        CascadeState.empty(2).restore(path, "other", torch.float32)
    save_state(path, {"fingerprint": "abc", "threats": [{"done": ["fgsm"], "rows": []}, {}]}, {})
    with pytest.raises(DataFileError):  # a finished step without its tensors
        CascadeState.empty(2).restore(path, "abc", torch.float32)
