"""report.html, the comparison page and the leaderboard in a real browser (headless Chromium): no broken
image, no console or script error, every figure and image of nonzero rendered size, no horizontal overflow
(long names wrap), every in-page link has a target; a screenshot of each is saved under the run folder
(``<run>/screenshots/``) for review. The probe itself is checked first on a page with a broken image and
a console error (so a silent probe cannot pass)."""
from __future__ import annotations

from pathlib import Path

import pytest

from _browser import check_page, chromium, screenshot
from fortify.cli import main
from fortify.store import RunStore

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium not installed (apt-get install chromium)")


def _clean(probe: dict) -> None:
    assert probe["errors"] == [], probe["errors"]
    assert probe["images"], "no image on the page"
    for img in probe["images"]:
        assert img["complete"] and min(img["natural"]) > 0, img["alt"]
        assert min(img["box"]) > 0, img["alt"]
    assert all(min(f["box"]) > 0 for f in probe["figures"]) and len(probe["figures"]) == len(probe["images"])
    assert probe["overflow_px"] <= 0, f"page overflows horizontally by {probe['overflow_px']} px"
    assert probe["links_broken"] == []


def test_probe_sees_broken_images_and_console_errors(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    "<figure><img alt='gone' src='data:image/png;base64,AAAA'></figure>"
                    "<a href='#nowhere'>x</a><div style='width:5000px'>wide</div>"
                    "<script>console.error('boom')</script></body></html>")
    probe = check_page(page, tmp_path)
    assert any("gone" in e for e in probe["errors"]) and any("boom" in e for e in probe["errors"])
    assert probe["images"][0]["natural"] == [0, 0] and probe["links_broken"] == ["#nowhere"]
    assert probe["overflow_px"] > 0


def test_report_compare_leaderboard_in_chromium(two_runs: tuple[Path, list[str]], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out, (a, b) = two_runs
    store = RunStore(out / "fortify.db")
    run_a, run_b = (Path(store.get_run(r).run_dir or "") for r in (a, b))
    for run_dir, figures in ((run_a, 4), (run_b, 3)):  # training, robustness (A only: B has no curves), certified, Pareto
        probe = check_page(run_dir / "report.html", tmp_path)
        _clean(probe)
        assert probe["card"] and len(probe["images"]) == figures
        shot = screenshot(run_dir / "report.html", run_dir / "screenshots" / "report.png", tmp_path)
        assert shot.stat().st_size > 10_000
    cmp = run_a / "compare" / f"compare-{b}.html"
    assert main(["runs", "compare", a, b, "--out", str(out), "--html", str(cmp)]) == 0
    lb = out / "leaderboard.html"
    assert main(["leaderboard", "--out", str(out), "--html", str(lb)]) == 0
    capsys.readouterr()
    probe = check_page(cmp, tmp_path)
    _clean(probe)
    assert len(probe["images"]) == 4
    screenshot(cmp, run_a / "screenshots" / "compare.png", tmp_path, height=3200)
    probe = check_page(lb, tmp_path)
    assert probe["errors"] == [] and probe["overflow_px"] <= 0 and probe["images"] == []
    screenshot(lb, run_a / "screenshots" / "leaderboard.png", tmp_path, height=900)
    with capsys.disabled():
        print(f"\nscreenshots: {run_a / 'screenshots'} and {run_b / 'screenshots'}")


def test_long_names_do_not_break_the_layout(tmp_path: Path) -> None:
    from fortify.report import Finding, Section, Table, build_report, training_curve, write_html
    from types import SimpleNamespace

    long = "a-really-long-model-name-without-any-space-" * 6
    training_curve([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}], tmp_path / "t.png")
    sec = Section(long, stage="x", text=long * 2, tables=[Table([long, "value"], [[long, 0.5]] * 3, long)],
                  figures=["t.png"], findings=[Finding(f"k.{long}", long, 50.0, "%", 10, (20.0, 80.0), long, long)])
    cfg = SimpleNamespace(seed=0, to_dict=lambda: {"model": {"name": long}, "data": {"name": long}})
    run = SimpleNamespace(run_id=long, verb="run", config=cfg, versions={long: long}, metrics={long: {long: 1.0}},
                          history=[], artefacts={long: long}, sections=[sec], timing={})
    page = write_html(build_report(run, status="ok"), tmp_path)
    for width in (1280, 800):
        probe = check_page(page, tmp_path, width=width)
        _clean(probe)
