"""``fortify leaderboard``: reliable evaluations rank first (a weak evaluation never outranks a strong one),
ranks follow robust then clean accuracy, filters by dataset and threat, the CLI on a real store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fortify.cli import main
from fortify.errors import ThreatModelError
from fortify.report.card import build_card
from fortify.report.leaderboard import build_leaderboard
from fortify.report.loading import RunReport


def _run(rid: str, robust: float, clean: float, preset: str, n: int = 1000, dataset: str = "d",
         threat: str = "linf:0.3", flags: tuple[str, ...] = ()) -> RunReport:
    fnd = [{"key": "clean_accuracy", "label": "clean", "value": clean, "unit": "%", "n": n},
           {"key": f"robust_accuracy.{threat}", "label": "robust", "value": robust, "unit": "%", "n": n,
            "interval": [robust - 2, robust + 2]}]
    rep = {"run_id": rid, "config": {"model": {"name": f"m-{rid}"}, "data": {"name": dataset}},
           "sections": [{"title": "Robustness", "stage": "robustness", "findings": fnd,
                         "data": {"preset": preset, "n": n, "flags_fired": list(flags)}}]}
    rep["card"] = build_card(rep)
    return RunReport(rid, rep, None, "ok", True)


def test_reliable_rank_first_then_by_robust_then_clean() -> None:
    runs = [_run("weak", 90.0, 99.0, "fast"), _run("s1", 60.0, 95.0, "standard"), _run("s2", 70.0, 90.0, "thorough"),
            _run("s3", 70.0, 92.0, "standard"), _run("masked", 95.0, 99.0, "standard", flags=("zero_grads",)),
            _run("small", 80.0, 99.0, "standard", n=100)]
    (board,) = build_leaderboard(runs)["boards"]
    order = [(e["run_id"], e["rank"]) for e in board["rows"]]
    assert order == [("s3", 1), ("s2", 2), ("s1", 3), ("masked", None), ("weak", None), ("small", None)]
    masked = board["rows"][3]
    assert masked["flags"] == ["zero_grads"] and "sanity flags fired: zero_grads" in masked["why_not"]
    assert build_leaderboard(runs, reliable_only=True)["boards"][0]["rows"][-1]["run_id"] == "s1"


def test_filters_and_boards() -> None:
    runs = [_run("a", 50.0, 90.0, "standard"), _run("b", 40.0, 90.0, "standard", dataset="e"),
            _run("c", 30.0, 90.0, "standard", threat="l2:0.5")]
    assert [(b["dataset"], b["threat"]) for b in build_leaderboard(runs)["boards"]] == [
        ("d", "l2:0.5"), ("d", "linf:0.3"), ("e", "linf:0.3")]
    assert [b["rows"][0]["run_id"] for b in build_leaderboard(runs, dataset="d", threat="linf")["boards"]] == ["a"]
    assert build_leaderboard(runs, threat="l2:0.5")["boards"][0]["rows"][0]["run_id"] == "c"
    assert build_leaderboard(runs, threat="linf:0.1")["boards"] == []
    with pytest.raises(ThreatModelError):
        build_leaderboard(runs, threat="sup:1")


def test_leaderboard_cli(two_runs: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, (a, b) = two_runs
    page = tmp_path / "lb.html"
    assert main(["leaderboard", "--out", str(out), "--json", "--html", str(page)]) == 0
    lb = json.loads(capsys.readouterr().out)
    boards = {(x["dataset"], x["threat"]): x["rows"] for x in lb["boards"]}
    assert set(boards) == {("mnist-5k", "linf:0.3"), ("mnist-5k", "linf:0.1")}
    rows = boards[("mnist-5k", "linf:0.3")]
    assert {r["run_id"] for r in rows} == {a, b} and all(r["rank"] is None and not r["reliable"] for r in rows)
    robust = [r["robust"] for r in rows]
    assert robust == sorted(robust, reverse=True) and all(r["preset"] == "fast" for r in rows)
    assert [r["run_id"] for r in boards[("mnist-5k", "linf:0.1")]] == [b]
    text = page.read_text()
    assert f"/report.html'>{a}</a>" in text and "below the bar" in text  # each run links to its report
    assert main(["leaderboard", "--out", str(out), "--threat", "l2"]) == 0
    assert "no finished run" in capsys.readouterr().out
    assert main(["leaderboard", "--out", str(out), "--dataset", "mnist-5k"]) == 0
    assert "linf:0.3" in capsys.readouterr().out
    assert main(["leaderboard", "--out", str(tmp_path / "none")]) == 2
    assert main(["leaderboard", "--out", str(out), "--threat", "sup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("fortify: error:") for e in err)
