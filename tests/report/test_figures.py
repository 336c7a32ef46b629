"""Report figures: the Pareto front against a brute-force definition, every figure a PNG of the expected
layout (panels per norm), nothing drawn without data."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

from PIL import Image

from fortify.report.figures import (
    certified_vs_empirical, pareto_figure, pareto_front, robustness_figure, training_curve, training_curves,
)


def _dominated(p: dict, q: dict) -> bool:
    return q["bytes"] <= p["bytes"] and q["robust"] >= p["robust"] and (q["bytes"], q["robust"]) != (p["bytes"], p["robust"])


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(30):
        pts = [{"bytes": rng.choice([10, 20, 30, 40]), "robust": rng.choice([10.0, 20.0, 30.0])} for _ in range(6)]
        ref = [i for i, p in enumerate(pts) if not any(_dominated(p, q) for j, q in enumerate(pts) if j != i)]
        assert pareto_front(pts) == ref
        front = [pts[i] for i in ref]
        assert all(not _dominated(p, q) for p, q in itertools.permutations(front, 2))


def _size(p: Path | None) -> tuple[int, int]:
    assert p is not None and p.is_file()
    with Image.open(p) as im:
        return im.size


def test_figures_layout(tmp_path: Path) -> None:
    curves = [{"label": "linf", "norm": "linf", "eps": [0, 0.1, 0.2], "accuracy": [0.9, 0.5, 0.1],
               "checks": [{"eps": 0.1, "acc_combined": 0.5}]},
              {"label": "l2", "norm": "l2", "eps": [0, 1, 2], "accuracy": [0.9, 0.6, 0.2]}]
    marks = [{"norm": "linf", "eps": 0.1, "value": 48.0, "low": 40.0, "high": 56.0, "label": "cascade"}]
    w1, _ = _size(robustness_figure(curves[:1], tmp_path / "r1.png", marks=marks))
    w2, _ = _size(robustness_figure(curves, tmp_path / "r2.png", marks=marks))
    assert w2 > 1.8 * w1  # one panel per norm
    cert = [{"method": "crown", "norm": "linf", "eps": [0, 0.05, 0.1], "accuracy": [0.9, 0.4, 0.2]}]
    assert _size(certified_vs_empirical(cert, curves, tmp_path / "c.png", marks=marks))[0] > 0
    assert certified_vs_empirical([], curves, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    pts = [{"label": "original", "bytes": 600_000, "robust": 80.0, "low": 75.0, "high": 85.0},
           {"label": "compressed", "bytes": 50_000, "robust": 79.0}]
    assert _size(pareto_figure(pts, tmp_path / "p.png"))[0] > 0 and pareto_figure([], tmp_path / "q.png") is None
    hist = [{"epoch": e, "train_loss": 1 / e, "val_acc": 0.5 + e / 10, "robust_acc": e / 10, "eps": 0.1 * e}
            for e in (1, 2, 3)]
    w3, _ = _size(training_curve(hist, tmp_path / "t.png"))
    w2p, _ = _size(training_curve([{k: v for k, v in h.items() if k != "eps"} for h in hist], tmp_path / "t2.png"))
    assert w3 > 1.3 * w2p  # the eps-schedule panel
    assert _size(training_curves({"A": hist, "B": hist[:2]}, tmp_path / "tt.png"))[0] == w3
    assert robustness_figure([], tmp_path / "x.png") is None
