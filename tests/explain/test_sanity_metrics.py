"""References for the random-logit test, ROAD (noisy linear imputation) and ROAR (remove and retrain).

* ROAD's imputation equals the reference construction of Rong et al. (a scipy sparse system per
  image, solved by ``spsolve``) to 1e-8; ROAD's curve equals imputing and classifying by hand.
* random-logit: a model whose classes share one gradient direction scores exactly 1, independent
  class weights score near 0; the drawn class is never the explained one and covers the others.
* ROAR: on data whose class lives in a known 2x2 patch, removing the patch (an oracle attribution)
  destroys the retrained accuracy while random removal of as many pixels does not.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csc_matrix, lil_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS, Attribution
from fortify.explain.metrics._impute import linear_impute
from fortify.explain.metrics.random_logit import other_classes
from fortify.explain.metrics.road import road_curve
from fortify.explain.similarity import spearman, ssim

from tests.explain.helpers import images, relu_cnn

NEIGHBOURS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def reference_impute(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Rong et al.'s NoisyLinearImputer (noise 0): a sparse system over the removed pixels, spsolve."""
    c, h, w = img.shape
    m, flat = keep.flatten(), img.reshape(c, -1)
    idx = np.argwhere(~m).flatten()
    vid = np.zeros(len(m), dtype=int)
    vid[idx] = np.arange(len(idx))
    a, b, weight_sum = lil_matrix((len(idx), len(idx))), np.zeros((len(idx), c)), np.ones(len(idx))
    for (o0, o1), wt in NEIGHBOURS:
        r, q = idx // w + o0, idx % w + o1
        valid = (r >= 0) & (q >= 0) & (r < h) & (q < w)
        nc, vi = (r * w + q)[valid], np.argwhere(valid).flatten()
        known = m[nc]
        b[vi[known], :] -= wt * flat[:, nc[known]].T
        a[vi[~known], vid[nc[~known]]] = wt
        weight_sum[~valid] -= wt
    a[np.arange(len(idx)), np.arange(len(idx))] = -weight_sum
    res = spsolve(csc_matrix(a), b).reshape(len(idx), c)
    out = flat.copy()
    out[:, idx] = res.T
    return out.reshape(c, h, w)


def test_linear_imputation_matches_the_sparse_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 2, 12, 10, generator=g, dtype=torch.float64)
    keep = torch.rand(5, 12, 10, generator=g) > torch.tensor([0.1, 0.4, 0.7, 0.9, 0.97]).reshape(5, 1, 1)
    got = linear_impute(x, keep)
    ref = np.stack([reference_impute(x[i].numpy(), keep[i].numpy()) for i in range(5)])
    assert np.abs(got.numpy() - ref).max() < 1e-8
    assert torch.equal(got[keep.unsqueeze(1).expand_as(x)], x[keep.unsqueeze(1).expand_as(x)])


def test_road_curve_is_impute_then_classify() -> None:
    model, x = relu_cnn(), images(3)
    attr = ATTRIBUTIONS.create("saliency")(model, x)
    t = torch.tensor([0, 1, 2])
    curve, correct = road_curve(model, x, attr, t, fractions=(0.25, 0.5), most_relevant_first=True, noise=0.0,
                                seed=0, batch_size=4)
    for k, f in enumerate((0.25, 0.5)):
        order = attr.sum(dim=1).reshape(3, -1).argsort(dim=1, descending=True, stable=True)
        keep = torch.ones(3, 64, dtype=torch.bool)
        keep.scatter_(1, order[:, :round(f * 64)], False)
        with torch.no_grad():
            p = torch.softmax(model(linear_impute(x, keep.reshape(3, 8, 8))), dim=1)
        assert torch.allclose(curve[:, k], p[torch.arange(3), t], atol=1e-7)
        assert torch.equal(correct[:, k], (p.argmax(dim=1) == t).double())
    morf = ATTRIBUTION_METRICS.create("road-morf", fractions=(0.25, 0.5), noise=0.0)(model, x, attr, t)
    assert torch.allclose(morf.values, curve.mean(dim=1), atol=1e-7) and not morf.higher_is_better
    with pytest.raises(ConfigError):
        ATTRIBUTION_METRICS.create("road-lerf", fractions=(0.5, 1.0))


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def test_random_logit_reference_cases() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64)
    shared = torch.randn(1, 64, generator=g, dtype=torch.float64)
    same = Linear(torch.tensor([[1.0], [2.0], [0.5], [3.0]], dtype=torch.float64) * shared)
    sal = ATTRIBUTIONS.create("saliency")
    res = ATTRIBUTION_METRICS.create("random-logit")(same, x, sal(same, x, 0), 0)
    assert torch.allclose(res.values, torch.ones(6, dtype=torch.float64)), "class-independent map: similarity 1"
    indep = Linear(torch.randn(4, 64, generator=g, dtype=torch.float64))
    res = ATTRIBUTION_METRICS.create("random-logit")(indep, x, sal(indep, x, 0), 0)
    w = indep.weight.detach().abs()
    expect = spearman(w[0].expand(6, 64), w[res.extra["other"]])
    assert torch.allclose(res.values, expect) and float(res.values.abs().mean()) < 0.4
    t = torch.arange(400) % 5
    other = other_classes(t, 5, seed=1)
    assert bool((other != t).all()) and set(other[t == 0].tolist()) == {1, 2, 3, 4}


