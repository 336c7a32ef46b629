"""Regression: the cascade's measurements are bit-identical to the recorded ones.

``data/cascade_golden.json`` was recorded with the implementation before the cascade became a
``Plan`` + ``CascadeState`` (issue 12): per case and threat, the robust mask, the breaking attack
and distance per point, every row (points attacked / broken / left, gradient evaluations, queries),
the skipped attacks, the sanity flags with their evidence and the resolved config. Regenerate only
on purpose, with ``FORTIFY_REGEN_GOLDEN=1`` (then say why in the commit).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fortify.evaluate import AttackSpec, robust_accuracy

from _eval_cases import Quantize, trained_mlp

GOLDEN = Path(__file__).parent / "data" / "cascade_golden.json"
THREATS = ["linf:0.08", "l2:0.3"]
CUSTOM = [
    AttackSpec("fgsm", "fgsm"),
    AttackSpec("pgd-det", "pgd", {"steps": 8, "random_start": False}),
    AttackSpec("sq", "square", {"queries": 150}, when="suspect", probe={"queries": 40}),
    AttackSpec("pgd-flag", "pgd", {"steps": 4}, when="flagged"),
]
#: case -> (quantized input?, robust_accuracy options); 64 blobs points, two threats
CASES: dict[str, tuple[bool, dict[str, Any]]] = {
    "fast-s1": (False, dict(preset="fast", budget=0.1, sanity=True, seed=5)),
    "standard-s0": (False, dict(preset="standard", budget=0.1, sanity=False, seed=5)),
    "custom-s1": (False, dict(preset=CUSTOM, budget=0.5, sanity=True, seed=2)),
    "quant-custom-s1": (True, dict(preset=CUSTOM, budget=0.5, sanity=True, seed=1)),
}


def summary(rep: Any) -> dict[str, Any]:
    """The measured figures of a report, JSON-ready (floats exact: float32 values as Python floats)."""
    def bits(t: torch.Tensor) -> str:
        return "".join("1" if b else "0" for b in t.bool().tolist())

    return {
        "union": bits(rep.union_robust), "wrappers": list(rep.wrappers), "config": repr(rep.config),
        "flags": [[f.name, f.fired, f.ran, repr(f.evidence)] for f in rep.flags],
        "threats": [{
            "threat": t.threat, "clean": bits(t.clean_correct), "robust": bits(t.robust), "broken_by": list(t.broken_by),
            "distance": [d if math.isfinite(d) else None for d in t.distance.tolist()],
            "skipped": [list(s) for s in t.skipped],
            "rows": [[r.label, r.attack, r.access, r.attacked, r.broken, r.robust_after, r.grad_evals, r.queries,
                      list(r.notes), r.succeeded] for r in t.rows],
        } for t in rep.threats],
    }


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = trained_mlp()
    return model, x[:64], y[:64]


@pytest.mark.parametrize("case", list(CASES))
def test_cascade_matches_recorded_measurements(problem, case: str) -> None:
    model, x, y = problem
    quantized, kw = CASES[case]
    m = nn.Sequential(Quantize(8), model).eval() if quantized else model
    got = json.loads(json.dumps(summary(robust_accuracy(m, x, y, THREATS, **kw))))
    if os.environ.get("FORTIFY_REGEN_GOLDEN"):
        doc = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps({**doc, case: got}, indent=1, sort_keys=True))
        pytest.skip("golden regenerated")
    want = json.loads(GOLDEN.read_text())[case]
    for key in ("union", "wrappers", "flags", "config"):
        assert got[key] == want[key], key
    for g, w in zip(got["threats"], want["threats"], strict=True):
        assert g == w, g["threat"]
