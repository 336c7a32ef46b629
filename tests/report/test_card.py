"""The report card against report.json: every figure equals the measured metric, with its n and the exact
binomial interval (an independent scipy computation), a link to an existing section, the evaluation bar's
verdict, warnings shown; model_card.json agrees; the page puts the card first and the raw metrics in a
collapsed appendix. Plus the finding builders' rules (speed-up only when its interval excludes 1)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy.stats import beta

from fortify.report import Finding, Section, build_report, render_html
from fortify.report.card import BAR_MIN_N, build_card, model_card
from fortify.report.findings import NO_SPEEDUP, accuracy_finding, speedup_finding, threat_label
from fortify.store import RunStore


def _cp(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% from scipy's beta quantiles (the reference)."""
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return 100 * lo, 100 * hi


def _report(out: Path, run_id: str) -> tuple[dict, Path]:
    run_dir = Path(RunStore(out / "fortify.db").get_run(run_id).run_dir or "")
    return json.loads((run_dir / "report.json").read_text()), run_dir


def test_card_figures_equal_the_measured_metrics(two_runs: tuple[Path, list[str]]) -> None:
    out, (a, _) = two_runs
    rep, run_dir = _report(out, a)
    card, m = rep["card"], rep["metrics"]
    fs = {f["key"]: f for f in card["findings"]}
    checks = [("clean_accuracy", m["accuracy"]["clean_accuracy"], int(m["accuracy"]["test_examples"])),
              ("robust_accuracy.linf:0.3", m["robustness"]["robust_accuracy[linf:0.3]"], int(m["robustness"]["n"])),
              ("certified_accuracy.linf:0.1", m["certify"]["certified_accuracy"], int(m["certify"]["n"])),
              ("compress.robust_accuracy", m["compress"]["robust_acc[compressed]"], int(m["compress"]["n_robust"]))]
    for key, rate, n in checks:
        f = fs[key]
        assert f["value"] == pytest.approx(100 * rate, abs=1e-3) and f["n"] == n and f["unit"] == "%", key
        assert f["interval"] == pytest.approx(_cp(round(rate * n), n), abs=1e-6), key
        assert f["interval"][0] <= f["value"] <= f["interval"][1] and f["higher_is_better"] is True
    assert fs["compress.size_ratio"]["value"] == pytest.approx(m["compress"]["size_ratio"], rel=1e-4)
    assert "compress.speedup_b256" not in fs  # latency not measured: no speed-up claimed
    # every finding links to a section of the page
    html = (run_dir / "report.html").read_text()
    ids = set(re.findall(r"<section[^>]* id='([^']+)'", html))
    assert {f["section"] for f in card["findings"]} <= ids
    assert fs["robust_accuracy.linf:0.3"]["section_title"] == "Robustness (attacks)"
    # model, data, threats, evaluation
    assert card["model"]["name"] == "small-cnn" and card["data"] == {"name": "mnist-5k", "test_images": 60}
    assert card["model"]["params"] == int(m["compress"]["params_total[original]"])
    threats = {t["threat"]: t["used_by"] for t in card["threats"]}
    assert threats == {"linf:0.3": ["training", "attacks", "compression"], "linf:0.1": ["certification"]}
    ev = card["evaluation"]
    assert ev["preset"] == "fast" and ev["n"] == 30 and ev["meets_bar"] is False
    assert ev["why_not"] == ["preset 'fast' is below the bar", f"n=30 < {BAR_MIN_N}"]


def test_model_card_json_agrees_with_the_report(two_runs: tuple[Path, list[str]]) -> None:
    out, (_, b) = two_runs
    rep, run_dir = _report(out, b)
    mc = json.loads((run_dir / "model_card.json").read_text())
    assert mc == json.loads(json.dumps(model_card(rep)))
    fs = {f["key"]: f for f in rep["card"]["findings"]}
    assert mc["clean_acc"] == fs["clean_accuracy"]["value"] and (mc["threat_model"], mc["eps"]) == ("Linf", "0.3")
    assert set(mc["robust_acc"]) == {"linf:0.3", "linf:0.1", "union"}
    union = rep["metrics"]["robustness"]["robust_accuracy"]
    assert mc["robust_acc"]["union"]["value"] == pytest.approx(100 * union, abs=1e-3)
    assert mc["robust_acc"]["union"]["value"] <= min(mc["robust_acc"][t]["value"] for t in ("linf:0.3", "linf:0.1"))
    assert mc["unreliable"] is True and mc["autoattack_acc"] is None and "below the bar" in mc["footnote"]


