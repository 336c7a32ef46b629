"""``robust_masks`` / ``measure(robust="strong")``: the equal-footing float-vs-int8 robustness protocol."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.attacks import create as create_attack
from fortify.compress import OnnxModule, measure, onnx_bytes
from fortify.compress.measure import robust_masks
from fortify.threat import ThreatModel


def _correct(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(x).argmax(1) == y


def test_masks_are_subsets_and_all_is_their_intersection(cnn: nn.Module, test_data) -> None:
    x, y = test_data[0][:48], test_data[1][:48]
    masks = robust_masks(cnn, x, y, ThreatModel("linf", 0.1), square_queries=30)
    assert set(masks) == {"fast", "square", "all"}
    clean = _correct(cnn, x, y)
    inter = clean.clone()
    for k in ("fast", "square"):
        assert masks[k].dtype == torch.bool and masks[k].shape == (48,)
        assert not (masks[k] & ~clean).any()  # a misclassified point is never robust
        inter &= masks[k]
    assert torch.equal(masks["all"], inter)
    assert masks["all"].sum() < clean.sum()  # linf 0.1 breaks some points of a standard-trained net


def test_zero_budget_leaves_exactly_the_clean_correct_points(cnn: nn.Module, test_data) -> None:
    x, y = test_data[0][:32], test_data[1][:32]
    masks = robust_masks(cnn, x, y, ThreatModel("linf", 1e-9), square_queries=10)
    assert torch.equal(masks["all"], _correct(cnn, x, y))


def test_onnx_transfer_from_its_own_twin_equals_white_box_pgd(cnn: nn.Module, test_data) -> None:
    # the float ONNX export computes the same function as its twin, so transfer PGD from the twin
    # scored on the ONNX model is white-box PGD (same seed, same examples)
    x, y = test_data[0][:40], test_data[1][:40]
    threat = ThreatModel("linf", 0.08)
    onnx = OnnxModule(onnx_bytes(cnn, x[:2]), threads=1)
    masks = robust_masks(onnx, x, y, threat, float_twin=cnn, pgd_steps=10, square_queries=20, seed=3)
    assert set(masks) == {"square", "transfer_pgd", "transfer_fast", "all"}
    pgd = create_attack("pgd", steps=10)(cnn, x, y, threat, generator=torch.Generator().manual_seed(3))
    assert torch.equal(masks["transfer_pgd"], ~pgd.success)
    assert torch.equal(masks["all"], masks["square"] & masks["transfer_pgd"] & masks["transfer_fast"])
    rows = measure({"onnx": onnx}, x, y, threat="linf:0.08", robust="strong", n_robust=40, pgd_steps=10,
                   square_queries=20, seed=3, latency=False, float_twins={"onnx": cnn})
    assert rows[0].robust_acc == float(masks["all"].float().mean())
    assert rows[0].extra["robust_transfer_pgd"] == float(masks["transfer_pgd"].float().mean())


def test_cpu_clock_latencies_are_positive_and_ordered(cnn: nn.Module, test_data) -> None:
    from fortify.compress.measure import latencies
    from fortify.errors import ConfigError

    big = nn.Sequential(nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                        nn.Linear(2048, 10))
    x = test_data[0][:2]
    lat = latencies({"small": cnn, "big": big}, x, batch_sizes=(1, 64), repeats=5, warmup=1, threads=1, clock="cpu")
    assert all(v > 0 for d in lat.values() for v in d.values())
    # ~4.2 M vs ~0.1 M multiply-accumulates per image: CPU time must rank them even on a loaded machine
    assert lat["big"][64] > 2 * lat["small"][64]
    with pytest.raises(ConfigError, match="clock"):
        latencies({"small": cnn}, x, clock="gpu")
