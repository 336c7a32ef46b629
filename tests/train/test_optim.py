"""Large-batch optimisers (fortify.train.optim): one LARS / LAMB step equals the update computed by hand
from the papers' formulas (trust ratio included), biases and norm parameters are excluded from weight decay
and adaptation, the scaling rules give the documented peak, and recipes select them through the Trainer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.train import TrainConfig, Trainer, train
from fortify.train.optim import LAMB, LARS, param_groups, scaled_lr


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_lars_single_step_equals_the_hand_computed_trust_ratio_update() -> None:
    w = torch.tensor([[3.0, 4.0]], requires_grad=True)  # ||w|| = 5
    b = torch.tensor([1.0, -1.0], requires_grad=True)
    w.grad, b.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([0.5, 0.5])  # ||g_w|| = 2
    lr, wd, eta = 0.1, 0.01, 0.02
    opt = LARS([{"params": [w]}, {"params": [b], "adapt": False, "weight_decay": 0.0}], lr=lr, momentum=0.9,
               weight_decay=wd, eta=eta)
    opt.step()
    trust = eta * 5.0 / (2.0 + wd * 5.0)
    expect_w = torch.tensor([[3.0, 4.0]]) - lr * trust * (torch.tensor([[0.0, 2.0]]) + wd * torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(w.detach(), expect_w, atol=1e-7)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.05, -1.0 - 0.05]), atol=1e-7)  # plain SGD, no decay
    # second step: heavy-ball momentum on the scaled update v <- 0.9 v + u
    u1 = (expect_w - torch.tensor([[3.0, 4.0]])) / -lr
    w.grad = torch.tensor([[0.0, 2.0]])
    opt.step()
    wn = float(expect_w.norm())
    u2 = eta * wn / (2.0 + wd * wn) * (torch.tensor([[0.0, 2.0]]) + wd * expect_w)
    assert torch.allclose(w.detach(), expect_w - lr * (0.9 * u1 + u2), atol=1e-6)


def test_lamb_single_step_equals_the_hand_computed_update() -> None:
    w = torch.tensor([1.0, 2.0, 2.0], requires_grad=True)  # ||w|| = 3
    g = torch.tensor([0.1, -0.2, 0.0])
    w.grad = g.clone()
    lr, wd, eps = 0.01, 0.1, 1e-6
    LAMB([w], lr=lr, weight_decay=wd, eps=eps).step()
    # t = 1: m_hat = g, v_hat = g^2, so m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps)
    r = g / (g.abs() + eps) + wd * torch.tensor([1.0, 2.0, 2.0])
    trust = 3.0 / float(r.norm())
    assert torch.allclose(w.detach(), torch.tensor([1.0, 2.0, 2.0]) - lr * trust * r, atol=1e-7)


def test_zero_norm_layers_get_trust_one() -> None:
    w = torch.zeros(2, requires_grad=True)
    w.grad = torch.tensor([1.0, 0.0])
    LARS([w], lr=0.5, momentum=0.0).step()
    assert torch.equal(w.detach(), torch.tensor([-0.5, 0.0]))


def test_biases_and_norm_parameters_are_excluded() -> None:
    net = _net()
    groups = param_groups(net, 5e-4)
    adapt = {id(p) for p in groups[0]["params"]}
    plain = {id(p) for p in groups[1]["params"]}
    assert adapt == {id(net[0].weight), id(net[3].weight)}
    assert plain == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0 and not groups[1]["adapt"]
    # a bias with zero gradient under LAMB stays put (no decay pulls it), a weight decays
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    bias0, w0 = net[0].bias.detach().clone(), net[0].weight.detach().clone()
    LAMB(groups, lr=0.1, weight_decay=0.5).step()
    assert torch.equal(net[0].bias.detach(), bias0)
    assert net[0].weight.detach().norm() < w0.norm()


def test_scaling_rules_and_config_peak_lr() -> None:
    assert scaled_lr(0.1, 1024, "linear", 256) == pytest.approx(0.4)
    assert scaled_lr(0.1, 1024, "sqrt", 256) == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, "none", 256) == 0.1
    assert TrainConfig(lr=0.1, batch_size=4096, lr_scaling="linear", base_batch_size=256).peak_lr == pytest.approx(1.6)
    assert TrainConfig(lr=0.1, batch_size=64, lr_scaling="sqrt", base_batch_size=256).peak_lr == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="lr_scaling"):
        TrainConfig(lr_scaling="cubic")
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")


@pytest.mark.parametrize("name, cls", [("lars", LARS), ("lamb", LAMB)])
def test_trainer_selects_large_batch_optimisers_and_trains(name: str, cls: type) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    y = (x[:, 0] > 0).long()
    net = _net()
    lr = 20.0 if name == "lars" else 0.05  # LARS: relative step lr * eta (eta = 1e-3)
    with torch.no_grad():
        before = float(F.cross_entropy(net(x), y))
    trainer = Trainer(net, "standard", dict(optimizer=name, lr=lr, epochs=4, batch_size=32, warmup=0.2,
                                           lr_scaling="linear", base_batch_size=32, grad_clip=5.0), progress=False)
    trainer.fit((x, y))
    assert isinstance(trainer.optimizer, cls) and len(trainer.optimizer.param_groups) == 2
    with torch.no_grad():
        after = float(F.cross_entropy(net(x), y))
    assert after < 0.7 * before and math.isfinite(after)


def test_recipe_override_reaches_the_optimizer() -> None:
    from fortify.config import load_config

    cfg = load_config("standard-mnist-5k", ["train.optimizer=lamb", "train.lr_scaling=sqrt"])
    assert cfg.train.optimizer == "lamb" and cfg.train.lr_scaling == "sqrt"
    x, y = torch.randn(16, 3), torch.arange(16) % 2
    hist = train(_net(), (x, y), optimizer="lars", epochs=1, batch_size=8, progress=False)
    assert len(hist) == 1
