"""``fortify.models.state``: the context managers put back every module's own flag (also when the body
raises), ``frozen`` keeps the very ``.grad`` object, ``train_mode`` keeps a frozen BatchNorm frozen, and
``fingerprint`` sees every observable change (weight, buffer, flag, ``requires_grad``, ``.grad``)."""
from __future__ import annotations

from typing import Callable, ContextManager

import pytest
import torch
from torch import nn

from fortify.models.state import device_of, eval_mode, fingerprint, frozen, train_mode

Manager = Callable[[nn.Module], ContextManager[nn.Module]]


def mixed() -> nn.Sequential:
    """Root in train mode, BatchNorm frozen (eval), one frozen weight, one stale gradient."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 2))
    m.train()
    m[1].eval()
    m[0].weight.requires_grad_(False)
    m[4].bias.grad = torch.full_like(m[4].bias, 0.25)
    return m


def flags(m: nn.Module) -> list[bool]:
    return [x.training for x in m.modules()]


@pytest.mark.parametrize("manager", [eval_mode, frozen, train_mode], ids=["eval_mode", "frozen", "train_mode"])
def test_per_module_flags_restored_also_when_the_body_raises(manager: Manager) -> None:
    for raise_inside in (False, True):
        m = mixed()
        before, grads = fingerprint(m), [p.requires_grad for p in m.parameters()]
        try:
            with manager(m) as inside:
                assert inside is m
                if raise_inside:
                    raise KeyError("boom")
        except KeyError:
            assert raise_inside
        assert flags(m) == [True, True, False, True, True, True]  # BN still frozen, the rest training
        assert [p.requires_grad for p in m.parameters()] == grads
        assert fingerprint(m) == before


def test_eval_mode_and_frozen_switch_every_module_off_inside() -> None:
    m = mixed()
    with eval_mode(m):
        assert not any(flags(m))
        assert [p.requires_grad for p in m.parameters()][1:] == [True] * 5  # requires_grad untouched
    with frozen(m):
        assert not any(flags(m)) and not any(p.requires_grad for p in m.parameters())


def test_frozen_keeps_the_same_grad_object_and_writes_none() -> None:
    m = mixed()
    stale = m[4].bias.grad
    x = torch.randn(5, 4, requires_grad=True)
    with frozen(m):
        (g,) = torch.autograd.grad(m(x).sum(), x)  # input gradients still work inside
        m[4].bias.grad = torch.zeros(2)  # even a body that overwrites .grad cannot leak it
    assert g.shape == x.shape
    assert m[4].bias.grad is stale and torch.equal(stale, torch.full((2,), 0.25))
    assert all(p.grad is None for p in m.parameters() if p is not m[4].bias)


def test_train_mode_keeps_a_frozen_batchnorm_frozen() -> None:
    m = mixed()
    x = torch.randn(8, 4)
    stats = m[1].running_mean.clone()
    with train_mode(m):
        assert flags(m) == [True, True, False, True, True, True]
        m(x)
    assert torch.equal(m[1].running_mean, stats)  # a frozen BN's statistics do not move
    m.train(True)  # model.train(was) is *not* a restore: it unfreezes the BatchNorm
    assert m[1].training


def test_train_mode_trains_a_model_handed_over_in_eval_mode_entirely() -> None:
    m = mixed().eval()
    with train_mode(m):
        assert all(flags(m))
    assert not any(flags(m))


def test_nested_managers_restore_in_order() -> None:
    m = mixed()
    with train_mode(m):
        with eval_mode(m):
            assert not any(flags(m))
        assert flags(m) == [True, True, False, True, True, True]
    assert flags(m) == [True, True, False, True, True, True]


CHANGES: dict[str, Callable[[nn.Sequential], None]] = {
    "weight": lambda m: m[0].weight.data.add_(1e-3),
    "buffer": lambda m: m[1].running_var.mul_(2.0),
    "module flag": lambda m: setattr(m[3], "training", False),
    "root flag": lambda m: setattr(m, "training", False),
    "requires_grad": lambda m: m[4].weight.requires_grad_(False),
    "new grad": lambda m: setattr(m[4].weight, "grad", torch.zeros_like(m[4].weight)),
    "grad dropped": lambda m: setattr(m[4].bias, "grad", None),
    "grad replaced by an equal tensor": lambda m: setattr(m[4].bias, "grad", m[4].bias.grad.clone()),
    "grad contents": lambda m: m[4].bias.grad.add_(1.0),
}


@pytest.mark.parametrize("what", list(CHANGES))
def test_fingerprint_sees_every_change(what: str) -> None:
    m = mixed()
    before = fingerprint(m)
    assert fingerprint(m) == before  # deterministic
    CHANGES[what](m)
    assert fingerprint(m) != before


def test_fingerprint_equal_for_identical_copies_and_device_of() -> None:
    a, b = mixed(), mixed()
    b[4].bias.grad = a[4].bias.grad  # the same .grad object: the fingerprints agree
    assert fingerprint(a) == fingerprint(b)
    assert device_of(a) == torch.device("cpu")
    assert device_of(nn.ReLU()) is None
    bn_only = nn.BatchNorm1d(2, affine=False)
    assert device_of(bn_only) == torch.device("cpu")  # buffers count when there is no parameter
