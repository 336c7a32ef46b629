"""Low-rank factorisation (vs the SVD reference) and distillation (KD, ARD, Jacobian matching)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fortify import models
from fortify.compress import create, load_compressed, save_compressed
from fortify.compress.distill import JacobianKDTask, KDTask, kd_loss
from fortify.compress.lowrank import factorize, rank_for
from fortify.errors import ConfigError

X = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))


def test_linear_factorisation_is_the_best_rank_r_approximation() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 12)
    two = factorize(lin, 5)
    w_hat = (two[1].weight @ two[0].weight).detach()
    s = torch.linalg.svdvals(lin.weight.detach().double())
    err = torch.linalg.matrix_norm((w_hat - lin.weight.detach()).double())  # Eckart-Young: sqrt(sum of dropped s^2)
    assert float(err) == pytest.approx(float(s[5:].pow(2).sum().sqrt()), rel=1e-4)
    assert torch.equal(two[1].bias, lin.bias)


def test_conv_full_rank_is_exact_and_shapes() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    two = factorize(conv, 8)
    assert two[0].kernel_size == (3, 3) and two[1].kernel_size == (1, 1) and two[0].out_channels == 8
    x = torch.rand(2, 3, 9, 9)
    assert torch.allclose(two(x), conv(x), atol=1e-5)


def test_rank_by_energy_and_budget() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert rank_for(s, energy=0.69, budget=None, full_params=0, per_rank=0) == 2  # 13/14 > 0.69 >= 9/14
    assert rank_for(s, energy=1.0, budget=None, full_params=0, per_rank=0) == 3
    assert rank_for(s, energy=None, budget=0.25, full_params=1000, per_rank=60) == 4


def test_low_rank_model_fewer_params_reloads(cnn: nn.Module, train_data, tmp_path: Path) -> None:
    res = create("low_rank", budget=0.3, finetune_task="standard", finetune_config={"epochs": 1})(
        cnn, X, data=train_data)
    assert res.report["params_total"] < 0.5 * sum(p.numel() for p in cnn.parameters())
    path = save_compressed(res.model, tmp_path / "lr.safetensors")
    assert torch.equal(load_compressed(path)(X), res.model(X))
    full = create("low_rank", energy=1.0)(cnn, X)
    assert torch.allclose(full.model(X), cnn(X), atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [({"rank": 0}, "rank"), ({}, "exactly one"),
                                          ({"energy": 0.0}, "energy"), ({"budget": 1.0}, "budget")])
def test_low_rank_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create("low_rank", **kwargs)


def test_kd_loss_reference() -> None:
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    ref = (F.softmax(t / 2, 1) * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum(1).mean() * 4
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(float(ref), rel=1e-5)
    assert float(kd_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_jacobian_term_zero_for_identical_student() -> None:
    teacher = models.create("mlp", hidden=(8,))
    student = models.create("mlp", hidden=(8,))
    student.load_state_dict(teacher.state_dict())
    out = JacobianKDTask(teacher=teacher)(student, X, torch.arange(6) % 10)
    assert float(out.metrics["jacobian_loss"]) == pytest.approx(0.0, abs=1e-8)
    out.loss.backward()
    assert student[1].weight.grad is not None


@pytest.mark.parametrize("method,args", [("kd", {}), ("ard", {"threat": "linf:0.1", "steps": 2}), ("jacobian_kd", {})])
def test_distill_student_learns_from_teacher(cnn: nn.Module, train_data, test_data, method: str, args: dict) -> None:
    res = create("distill", student="mlp", student_args={"hidden": [32]}, method=method, method_args=args, epochs=3)(
        cnn, X, data=train_data)
    assert res.report["params_total"] < res.report["teacher_params"]
    with torch.no_grad():
        agree = float((res.model(test_data[0]).argmax(1) == cnn(test_data[0]).argmax(1)).float().mean())
    assert agree > 0.5  # far above chance (0.1): the student follows the teacher


def test_distill_errors() -> None:
    with pytest.raises(ConfigError, match="method"):
        create("distill", method="fitnets")
    with pytest.raises(ConfigError, match="teacher"):
        KDTask(teacher=None)
