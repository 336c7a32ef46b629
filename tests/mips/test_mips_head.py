"""FastHead equals the exact linear head at full budget (bias as the extra dimension), never mutates the model;
the selector reaches its target on held-out queries with valid choices; ``fortify predict`` end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.mips import build, recall_at_k
from fortify.mips.graph import GraphIndex
from fortify.mips.head import FastHead
from fortify.mips.selector import Selector
from fortify.models.state import fingerprint


def head_and_features(bias: bool = True) -> tuple[nn.Linear, np.ndarray]:
    torch.manual_seed(0)
    layer = nn.Linear(12, 1500, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(1500, 1) * 3)  # unnormalised rows
        if bias:
            layer.bias.uniform_(-2, 2)
    layer.train()
    return layer, torch.randn(30, 12).numpy()


@pytest.mark.parametrize("name", ["ivf", "graph", "greedy", "alsh"])
@pytest.mark.parametrize("bias", [True, False])
def test_fasthead_equals_exact_head_at_full_budget(name: str, bias: bool) -> None:
    layer, h = head_and_features(bias)
    before = fingerprint(layer)
    fast = FastHead(layer, name)
    ids, logits = fast(h, 5, fast.index.full_budget)
    with torch.no_grad():
        ref = layer(torch.from_numpy(h))
    top = torch.topk(ref, 5, dim=1)
    assert np.array_equal(ids, top.indices.numpy())
    assert np.allclose(logits, top.values.numpy(), atol=1e-4)
    assert fingerprint(layer) == before and layer.training
    cmp = fast.compare(h, 5, fast.index.full_budget, exact_head=layer, repeats=1)
    assert cmp.recall == 1.0 and cmp.classes == 1500 and cmp.inner_products > 0


def test_fasthead_approximate_recall_is_measured_and_typed() -> None:
    layer, h = head_and_features()
    fast = FastHead(layer, "ivf")
    cmp = fast.compare(h, 10, 1, repeats=1)
    ids, _ = fast(h, 10, 1)
    truth = fast.exact(h, 10)[0]
    assert cmp.recall == pytest.approx(recall_at_k(ids, truth).mean())
    assert cmp.inner_products < 1500
    with pytest.raises(InputError, match="columns"):
        fast(h[:, :5], 3)
    with pytest.raises(InputError, match="Linear"):
        FastHead(nn.Conv1d(1, 2, 3), "ivf")  # type: ignore[arg-type]


def test_selector_reaches_target_and_reports_against_best_single(data: tuple[np.ndarray, np.ndarray]) -> None:
    V, _ = data
    rng = np.random.default_rng(5)
    idx = V[rng.integers(0, V.shape[0], 400)]
    U = (idx + 0.5 * rng.standard_normal(idx.shape)).astype(np.float32)
    indexes = {"ivf": build("ivf", V), "graph": build("graph", V)}
    sel = Selector(indexes, target=0.9, k=10)
    with pytest.raises(ConfigError, match="not trained"):
        sel.search(U)
    sel.fit(U[:250])
    truth = build("exact", V).search(U[250:], 10).ids
    rep = sel.evaluate(U[250:], truth)
    assert rep.recall >= 0.85, rep
    assert sum(rep.choices.values()) == 150 and set(rep.choices) <= set(sel.configs)
    assert rep.best is not None and rep.table[rep.best][0] >= 0.9
    res = sel.search(U[250:])
    assert float(recall_at_k(res.ids, truth).mean()) == pytest.approx(rep.recall)
    g = indexes["graph"]
    assert isinstance(g, GraphIndex) and isinstance(sel.probe, GraphIndex) and ("graph", 0) in sel.configs, \
        "graph features by default"
    assert (res.cost.per_query >= g.entry_points(U[250:])[3]).all(), "the features' inner products are counted"
    # reuse is exact: a graph configuration continued from the features equals the graph searched alone, and its
    # marginal cost plus the features' cost is the graph's own cost
    R, C = sel._measure(U[250:], truth)
    Rs, Cs = sel._measure(U[250:], truth, standalone=True)
    F = sel._features(U[250:])[1]
    for i, (name, b) in enumerate(sel.configs):
        if name == "graph" and b < g.n:  # (the full budget is an exact scan, paid in full)
            assert np.array_equal(R[i], Rs[i]) and np.allclose(C[i] + F, Cs[i]), (name, b)
    ivf_sel = Selector(indexes, target=0.9, k=10, features=indexes["ivf"]).fit(U[:250])
    res = ivf_sel.search(U[250:])
    assert (res.cost.per_query >= indexes["ivf"].full_budget).all(), "the IVF features' inner products are counted"
    assert float(recall_at_k(res.ids, truth).mean()) >= 0.85
    with pytest.raises(ConfigError):
        Selector({"exact": build("exact", V)})
    with pytest.raises(ConfigError):
        Selector(indexes, target=1.5)


def test_predict_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.cli import main
    from fortify.models import create
    from fortify.models.io import save

    torch.manual_seed(0)
    model = create("tabular-mlp", in_shape=(6,), num_classes=300, hidden=(16,))
    save(model, tmp_path / "m.safetensors")
    x = torch.randn(20, 6).numpy()
    np.save(tmp_path / "x.npy", x)
    code = main(["predict", str(tmp_path / "m.safetensors"), "--data", str(tmp_path / "x.npy"), "--mips", "ivf",
                 "--k", "3", "--budget", "1000"])
    out = capsys.readouterr().out
    assert code == 0 and "recall@3 1.0000" in out
    assert "95% CI" in out and "interleaved rounds" in out  # a speed figure only with its interval
    with torch.no_grad():
        top = torch.topk(model(torch.from_numpy(x)), 3, dim=1).indices[0].tolist()
    assert out.splitlines()[0].startswith(f"row 0: {top[0]}:")
    for argv, needle in ((["--mips", "nope"], "unknown mips index"), (["--k", "0"], "--k"),
                         (["--data", str(tmp_path / "none.npy")], "does not exist"), (["--k", "301"], "larger")):
        base = ["predict", str(tmp_path / "m.safetensors"), "--data", str(tmp_path / "x.npy")]
        code = main(base + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (argv, err)


def test_real_head_is_deterministic_trained_and_cached(tmp_path: Path) -> None:
    from fortify.mips.realhead import ratings, real_head

    torch.set_num_threads(1)
    a = real_head(400, 150, dim=8, epochs=3, seed=1, cache=tmp_path / "h.npz")
    b = real_head(400, 150, dim=8, epochs=3, seed=1)
    assert torch.equal(a.layer.weight, b.layer.weight) and np.array_equal(a.users, b.users)
    assert a.final_loss < 0.69, "BPR must beat chance (log 2) on its own training pairs"
    pairs = ratings(150, 400, seed=1)
    logits = a.queries @ a.V.T
    seen = logits[pairs[:, 0], pairs[:, 1]].mean()
    assert seen > logits.mean(), "consumed items score above the average item"
    c = real_head(400, 150, dim=8, epochs=3, seed=1, cache=tmp_path / "h.npz")  # from the cache
    assert torch.equal(c.layer.weight, a.layer.weight) and c.V.shape == (400, 9)
