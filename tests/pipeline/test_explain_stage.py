"""The ``explain`` stage on a tiny conv net: cells equal the library's metrics with a Student-t interval
(scipy as the reference), the model is not changed (fingerprint), the same seed gives the same files,
the global RNG is not touched, verdicts follow the paired comparison with the random attribution, and
configuration mistakes are typed errors before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy import stats
from torch import nn

from fortify.config import resolve
from fortify.errors import ConfigError, UnknownNameError, UnsupportedLayerError
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from fortify.models.state import fingerprint
from fortify.pipeline import RunContext
from fortify.pipeline.results import ExplainResult, MetricSummary
from fortify.pipeline.stages.explain import ExplainConfig, ExplainStage, summarize, verdict


def _net(conv: bool = True) -> nn.Module:
    torch.manual_seed(0)
    body: list[nn.Module] = ([nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)]
                             if conv else [nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)])
    return nn.Sequential(*body)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(10, 1, 8, 8, generator=g), torch.randint(0, 3, (10,), generator=g)


def _run(tmp_path: Path, model: nn.Module, **section: object) -> tuple[RunContext, ExplainResult]:
    cfg = resolve({"stages": ["explain"], "output": {"dir": str(tmp_path)}, "explain": section},
                  check_names=False)
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", model=model, quiet=True, stage="explain")
    ctx.set_data("test", *_data())
    return ctx, ExplainStage().run(ctx)


def test_cells_are_the_library_metrics_with_t_intervals_and_model_unchanged(tmp_path: Path) -> None:
    model = _net().train()  # a training-mode model: the stage explains it in eval mode, flags restored
    before = fingerprint(model)
    ctx, res = _run(tmp_path, model, n=8, methods=["saliency", "gradcam"], metrics=["deletion", "insertion"])
    assert fingerprint(model) == before and model.training
    x, _ = _data()
    x = x[:8]
    with torch.no_grad():
        pred = model.eval()(x).argmax(dim=1)
    model.train()
    for method in ("saliency", "gradcam"):
        attr = ATTRIBUTIONS.create(method)(model, x, pred)
        assert torch.equal(res.attributions[method], attr)
        for metric in ("deletion", "insertion"):
            vals = ATTRIBUTION_METRICS.create(metric)(model, x, attr, pred).values.double()
            cell = res.table[method][metric]
            low, high = stats.t.interval(0.95, 7, loc=float(vals.mean()), scale=float(stats.sem(vals.numpy())))
            assert cell.mean == pytest.approx(float(vals.mean())) and cell.low == pytest.approx(low)
            assert cell.high == pytest.approx(high) and cell.higher_is_better == (metric == "insertion")
            assert ctx.metrics["explain"][f"{method}/{metric}"] == pytest.approx(cell.mean)
    assert set(res.baseline) == {"deletion", "insertion"} and res.n == 8 and set(res.verdicts) == {"saliency", "gradcam"}
    (sec,) = ctx.sections
    assert sec.stage == "explain" and sec.figures == ["explain/attributions.png"]
    assert [r[0] for r in sec.tables[0].rows] == ["deletion", "insertion"]
    assert (tmp_path / "explain" / "explain.json").is_file() and "attributions" in ctx.artefacts


def test_same_seed_same_files_and_global_rng_untouched(tmp_path: Path) -> None:
    model = _net()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    opts = {"methods": ["saliency", "smoothgrad"], "metrics": ["deletion", "infidelity"], "n": 6, "seed": 5,
            "options": {"smoothgrad": {"samples": 4}}}
    _, a = _run(tmp_path / "a", model, **opts)
    assert torch.equal(torch.get_rng_state(), state)
    _, b = _run(tmp_path / "b", model, **opts)
    _, c = _run(tmp_path / "c", model, **{**opts, "seed": 6})
    png = [(tmp_path / d / "explain" / "attributions.png").read_bytes() for d in ("a", "b")]
    assert png[0] == png[1]
    docs = [json.loads((tmp_path / d / "explain" / "explain.json").read_text()) for d in ("a", "b")]
    assert [{k: v for k, v in doc.items() if k != "seconds"} for doc in docs] == [
        {k: v for k, v in docs[0].items() if k != "seconds"}] * 2  # all but the wall time
    assert a.baseline["deletion"].values == b.baseline["deletion"].values
    assert a.baseline["deletion"].values != c.baseline["deletion"].values  # the random attribution follows the seed


def _summary(values: list[float], hib: bool) -> MetricSummary:
    return summarize(torch.tensor(values), hib)


def test_verdicts_follow_the_paired_comparison_with_random() -> None:
    rnd = {"deletion": _summary([0.5, 0.6, 0.55, 0.52], False), "insertion": _summary([0.3, 0.35, 0.32, 0.31], True)}
    good = {"deletion": _summary([0.1, 0.2, 0.15, 0.12], False), "insertion": _summary([0.8, 0.85, 0.9, 0.82], True)}
    same = {"deletion": _summary([0.5, 0.61, 0.54, 0.53], False), "insertion": _summary([0.3, 0.36, 0.31, 0.31], True)}
    bad = {"deletion": _summary([0.9, 0.95, 0.91, 0.92], False), "insertion": good["insertion"]}
    assert verdict(good, rnd).startswith("faithful: better than a random attribution on deletion 0.143 vs 0.543")
    assert verdict(same, rnd).startswith("no better than a random attribution (deletion")
    assert verdict(bad, rnd).startswith("worse than a random attribution on deletion")
    assert verdict({**good, "deletion": same["deletion"]}, rnd).startswith("partly faithful")
    fails = verdict({**good, "randomisation": _summary([0.9, 0.8], False)}, rnd)
    assert fails.endswith("fails the randomisation check (mean rank correlation 0.85 with the randomised models)")
    assert "passes the randomisation check" in verdict({"randomisation": _summary([0.1, 0.0], False)}, {})
    assert verdict({"sparseness": _summary([0.1, 0.2], True)}, {}).startswith("no verdict")
    logit = verdict({"random-logit": _summary([0.9, 0.95], False)}, {})
    assert logit == "fails the random-logit check (mean similarity 0.92 with the map of a random other class)"
    road = {"road-morf": _summary([0.1, 0.12, 0.11, 0.1], False)}
    assert verdict(road, {"road-morf": _summary([0.5, 0.6, 0.55, 0.5], False)}).startswith("faithful: better")


def test_a_faithful_method_beats_random_on_a_linear_model(tmp_path: Path) -> None:
    """On a linear model gradient x input is exact (each feature's share of the logit): deleting it
    first must beat deleting features in random order."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[1].weight.mul_(20)
    _, res = _run(tmp_path, model, n=10, methods=["gradient-x-input"], metrics=["deletion", "insertion"])
    assert res.verdicts["gradient-x-input"].startswith("faithful"), res.verdicts


def test_config_and_model_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="allowed: deeplift"):
        ExplainConfig(methods=["nope"])
    with pytest.raises(ConfigError, match="explain.options.integrated-gradients"):
        ExplainConfig(options={"integrated-gradients": {"stepz": 3}})
    with pytest.raises(ConfigError, match="explain.options.saliency"):
        ExplainConfig(methods=["gradcam"], options={"saliency": {"steps": 3}})  # checked even when not run
    with pytest.raises(ConfigError, match="add gradcam"):
        ExplainConfig(target_layer="0")
    with pytest.raises(UnsupportedLayerError, match="no convolution layer"):
        _run(tmp_path, _net(conv=False), n=2, methods=["gradcam"], metrics=[])
    with pytest.raises(ConfigError, match="layer 'conv' does not exist"):
        _run(tmp_path, _net(), n=2, methods=["gradcam"], metrics=[], target_layer="conv")


