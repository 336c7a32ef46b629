"""``fortify runs compare``: the two-proportion test against scipy's chi-square test (z^2 = chi^2 on a
2x2 table), the config diff shows only differing keys, the findings' tests use the cards' figures, the
HTML page embeds overlaid figures, bad input is one line and exit 2."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from scipy.stats import chi2_contingency

from fortify.cli import main
from fortify.errors import ConfigError
from fortify.report.compare import config_diff, two_proportion_test

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("k1,n1,k2,n2", [(45, 100, 60, 100), (3, 50, 9, 60), (480, 500, 470, 500), (1, 20, 0, 30)])
def test_two_proportion_test_equals_chi_square(k1: int, n1: int, k2: int, n2: int) -> None:
    z, p = two_proportion_test(k1, n1, k2, n2)
    chi2, p_ref, _, _ = chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=False)
    assert z * z == pytest.approx(chi2, rel=1e-9) and p == pytest.approx(p_ref, rel=1e-9)
    assert (z > 0) == (k2 / n2 > k1 / n1)


def test_two_proportion_test_edges() -> None:
    assert two_proportion_test(0, 10, 0, 20) == (0.0, 1.0) and two_proportion_test(5, 5, 9, 9) == (0.0, 1.0)
    with pytest.raises(ConfigError):
        two_proportion_test(11, 10, 1, 10)


def test_config_diff_only_differing_keys() -> None:
    a = {"train": {"epochs": 1, "lr": 0.1}, "output": {"dir": "x"}, "stages": ["train", "b"], "c": {"n": 1}}
    b = {"train": {"epochs": 2, "lr": 0.1}, "output": {"dir": "y"}, "stages": ["train", "b", "new"],
         "new": {"k": 1, "j": 2}, "unused": {"z": 0}, "c": {"n": 1}}
    assert config_diff([{"config": a}, {"config": b}]) == [
        {"key": "train.epochs", "values": [1, 2]}, {"key": "stages", "values": [["train", "b"], ["train", "b", "new"]]},
        {"key": "new.*", "values": [None, "set, 2 keys"]}]


def test_compare_cli_json_and_html(two_runs: tuple[Path, list[str]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, (a, b) = two_runs
    page = tmp_path / "cmp" / "compare.html"
    assert main(["runs", "compare", a, b[:18], "--out", str(out), "--json", "--html", str(page)]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in cmp["runs"]] == [a, b] and cmp["baseline"] == "A"
    keys = {d["key"]: d["values"] for d in cmp["config_diff"]}
    assert keys["train.epochs"] == [1, 2] and keys["robustness.threats"] == [["linf:0.3"], ["linf:0.3", "linf:0.1"]]
    assert "data.name" not in keys and not any(k.startswith("output.") for k in keys)
    rows = {r["key"]: r for r in cmp["findings"]}
    clean = rows["clean_accuracy"]
    fa, fb = clean["values"]
    z, p = two_proportion_test(round(fa["value"] * fa["n"] / 100), fa["n"], round(fb["value"] * fb["n"] / 100), fb["n"])
    assert clean["tests"][0] is None and clean["tests"][1]["p"] == pytest.approx(p)
    assert clean["tests"][1]["significant"] == (p < 0.05)
    assert rows["robust_accuracy.union"]["values"][0] is None  # only run B has two threats
    assert rows["robust_accuracy.union"]["tests"][1]["text"] == "not in both runs"
    assert any(d["key"] == "train/epochs" for d in cmp["metrics_diff"])
    html = page.read_text()
    assert cmp["html"] == str(page) and a in html and b in html and "train.epochs" in html
    figs = sorted(p.name for p in (tmp_path / "cmp" / "compare_figures").iterdir())
    assert figs == ["certified_vs_empirical.png", "pareto.png", "robustness.png", "training.png"]
    embedded = [base64.b64decode(s.split("'")[0]) for s in html.split("data:image/png;base64,")[1:]]
    assert len(embedded) == 4 and all(e.startswith(PNG) for e in embedded)


def test_compare_cli_terminal(two_runs: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    out, (a, b) = two_runs
    assert main(["runs", "compare", a, b, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "config differences" in text and "train.epochs" in text and "Clean accuracy" in text and "B vs A" in text


@pytest.mark.parametrize("ids,msg", [(["A"], "at least two"), (["A", "A"], "listed twice"), (["A", "nope"], "nope")])
def test_compare_cli_bad_input(two_runs: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str],
                               ids: list[str], msg: str) -> None:
    out, (a, _) = two_runs
    argv = [a if i == "A" else i for i in ids]
    assert main(["runs", "compare", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fortify: error:") and msg in err[0]


def test_runs_without_report_json_compare_from_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.store import RunStore

    store = RunStore(tmp_path / "fortify.db")
    ids = []
    for lr, acc in ((0.1, 0.5), (0.2, 0.75)):
        rid = store.start_run("train", argv=[], config={"train": {"lr": lr}, "data": {"name": "d"}}, seed=0)
        store.log_metrics(rid, {"clean_accuracy": acc}, stage="accuracy")
        store.finish_run(rid, "ok")
        ids.append(rid)
    assert main(["runs", "compare", *ids, "--store", str(tmp_path / "fortify.db"), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert [r["report_json"] for r in cmp["runs"]] == [False, False] and cmp["findings"] == []
    assert cmp["config_diff"] == [{"key": "train.lr", "values": [0.1, 0.2]}]
    assert cmp["metrics_diff"] == [{"key": "accuracy/clean_accuracy", "values": [0.5, 0.75]}]
