"""The ``robustness`` pipeline stage against an analytic reference.

For a linear classifier ``z = W x + b`` the smallest perturbation that changes the prediction of
``x`` (label ``y``) is ``min_j (z_y - z_j) / ||w_y - w_j||_*`` (dual norm: l1 for linf, l2 for l2).
Inputs lie in [0.35, 0.65] and every relevant distance is < 0.35, so the [0, 1] box never binds:
an image is robust at eps exactly when its distance exceeds eps. The stage must report exactly that
robust accuracy (per threat and for the union), record it in the run store, write its files and a
report section, resume from its state file, and refuse bad configuration before any work.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fortify.config import load_config
from fortify.errors import ConfigError, InputError, ThreatModelError, UnknownNameError
from fortify.evaluate import StateMismatchError
from fortify.pipeline.stages.robustness import RobustnessStage
from fortify.pipeline import RunContext
from fortify.store import RunStore


def _problem(n: int = 48, k: int = 3, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Linear 3-class model on (1, 4, 4) inputs; 4 labels flipped so clean accuracy < 1."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(16, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, 16, generator=g))
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.35 + 0.3 * torch.rand(n, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % k
    return model, x, y


def _distances(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dual: float) -> torch.Tensor:
    """Exact minimal adversarial distance per image (0 where misclassified)."""
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    out = torch.zeros(x.shape[0])
    for i in range(x.shape[0]):
        yi = int(y[i])
        if int(z[i].argmax()) != yi:
            continue
        out[i] = min(float((z[i, yi] - z[i, j]) / (w[yi] - w[j]).norm(p=dual)) for j in range(w.shape[0]) if j != yi)
    return out


def _gap_eps(d: torch.Tensor) -> float:
    """An eps in the widest gap between the middle distances (no distance within 10% of it)."""
    s = d[d > 0].sort().values
    mid = s[len(s) // 4: 3 * len(s) // 4]
    i = int((mid[1:] / mid[:-1]).argmax())
    return float((mid[i] * mid[i + 1]).sqrt())


def _ctx(tmp_path: Path, model: nn.Module, x: torch.Tensor, y: torch.Tensor, overrides: list[str]) -> RunContext:
    cfg = load_config(None, ["stages=[robustness]", "robustness.budget=0.3", *overrides])
    store = RunStore(tmp_path / "s.db")
    run_id = store.start_run("run", argv=[], config=cfg.to_dict(), seed=0)
    ctx = RunContext(config=cfg, run_dir=tmp_path / run_id, run_id=run_id, store=store, quiet=True, model=model)
    ctx.run_dir.mkdir()
    ctx.set_data("test", x, y)
    ctx.stage = "robustness"
    return ctx


def test_stage_matches_analytic_robust_accuracy_and_records_everything(tmp_path: Path) -> None:
    model, x, y = _problem()
    d_inf, d_2 = _distances(model, x, y, 1.0), _distances(model, x, y, 2.0)
    assert float(d_inf.max()) < 0.35
    e_inf, e_2 = _gap_eps(d_inf), _gap_eps(d_2)
    ctx = _ctx(tmp_path, model, x, y, [f"robustness.threats=['linf:{e_inf}', 'l2:{e_2}']", "robustness.curve_points=12"])
    RobustnessStage().run(ctx)

    m = ctx.metrics["robustness"]
    exp_inf, exp_2 = float((d_inf > e_inf).float().mean()), float((d_2 > e_2).float().mean())
    exp_union = float(((d_inf > e_inf) & (d_2 > e_2)).float().mean())
    assert 0 < exp_union <= min(exp_inf, exp_2) and max(exp_inf, exp_2) < 1 - 4 / 48
    t_inf, t_2 = (f"linf:{e_inf:g}", f"l2:{e_2:g}")
    assert m[f"robust_accuracy[{t_inf}]"] == pytest.approx(exp_inf)
    assert m[f"robust_accuracy[{t_2}]"] == pytest.approx(exp_2)
    assert m["robust_accuracy"] == pytest.approx(exp_union)
    assert m["clean_accuracy"] == pytest.approx(44 / 48) and m["n"] == 48

    # the same numbers reach the run store, the files and the report section
    final = ctx.store.final_metrics(ctx.run_id)
    assert final["robustness/robust_accuracy"] == pytest.approx(exp_union)
    doc = json.loads((ctx.run_dir / "robustness" / "evaluation.json").read_text())
    assert doc["robust_accuracy_by_threat"][t_inf] == pytest.approx(exp_inf) and doc["n"] == 48
    assert {a.name for a in ctx.store.get_run(ctx.run_id).artefacts} >= {
        "robustness_curves", "evaluation_json", "robustness_state"}
    (sec,) = ctx.sections
    assert sec.figures == ["robustness/robustness_curves.png"] and (ctx.run_dir / sec.figures[0]).stat().st_size > 0
    titles = [t.title for t in sec.tables]
    assert titles[:3] == ["robust accuracy", f"attack contributions: {t_inf}", f"attack contributions: {t_2}"]
    assert titles[-1] == "sanity checks" and all(r[1] in ("ok", "not run") for r in sec.tables[-1].rows)
    assert sec.tables[0].rows[-1][0].startswith("union")

    # the curves: attacks never beat the exact distance, and min-norm attacks find it within 2%
    for c in doc["curves"]:
        d = (d_inf if c["norm"] == "linf" else d_2)[:12]  # the curves use the first curve_points images
        for e, acc in zip(c["eps"], c["accuracy"]):
            exact = float((d > e).float().mean())
            near = float(((d <= e) & (d * 1.02 > e)).float().mean())
            assert exact - 1e-6 <= acc <= exact + near + 1e-6, (c["norm"], e)


def test_state_file_resumes_and_refuses_other_inputs(tmp_path: Path) -> None:
    model, x, y = _problem(n=24, seed=1)
    state = tmp_path / "cascade.safetensors"
    over = ["robustness.threats=linf:0.05", f"robustness.state='{state}'", "robustness.curve_points=0",
            "robustness.sanity=false"]
    first = _ctx(tmp_path / "a", model, x, y, over)
    RobustnessStage().run(first)
    blob = state.read_bytes()
    again = _ctx(tmp_path / "b", model, x, y, over)
    RobustnessStage().run(again)  # every attack is read back from the state file
    assert again.metrics["robustness"]["robust_accuracy"] == first.metrics["robustness"]["robust_accuracy"]
    assert again.metrics["robustness"]["cascade_seconds"] < first.metrics["robustness"]["cascade_seconds"] + 0.5
    assert state.read_bytes() == blob
    other = _ctx(tmp_path / "c", model, x[:20], y[:20], over)
    with pytest.raises(StateMismatchError, match="different inputs"):
        RobustnessStage().run(other)
    assert state.read_bytes() == blob  # nothing already written is lost


def test_labels_the_model_cannot_output_are_refused(tmp_path: Path) -> None:
    model, x, y = _problem(n=8)
    y[0] = 7  # a 3-class model
    with pytest.raises(InputError, match="label 7 but the model has 3 classes"):
        RobustnessStage().run(_ctx(tmp_path, model, x, y, []))
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        RobustnessStage().run(_ctx(tmp_path / "b", model, x, y, []))


@pytest.mark.parametrize("override, error, text", [
    ("robustness.preset=slow", UnknownNameError, "unknown preset 'slow'; allowed: fast, standard, thorough"),
    ("robustness.threats=[linf:-0.1]", ThreatModelError, "eps"),
    ("robustness.threats=[l3:1]", ThreatModelError, "norm"),
    ("robustness.threats=[linf]", ThreatModelError, "NORM:EPS"),
    ("robustness.threats=[linf:0.1, linf:0.1]", ThreatModelError, "twice"),
    ("robustness.attacks=[nope]", UnknownNameError, "unknown attack 'nope'"),
    ("robustness.attacks=[square]", ThreatModelError, "attack 'square' does not support norm 'l1'"),
    ("robustness.n=0", ConfigError, "robustness.n"),
    ("robustness.budget=-1", ConfigError, "robustness.budget"),
    ("robustness.bogus=1", ConfigError, "allowed keys in 'robustness'"),
])
def test_bad_configuration_is_refused_at_validation(override: str, error: type, text: str) -> None:
    extra = ["robustness.threats=[l1:1]"] if "square" in override else []
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [*extra, override])
