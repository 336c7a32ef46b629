"""Asynchronous adversarial-example producers (fortify.train.distributed.producers): with no delay the
single-process staleness model equals PGD-AT exactly, a delay d gives the staleness histogram
{0, 1, ..., d-1} once each then d, stale examples beyond max_staleness are dropped; 2 producer processes
train a model (loss falls) and report every push as used or dropped with a staleness histogram."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.train import Trainer, train
from fortify.train.distributed import fit
from fortify.train.distributed.producers import Delayed
from fortify.train.tasks.pgd_at import PGDAT

CFG = dict(epochs=2, batch_size=16, lr=0.1, schedule="constant", momentum=0.0, weight_decay=0.0)


def data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x[:, 0, :2].mean((1, 2)) > x[:, 0, 2:].mean((1, 2))).long()
    return x, y


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def pgd() -> PGDAT:
    return PGDAT(threat="linf:0.05", steps=2, monitor=False)


def test_zero_delay_equals_pgd_at() -> None:
    a, b = net(), net()
    train(a, data(), task=pgd(), progress=False, **CFG)
    train(b, data(), task=Delayed(pgd(), 0), progress=False, **CFG)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_delay_gives_the_staleness_histogram_and_drops_beyond_the_bound() -> None:
    task = Delayed(pgd(), 3)
    hist = train(net(), data(), task=task, progress=False, **CFG)  # 8 steps
    assert task.histogram == {0: 1, 1: 1, 2: 1, 3: 5} and task.dropped == 0
    assert hist[-1]["staleness"] == 3.0
    capped = Delayed(pgd(), 3, max_staleness=1)
    train(net(), data(), task=capped, progress=False, **CFG)
    assert capped.histogram == {0: 7, 1: 1} and capped.dropped == 6  # steps 2..7 regenerated fresh
    with pytest.raises(ConfigError, match="adversarial task"):
        Delayed("standard", 1)  # type: ignore[arg-type]


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo")
def test_two_producer_processes_train_and_report_staleness() -> None:
    x, y = data(96)
    model = net()
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    res = fit(model, (x, y), task=pgd(), world_size=2, mode="producers", max_staleness=1, epochs=3, batch_size=8,
              lr=0.2, schedule="constant", weight_decay=0.0)
    with torch.no_grad():
        after = float(F.cross_entropy(res.model(x), y))
    s = res.stats
    assert s["mode"] == "producers" and s["producers"] == 2 and s["world_size"] == 3
    assert s["used"] + s["dropped"] == 3 * 12
    assert set(s["staleness"]) <= {"0", "1"} and sum(s["staleness"].values()) == s["used"]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert after < before
    with pytest.raises(ConfigError, match="adversarial task"):
        Trainer(net(), "standard", dict(nproc=2, dist_mode="producers", batch_size=8), progress=False).fit((x, y))
