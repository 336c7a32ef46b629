"""Contract every registered compression transform meets (``TRANSFORMS.names()`` at collection).

On a small trained conv net (a synthetic 4-class problem, 8x8 inputs, labels well spread):

* the result is a *new* model and the input model is unchanged (``models.state.fingerprint``);
* the new model agrees with the input on top-1 over the data it was given, at least
  :data:`AGREEMENT` (per transform, with the reason) -- compression keeps the function;
* the report is JSON-ready, names the transform and carries a size figure (``bytes_*`` where the
  transform produces an artefact whose bytes it knows, else the parameter count ``params_total``;
  :func:`fortify.compress.measure` measures serialized bytes for every model).
"""
from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import torch
from torch import nn

from fortify.compress import TRANSFORMS
from fortify.models import Normalized
from fortify.models.state import fingerprint

K = 4
#: tiny budgets (passed when the constructor takes them)
TINY: dict[str, Any] = {"epochs": 1, "score_epochs": 1, "finetune_epochs": 1, "prune_epochs": 1, "share_epochs": 1,
                        "calibration_size": 8, "threads": 1, "rounds": 1, "cycles": 1, "steps": 1}
#: per-transform settings: the tiny budgets plus a *mild* compression (20% sparsity, 99% spectral
#: energy, 8-bit sharing), at which a transform that keeps the function must keep the predictions
MILD = {"sparsity": 0.2}
OVERRIDES: dict[str, dict[str, Any]] = {
    "imp_rewind": {"epochs": 2}, "low_rank": {"energy": 0.99}, "channel_prune": {"amount": 0.2},
    "deep_compression": {"sparsity": 0.2, "bits": 8}, "targeted_dropout_prune": {"gamma": 0.2},
    "distill": {"student": "mlp", "student_args": {"hidden": (8,)}},
    "hydra": {"sparsity": 0.2, "task_args": {"threat": "linf:0.05", "steps": 1}},
}
#: minimum top-1 agreement with the input model at those settings, default :data:`DEFAULT_AGREEMENT`
#: (a mild compression of the same weights, fine-tuned on the model's own predictions, must keep
#: >= 80% of them on the data it saw). Distillation trains a *different*, fresh student for one
#: epoch here, so its agreement is a training outcome, only required to beat the 1/K chance level.
DEFAULT_AGREEMENT = 0.8
AGREEMENT: dict[str, float] = {"distill": 1.0 / K}


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small Normalized conv net fitted (200 full-batch Adam steps) to a linear 4-class rule."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(96, 1, 8, 8, generator=g)
    rule = torch.randn(64, K, generator=g)
    y = (x.flatten(1) - 0.5).matmul(rule).argmax(1)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, K))
    model = Normalized(seq, [0.5], [0.5])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert int(torch.bincount(pred, minlength=K).min()) >= 8, "the reference model must use every class"
    return model, x, pred


def make(name: str) -> Any:
    params = inspect.signature(TRANSFORMS.get(name)).parameters
    mild = {k: v for k, v in MILD.items() if k in params}
    return TRANSFORMS.create(name, **{**{k: v for k, v in TINY.items() if k in params}, **mild,
                                      **OVERRIDES.get(name, {})})


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_new_model_input_unchanged_agrees_report_sized(name: str, trained: tuple[nn.Module, torch.Tensor,
                                                                                torch.Tensor]) -> None:
    model, x, pred = trained
    before = fingerprint(model)
    torch.manual_seed(0)
    res = make(name)(model, x[:2], data=(x, pred))
    assert res.model is not model
    assert fingerprint(model) == before, f"transform {name!r} changed its input model"
    with torch.no_grad():
        agree = float((res.model(x).argmax(1) == pred).float().mean())
    need = AGREEMENT.get(name, DEFAULT_AGREEMENT)
    assert agree >= need, f"{name}: top-1 agreement {agree:.2f} < {need:.2f}"
    report = json.loads(json.dumps(res.report))
    assert report["transform"] == name
    sizes = [k for k in report if k.startswith("bytes") or k == "params_total"]
    assert sizes and all(isinstance(report[k], int) and report[k] > 0 for k in sizes), report
