"""Graph channel pruning (DepGraph-style groups) against a dense reference: the physically pruned model
equals the original model with the removed channels zeroed (producer filters and BatchNorm affine
entries), is strictly smaller (params, MACs, serialized bytes) and keeps residual adds coupled."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

from fortify import models
from fortify.compress import create
from fortify.compress.measure import count_macs
from fortify.compress.prune.graph_groups import channel_plan
from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.models.graph import trace
from fortify.models.state import fingerprint


class TinyDag(nn.Module):
    """``s = bn(relu(a(x)) + b(x)) * 0.5``; ``t = cat([s, c(s)])``; depthwise conv, BN, pool, view, 2 Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 6, 3, padding=1), nn.Conv2d(2, 6, 1)
        self.bn, self.c = nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, padding=1)
        self.dw, self.bn2 = nn.Conv2d(10, 10, 3, padding=1, groups=10), nn.BatchNorm2d(10)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(10 * 4 * 4, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.bn(torch.relu(self.a(x)) + self.b(x)) * 0.5
        t = torch.cat([s, self.c(s)], 1)
        t = self.pool(self.bn2(self.dw(t)))
        return self.fc2(torch.relu(self.fc1(t.view(t.size(0), -1))))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


CASES: dict[str, tuple[Any, tuple[int, ...]]] = {
    "resnet-bn": (lambda: models.create("resnet-mnist", in_shape=(1, 8, 8)), (1, 8, 8)),
    "resnet-nobn": (lambda: models.create("resnet-mnist", in_shape=(1, 8, 8), bn=False), (1, 8, 8)),
    "dense": (lambda: models.create("dense-mnist", in_shape=(1, 8, 8)), (1, 8, 8)),
    "signal": (lambda: models.create("signal-cnn", in_shape=(3, 32)), (3, 32)),
    "tabular": (lambda: models.create("tabular-mlp", in_shape=(10,)), (10,)),
    "dag": (TinyDag, (2, 8, 8)),
    "normalized-dag": (lambda: models.Normalized(TinyDag(), [0.5, 0.4], [0.2, 0.3]), (2, 8, 8)),
}


def _case(key: str) -> tuple[nn.Module, torch.Tensor]:
    make, shape = CASES[key]
    torch.manual_seed(0)
    model = _randomize_bn(make())
    return model, torch.rand(64, *shape, generator=torch.Generator().manual_seed(1))


def _zeroed(model: nn.Module, kept: dict[str, list[int]]) -> nn.Module:
    """Dense reference: the removed output channels of every producer (weight rows, bias) and every
    BatchNorm / depthwise conv (weight, bias) set to 0, so each removed channel outputs exactly 0."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, keep in kept.items():
            m = ref.get_submodule(name)
            n = m.weight.shape[0]
            drop = torch.tensor([i for i in range(n) if i not in set(keep)], dtype=torch.long)
            m.weight[drop] = 0.0
            if m.bias is not None:
                m.bias[drop] = 0.0
    return ref


def _bytes(model: nn.Module) -> int:
    return len(st_save({k: v.contiguous() for k, v in model.state_dict().items()}))


@pytest.mark.parametrize("key", list(CASES))
def test_pruned_equals_zeroed_dense_reference_and_is_smaller(key: str) -> None:
    model, x = _case(key)
    before = fingerprint(model)
    res = create("graph_channel_prune", sparsity=0.5)(model, x[:2])
    assert fingerprint(model) == before  # (e) the input model is untouched
    pruned, kept = res.model, res.report["kept"]
    ref = _zeroed(model, kept)
    with torch.no_grad():
        out, want, orig = pruned(x), ref(x), model(x)
    assert torch.allclose(out, want, atol=1e-5), float((out - want).abs().max())  # (a)
    assert not torch.allclose(want, orig, atol=1e-3)  # the reference really lost channels
    p0, p1 = (sum(p.numel() for p in m.parameters()) for m in (model, pruned))
    assert p1 < p0 and res.report["params_total"] == p1 and res.report["params_before"] == p0  # (b)
    assert count_macs(pruned, x)[0] < count_macs(model, x)[0]
    assert _bytes(pruned) < _bytes(model)
    assert res.report["channels_after"] < res.report["channels_before"]


def _stream_kept(graph: Any, i: int, kept: dict[str, list[int]]) -> list[int]:
    """Kept channels of node ``i``: walk back through per-channel ops to the conv or input producing it."""
    node = graph.nodes[i]
    if node.kind == "input":
        return list(range(node.shape[0]))
    if node.kind == "module" and isinstance(node.target, (nn.Conv2d, nn.Linear)) and node.target.groups == 1:
        return kept[node.name]
    return _stream_kept(graph, node.inputs[0], kept)


@pytest.mark.parametrize("key", ["resnet-bn", "resnet-nobn", "dag"])
def test_residual_adds_keep_identical_channel_sets(key: str) -> None:
    model, x = _case(key)
    res = create("graph_channel_prune", sparsity=0.5)(model, x[:2])
    g = trace(model, tuple(x.shape[1:]))
    adds = [n for n in g.nodes if n.op == "add"]
    assert adds
    for n in adds:  # (c) every operand of an add keeps the same channel indices
        sets = [_stream_kept(g, i, res.report["kept"]) for i in n.inputs]
        assert all(s == sets[0] for s in sets) and 0 < len(sets[0]) < g.nodes[n.inputs[0]].shape[0], n.name
    plan = channel_plan(g)
    stream = [grp for grp in plan.groups if len(grp.producers) > 1]
    assert stream  # a residual stream couples several producers into one group


def test_cat_maps_channel_ranges_and_depthwise_follows() -> None:
    model, x = _case("dag")
    res = create("graph_channel_prune", sparsity=0.5)(model, x[:2])
    kept, m = res.report["kept"], res.model
    assert kept["a"] == kept["b"] and len(kept["a"]) == 3 and len(kept["c"]) == 2
    assert m.c.in_channels == 3 and m.dw.in_channels == m.dw.groups == 5 and m.bn2.num_features == 5
    assert kept["dw"] == kept["a"] + [6 + k for k in kept["c"]]  # cat offsets: a/b channels, then 6 + c's
    assert m.fc1.in_features == 5 * 16 and m.fc2.out_features == 3  # flatten blocks; classifier untouched


@pytest.mark.parametrize("key", ["resnet-bn", "dense", "tabular"])
def test_sparsity_zero_keeps_outputs(key: str) -> None:
    model, x = _case(key)
    res = create("graph_channel_prune", sparsity=0.0)(model, x[:2])
    with torch.no_grad():
        assert torch.equal(res.model(x), model(x))  # (d)
    assert res.report["params_total"] == res.report["params_before"]


def test_importance_is_summed_filter_norm_of_the_group() -> None:
    model, x = _case("dag")
    with torch.no_grad():  # coupled channel 4 of a/b: tiny in both -> removed although a[4] alone is large
        model.b.weight[4] = 0.0
        model.b.bias[4] = 0.0
        model.a.weight[[0, 1, 2, 3, 5]] *= 10
        model.b.weight[[0, 1, 2, 3, 5]] *= 10
    kept = create("graph_channel_prune", sparsity=0.5, criterion="l1")(model, x[:2]).report["kept"]
    assert 4 not in kept["a"] and kept["a"] == kept["b"]


def test_channel_prune_delegates_to_graph_groups_for_non_sequential_models() -> None:
    model, x = _case("resnet-bn")
    a = create("channel_prune", amount=0.5)(model, x[:2])
    b = create("graph_channel_prune", sparsity=0.5)(model, x[:2])
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    with pytest.raises(ConfigError, match="amount"):
        create("channel_prune", amount={0: 0.5})(model, x[:2])


class _LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.ln, self.out = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(self.fc(x)))


class _Broadcast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 1, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x) + self.b(x)).flatten(1)


@pytest.mark.parametrize("model,shape,match", [
    (_LayerNormNet(), (4,), "LayerNorm"),
    (nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(36, 2)), (1, 5, 5),
     "grouped"),
    (_Broadcast(), (1, 3, 3), "broadcast"),
])
def test_unsupported_graphs_give_one_typed_line(model: nn.Module, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=match) as err:  # (f)
        create("graph_channel_prune", sparsity=0.5)(model, torch.rand(2, *shape))
    assert "\n" not in str(err.value)


def test_bad_hyper_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        create("graph_channel_prune", sparsity=1.0)
    with pytest.raises(ConfigError, match="criterion"):
        create("graph_channel_prune", criterion="l3")


def test_compress_recipe_on_resnet_measures_smaller_and_reloads(tmp_path: Any) -> None:
    from fortify.compress.pipeline import compress
    from fortify.compress.prune.graph_io import load_graph_model

    torch.manual_seed(0)
    net = models.Normalized(_randomize_bn(models.create("resnet-mnist", in_shape=(1, 8, 8))), [0.1], [0.3])
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    res = compress(net, "graph-prune", test=(x, y), threat=None, out_dir=tmp_path, measure_args={"latency": False})
    before, after = res.measurements
    assert after.bytes < 0.5 * before.bytes and after.params_total < before.params_total and after.macs < before.macs
    assert res.artefact is not None and after.bytes == res.artefact.stat().st_size
    back = load_graph_model(res.artefact)
    with torch.no_grad():
        assert torch.equal(back(x), res.model(x))