def test_compare_model_side_by_side_gap_and_findings(tmp_path: Path) -> None:
    """A second model file: both models' maps in the grid, its table equals the library on it, the gap is
    the paired per-image difference, and the report card gets the sanity and faithfulness findings."""
    from fortify import models

    torch.manual_seed(3)
    other = models.create("small-cnn", in_shape=(1, 8, 8), num_classes=3, channels=(2, 4), hidden=8).eval()
    path = models.save(other, tmp_path / "other.safetensors")
    run_model = models.create("small-cnn", in_shape=(1, 8, 8), num_classes=3, channels=(2, 4), hidden=8).eval()
    ctx, res = _run(tmp_path / "run", run_model, n=6, methods=["saliency"], metrics=["deletion", "randomisation"],
                    compare=str(path), compare_label="standard")
    cmp = res.compare
    assert cmp is not None and cmp["label"] == "standard"
    x, _ = _data()
    loaded = models.load(path)
    with torch.no_grad():
        pred = loaded(x[:6]).argmax(dim=1)
    attr = ATTRIBUTIONS.create("saliency")(loaded, x[:6], pred)
    assert torch.allclose(cmp["attributions"]["saliency"], attr)
    dele = ATTRIBUTION_METRICS.create("deletion")(loaded, x[:6], attr, pred).values.double()
    assert cmp["table"]["saliency"]["deletion"].mean == pytest.approx(float(dele.mean()))
    gap = cmp["gap"]["saliency"]["deletion"]
    assert gap.mean == pytest.approx(res.table["saliency"]["deletion"].mean - float(dele.mean()))
    doc = json.loads(res.explain_json.read_text())
    assert doc["compare"]["label"] == "standard" and "gap_run_minus_compare" in doc["compare"]
    (section,) = ctx.sections
    keys = {f.key: f for f in section.findings}
    assert {"explain.faithful", "explain.sanity", "explain.gap.deletion"} <= set(keys)
    passing = int(res.table["saliency"]["randomisation"].mean < 0.5)
    assert keys["explain.sanity"].value == passing and keys["explain.sanity"].n == 6
    assert any("standard model" in t.title for t in section.tables)
    with pytest.raises(ConfigError, match="explain.compare"):
        ExplainConfig(compare=str(tmp_path / "missing.safetensors"))