def test_ssim_identity_and_similarity_option() -> None:
    a = images(3)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=a.dtype))
    assert float(ssim(a, images(3, seed=5)).max()) < 0.5
    model, x = relu_cnn(), images(3)
    attr = ATTRIBUTIONS.create("saliency")(model, x)
    res = ATTRIBUTION_METRICS.create("randomisation", similarity="ssim")(model, x, attr)
    assert res.values.shape == (3,) and bool((res.values <= 1).all())
    with pytest.raises(ConfigError):
        ATTRIBUTION_METRICS.create("random-logit", similarity="pearson")


class PatchOracle(Attribution):
    """Attribution 1 on the top-left 2x2 patch (where the class lives), 0 elsewhere."""

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[:, :, :2, :2] = 1.0
        return out


def patch_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 noise images whose label (0/1) is whether the top-left 2x2 patch is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    x[:, :, :2, :2] = y.reshape(n, 1, 1, 1).float() * 0.5 + 0.25
    return x, y


def test_roar_oracle_beats_random_removal() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    xt, yt = patch_data(128, 1)
    x, y = patch_data(64, 2)
    roar = ATTRIBUTION_METRICS.create("roar", train=(xt, yt), attribution=PatchOracle(), fractions=(0.1,),
                                      retrain={"epochs": 40, "batch": 32, "lr": 0.05})
    res = roar(model, x, PatchOracle()(model, x), y)
    acc, rand = float(res.extra["accuracy"][0]), float(res.extra["random_accuracy"][0])
    assert acc < 0.7 and rand > 0.9, (acc, rand)
    assert res.mean == pytest.approx(acc) and not res.higher_is_better
    with pytest.raises(ConfigError):
        ATTRIBUTION_METRICS.create("roar")(model, x, PatchOracle()(model, x), y)
    with pytest.raises(InputError):
        ATTRIBUTION_METRICS.create("roar", train=(xt[:, :, :4], yt))(model, x, PatchOracle()(model, x), y)


def test_similarity_spearman_equals_scipy_per_row() -> None:
    """similarity.spearman (tensor-side average ranks) equals scipy's spearmanr row by row, ties included;
    a constant row scores 0 (scipy: NaN)."""
    from scipy.stats import spearmanr
    g = torch.Generator().manual_seed(3)
    a = torch.randn(12, 1, 6, 6, generator=g, dtype=torch.float64)
    b = a + 0.7 * torch.randn(a.shape, generator=g, dtype=torch.float64)
    b[2] = torch.round(b[2])  # many ties
    a[4] = a[4].abs().round()  # ties on the other side
    b[7] = 1.0  # constant row
    got = spearman(a, b)
    assert got[7].item() == 0.0
    for i in [j for j in range(a.shape[0]) if j != 7]:
        rho = spearmanr(a[i].reshape(-1).numpy(), b[i].reshape(-1).numpy()).statistic
        assert got[i].item() == pytest.approx(float(rho), abs=1e-12)
