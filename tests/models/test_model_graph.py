"""fortify.models.graph (the traced DAG) and the graph architectures of the zoo."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify import models
from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.models.graph import evaluate, trace
from fortify.models.state import fingerprint


def _replay(g, x: torch.Tensor) -> torch.Tensor:
    """Evaluate the traced graph node by node (an independent pass over the recorded nodes)."""
    vals = [x]
    for node in g.nodes[1:]:
        vals.append(evaluate(node, vals))
    return vals[g.output]


def test_trace_records_shapes_splices_normalized_and_replays_the_model() -> None:
    torch.manual_seed(0)
    inner = models.create("resnet-mnist", in_shape=(1, 8, 8), widths=(4, 8, 8))
    net = models.Normalized(inner, [0.5], [0.25])
    net.train()  # a model left in training mode: the shape pass must not touch the BatchNorm statistics
    before = fingerprint(net)
    g = trace(net, (1, 8, 8))
    assert fingerprint(net) == before
    kinds = [n.kind for n in g.nodes]
    assert kinds[0] == "input" and kinds[1] == "normalize" and "Normalized" not in {n.op for n in g.nodes}
    ops = [n.op for n in g.nodes]
    assert ops.count("add") == 3 and ops.count("Conv2d") == 1 + 2 * 3 + 2  # stem, 2 per block, 2 shortcuts
    assert g.nodes[g.output].shape == (10,)
    stem = next(n for n in g.nodes if n.name == "inner.stem")
    assert stem.shape == (4, 8, 8) and stem.inputs == (1,)
    users = g.users()
    assert sum(len(u) > 1 for u in users) >= 3  # the residual forks
    x = torch.rand(3, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(_replay(g, x), net(x), atol=1e-6)


class _Sorts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=1).values


class _Branches(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return x
        return -x


class _MixesBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)


@pytest.mark.parametrize("model,fragment", [
    (_Sorts(), r"operator torch\.sort at node 'sort'"),
    (_Branches(), "cannot be traced by torch.fx"),
    (_MixesBatch(), "batch dimension"),
])
def test_untraceable_or_unknown_operators_are_typed_errors(model: nn.Module, fragment: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=fragment):
        trace(model, (4,))


def test_view_with_size_queries_keeps_the_batch() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2 * 4 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            return self.fc(h.view(h.size(0), -1) * 2.0)

    g = trace(Net(), (1, 4, 4))
    view = next(n for n in g.nodes if n.op == "view")
    assert view.shape == (32,) and any(n.kind == "shape" for n in g.nodes)


def test_zoo_graph_architectures() -> None:
    res = models.create("resnet-mnist")
    assert sum(p.numel() for p in res.parameters()) == 77_562 < 1_000_000
    # by hand: stem 144; block 16->16: 2 BN (64) + 2 conv (4608); 16->32 s2: BN 32+64, conv 4608+9216,
    # 1x1 shortcut 512; 32->64 s2: BN 64+128, conv 18432+36864, shortcut 2048; final BN 128; fc 650
    assert 144 + 64 + 4608 + 96 + 4608 + 9216 + 512 + 192 + 18432 + 36864 + 2048 + 128 + 650 == 77_562
    plain = models.create("resnet-mnist", bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert models.create("dense-mnist")(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    dense = models.create("dense-mnist")
    assert dense.head[-1].in_features == (16 + 36) // 2 + 36  # transition halves 52 -> 26, block 2 adds 36
    sig = models.create("signal-cnn", in_shape=(3, 64), num_classes=5)
    assert sig(torch.rand(2, 3, 64)).shape == (2, 5) and sig[7].in_features == 32 * 16
    tab = models.create("tabular-mlp", in_shape=(30,), num_classes=2)
    assert [type(m).__name__ for m in tab] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    for name, bad in [("resnet-mnist", (1, 28)), ("signal-cnn", (1, 28, 28)), ("tabular-mlp", (1, 8, 8)),
                      ("signal-cnn", (1, 3))]:
        with pytest.raises(ConfigError, match=name.split("-")[0]):
            models.create(name, in_shape=bad)
