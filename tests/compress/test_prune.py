"""Pruning: real parameter/byte reductions, exact structural surgery, no input mutation, typed errors."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from fortify import models
from fortify.compress import TRANSFORMS, create, load_compressed, save_compressed
from fortify.compress.base import weight_layers
from fortify.models.state import fingerprint
from fortify.compress.prune.cyclical import cyclical_sparsity
from fortify.compress.prune.targeted_dropout import targeted_dropout_weight
from fortify.errors import ConfigError, UnsupportedLayerError

X = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _acc(m: nn.Module, d: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float((m(d[0]).argmax(1) == d[1]).float().mean())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_prune_sparsity_and_sparse_file_shrinks(cnn: nn.Module, tmp_path: Path, scope: str) -> None:
    res = create("magnitude_prune", sparsity=0.8, scope=scope)(cnn, X)
    weights = [m.weight for _, m in weight_layers(res.model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == round(0.8 * total) or scope == "layer" and abs(zeros / total - 0.8) < 1e-3
    if scope == "layer":  # every layer loses the same fraction
        for w in weights:
            assert abs(float((w == 0).float().mean()) - 0.8) < 1e-2
    else:  # one global threshold: every kept |w| >= every pruned |w|
        kept = torch.cat([w[w != 0].abs() for w in weights]).detach()
        orig = torch.cat([m.weight.detach().reshape(-1).abs() for _, m in weight_layers(cnn)])
        pruned = orig[torch.cat([(w == 0).reshape(-1) for w in weights])]
        assert float(kept.min()) >= float(pruned.max())
    dense = save_compressed(cnn, tmp_path / "d.safetensors", encoding="dense").stat().st_size
    sparse = save_compressed(res.model, tmp_path / "s.safetensors").stat().st_size
    assert sparse < 0.32 * dense  # 1 bit/weight + 4 bytes per survivor
    back = load_compressed(tmp_path / "s.safetensors")
    assert torch.equal(back(X), res.model(X))
    assert sum(int((p != 0).sum()) for p in back.parameters()) < sum(p.numel() for p in cnn.parameters()) * 0.25


@pytest.mark.parametrize("name", ["small-cnn", "madry-cnn", "lenet5", "mlp"])
def test_channel_prune_removes_units_and_saves(name: str, tmp_path: Path) -> None:
    net = models.Normalized(models.create(name), [0.1], [0.3])
    res = create("channel_prune", amount=0.5)(net, X)
    assert res.report["params_total"] < 0.5 * res.report["params_before"]
    assert sum(p.numel() for p in res.model.parameters()) == res.report["params_total"]
    assert res.model(X).shape == (4, 10)
    models.save(res.model, tmp_path / "p.safetensors")  # widths written back into the architecture record
    assert torch.equal(models.load(tmp_path / "p.safetensors")(X), res.model(X))
    assert (tmp_path / "p.safetensors").stat().st_size < 0.5 * models.save(net, tmp_path / "d.safetensors").stat().st_size


def test_channel_prune_zero_importance_units_keep_outputs_identical(cnn: nn.Module) -> None:
    seq = cnn.inner
    with torch.no_grad():  # zero 4 of 8 conv1 filters, 8 of 16 conv2 filters and 16 of 32 hidden neurons
        for idx, n in ((0, 4), (2, 8), (5, 16)):
            seq[idx].weight[:n] = 0
            seq[idx].bias[:n] = 0
    ref = cnn(X)
    res = create("channel_prune", amount=0.5)(cnn, X)
    assert [m.weight.shape[0] for _, m in weight_layers(res.model)] == [4, 8, 16, 10]
    assert torch.allclose(res.model(X), ref, atol=1e-5)


def test_neuron_merge_is_exact_for_duplicate_units(cnn: nn.Module) -> None:
    seq = cnn.inner
    with torch.no_grad():
        seq[2].weight[3] = seq[2].weight[7]  # duplicate conv2 filter 7 into 3 (conv -> flatten -> linear)
        seq[2].bias[3] = seq[2].bias[7]
        seq[5].weight[10] = seq[5].weight[20]  # duplicate hidden neuron (linear -> linear)
        seq[5].bias[10] = seq[5].bias[20]
    res = create("neuron_merge", amount={2: 1 / 16, 5: 1 / 32})(cnn, X)  # one unit in each of the two layers
    assert res.model.inner[2].out_channels == 15 and res.model.inner[5].out_features == 31
    assert res.report["merged"]["2"][1] == 0.0  # the duplicate is the zero-saliency pair
    assert torch.allclose(res.model(X), cnn(X), atol=1e-4)


@pytest.mark.parametrize("name,kwargs", [
    ("magnitude_prune", {"sparsity": 0.5}),
    ("channel_prune", {"amount": 0.25}),
    ("neuron_merge", {"amount": 0.25}),
    ("low_rank", {"energy": 0.9}),
    ("imp_rewind", {"sparsity": 0.5, "rounds": 2, "epochs": 2, "rewind_epochs": 1}),
    ("cyclical_prune", {"sparsity": 0.5, "cycles": 2, "epochs": 2}),
    ("hydra", {"sparsity": 0.5, "score_epochs": 1, "finetune_epochs": 1, "task_args": {"threat": "linf:0.1", "steps": 1}}),
    ("targeted_dropout_prune", {"gamma": 0.5, "epochs": 1}),
    ("deep_compression", {"sparsity": 0.5, "bits": 4, "prune_epochs": 1, "share_epochs": 1}),
    ("distill", {"student": "mlp", "student_args": {"hidden": [16]}, "epochs": 1}),
    ("finetune", {"task": "pgd_at", "task_args": {"threat": "linf:0.1", "steps": 1}}),
])
def test_transforms_never_mutate_their_input(mlp: nn.Module, train_data, name: str, kwargs: dict) -> None:
    mlp.train()  # a mixed flag state must survive too
    mlp.inner[1].training = False
    before = fingerprint(mlp)
    snapshot = copy.deepcopy(mlp.state_dict())
    res = create(name, **kwargs)(mlp, train_data[0][:4], data=(train_data[0][:256], train_data[1][:256]))
    assert fingerprint(mlp) == before
    assert all(torch.equal(v, mlp.state_dict()[k]) for k, v in snapshot.items())
    assert res.model is not mlp and not res.model.training


def test_training_prunes_reach_target_and_keep_accuracy(mlp: nn.Module, train_data, test_data) -> None:
    base = _acc(mlp, test_data)
    one_shot = _acc(create("magnitude_prune", sparsity=0.8)(mlp, train_data[0][:4]).model, test_data)
    assert one_shot < base - 0.1  # 80% one-shot pruning without retraining hurts: the methods below recover
    for name, kw in [("imp_rewind", {"sparsity": 0.8, "rounds": 2, "epochs": 2}),
                     ("cyclical_prune", {"sparsity": 0.8, "cycles": 2, "epochs": 6,
                                         "config": {"lr": 0.05, "batch_size": 64}}),
                     ("hydra", {"sparsity": 0.8, "score_epochs": 1, "task": "standard", "task_args": {}})]:
        res = create(name, **kw)(mlp, train_data[0][:4], data=train_data)
        w = torch.cat([m.weight.reshape(-1) for _, m in weight_layers(res.model)])
        assert abs(float((w == 0).float().mean()) - 0.8) < 0.01, name
        assert _acc(res.model, test_data) > base - 0.15, name  # 80% sparse and still close to the dense model


def test_adversarial_finetune_after_merge_keeps_sparsity_and_shape(mlp: nn.Module, train_data) -> None:
    merged = create("neuron_merge", amount=0.25)(mlp, X).model
    sparse = create("magnitude_prune", sparsity=0.7)(merged, X).model
    res = create("finetune", task="pgd_at", task_args={"threat": "linf:0.1", "steps": 2})(sparse, X, data=train_data)
    for (_, a), (_, b) in zip(weight_layers(sparse), weight_layers(res.model)):
        assert a.weight.shape == b.weight.shape
        assert torch.equal(a.weight == 0, b.weight == 0)  # the pruned weights stay pruned
    assert not all(torch.equal(a.weight, b.weight) for (_, a), (_, b) in zip(weight_layers(sparse), weight_layers(res.model)))


def test_targeted_dropout_task_with_adversarial_base(mlp: nn.Module, train_data) -> None:
    from fortify.train import Trainer, TrainConfig, create_task

    task = create_task("targeted_dropout", base="pgd_at", base_args={"threat": "linf:0.1", "steps": 1}, gamma=0.5)
    hist = Trainer(mlp, task, TrainConfig(epochs=1, lr=0.01), progress=False).fit(train_data)
    assert hist[0]["train_loss"] > 0
    assert task.base.grad_evals_total == train_data[0].shape[0]  # the PGD inner attack ran on every sample
    with torch.no_grad():  # eval mode: no weight is dropped, the wrapper is the identity
        from fortify.compress.reparam import ReparamNet

        w = ReparamNet(mlp, lambda i, w: w).eval()
        assert torch.equal(w(X), mlp(X))


def test_cyclical_schedule_and_targeted_dropout_reference() -> None:
    s = [cyclical_sparsity(t, 30, 3, 0.9) for t in range(30)]
    assert s[9] == pytest.approx(0.9) and s[10] < 0.5 and s[19] == pytest.approx(0.9)  # resets each cycle
    assert s[6] == pytest.approx(0.9) and s[5] < 0.9  # ramp over 70% of a cycle, then hold
    assert all(a <= b for a, b in zip(s[:10], s[1:10]))
    w = torch.arange(1.0, 11.0).repeat(4, 1)  # 4 rows of 1..10
    out = targeted_dropout_weight(w, gamma=0.3, alpha=1.0, generator=None)
    assert torch.equal(out[:, :3], torch.zeros(4, 3)) and torch.equal(out[:, 3:], w[:, 3:])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_sparsity_raises_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        TRANSFORMS.get("magnitude_prune")(sparsity=bad)
    with pytest.raises(ConfigError, match="amount"):
        TRANSFORMS.get("channel_prune")(amount=bad)


def test_unsupported_layer_raises() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(UnsupportedLayerError, match="BatchNorm2d"):
        create("magnitude_prune", sparsity=0.5)(net, X)
    with pytest.raises(UnsupportedLayerError, match="Sequential"):
        create("channel_prune")(nn.Linear(3, 2), torch.rand(2, 3))


def test_data_needed_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="data"):
        create("hydra")(models.create("mlp", hidden=(8,)), X)
    with pytest.raises(ConfigError, match="unknown transform"):
        create("no-such-transform")