def test_page_card_first_appendix_collapsed(two_runs: tuple[Path, list[str]]) -> None:
    out, (a, _) = two_runs
    rep, run_dir = _report(out, a)
    html = (run_dir / "report.html").read_text()
    card, first = html.index("id='card'"), html.index("<section id='s0-")
    assert card < first < html.index("<details><summary>Raw metrics")
    assert "robust_accuracy[linf:0.3]" not in html[:html.index("id='appendix'")]  # raw keys only in the appendix
    assert "below the evaluation bar" in html and "@media print" in html
    for f in ("report/robustness.png", "report/certified_vs_empirical.png", "report/pareto.png"):
        assert (run_dir / f).stat().st_size > 0 and f in json.dumps(rep["sections"])


def _run(sections: list[Section], config: dict | None = None) -> dict:
    cfg = SimpleNamespace(seed=0, to_dict=lambda: config or {"model": {"name": "m"}, "data": {"name": "d"}})
    run = SimpleNamespace(run_id="r", verb="run", config=cfg, versions={}, metrics={}, history=[], artefacts={},
                          sections=sections, timing={})
    return build_report(run, status="ok")


def test_any_finding_renders_generically_with_its_warning(tmp_path: Path) -> None:
    long = "calibration-of-a-model-with-a-very-long-name-" * 4
    sec = Section("Calibration " + long, stage="calibrate", findings=[
        Finding("calibration.ece", "Expected calibration error", 3.2, "%", 500, (2.1, 4.4), "15 bins", "", False),
        Finding("detect.auroc", "OOD detection AUROC", 0.61, "", 400, None, "energy score",
                "collapses under the adaptive attack", True)])
    rep = _run([Section("Other", stage="x"), sec])
    card = rep["card"]
    assert [f["key"] for f in card["findings"]] == ["calibration.ece", "detect.auroc"] and card["warnings"] == 1
    assert card["findings"][0]["section"].startswith("s1-calibration-")
    html = render_html(rep, tmp_path)
    assert "3.20%" in html and "2.1\u20134.4%" in html and "collapses under the adaptive attack" in html
    assert f"href='#{card['findings'][1]['section']}'" in html and "1 warning" in html


def test_finding_builders() -> None:
    f = accuracy_finding("k", "x", 0.75, 40)
    assert f.value == 75.0 and f.interval == pytest.approx(_cp(30, 40)) and f.n == 40
    assert accuracy_finding("k", "x", None, 40).value is None and accuracy_finding("k", "x", 0.5, None).interval is None
    sp = SimpleNamespace(ratio=1.8, ci_low=1.5, ci_high=2.1, n=9, noisy=False, contention=0.0)
    assert speedup_finding("s", "speed", sp).value == 1.8 and speedup_finding("s", "speed", sp).unit == "x"
    flat = SimpleNamespace(ratio=1.1, ci_low=0.95, ci_high=1.3, n=9, noisy=False, contention=0.0)
    g = speedup_finding("s", "speed", flat)
    assert g.value == NO_SPEEDUP and g.interval == (0.95, 1.3) and not g.warning
    noisy = speedup_finding("s", "speed", SimpleNamespace(**{**vars(sp), "noisy": True}))
    assert noisy.value == 1.8 and "noisy" in noisy.warning
    busy = speedup_finding("s", "speed", SimpleNamespace(**{**vars(sp), "contention": 1.5}))
    assert busy.value == NO_SPEEDUP and "contended" in busy.warning
    assert threat_label("linf:0.3") == "L\u221e \u03b5=0.3" and threat_label("l2:1") == "L2 \u03b5=1"


def test_fired_flags_are_warnings_and_fail_the_bar() -> None:
    from fortify.pipeline.stages.robustness import RobustnessConfig, RobustnessStage

    rep = SimpleNamespace(threats=[SimpleNamespace(threat="linf:0.3", robust_accuracy=0.5)], robust_accuracy=0.5,
                          fired=["zero_or_nan_gradients"])
    (f,) = RobustnessStage.findings(rep, RobustnessConfig(preset="standard"), 600, "preset 'standard'")
    assert "zero_or_nan_gradients" in f.warning and f.value == 50.0
    sec = Section("Robustness (attacks)", stage="robustness", findings=[f],
                  data={"preset": "standard", "n": 600, "flags_fired": ["zero_or_nan_gradients"]})
    ev = build_card(_run([sec]))["evaluation"]
    assert ev["meets_bar"] is False and ev["why_not"] == ["sanity flags fired: zero_or_nan_gradients"]
    sec.data["flags_fired"] = []
    assert build_card(_run([sec]))["evaluation"]["meets_bar"] is True
