"""Detectors and detection metrics against references: sklearn.metrics (AUROC, average precision, ROC curve),
sklearn's Ledoit-Wolf estimator, brute-force nearest neighbours, analytic energy / MSP, and a toy where far-away
inputs must be found."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fortify.audit.detect import DETECTORS
from fortify.audit.detect.mahalanobis import ledoit_wolf
from fortify.audit.detect.metrics import aupr_in, aupr_out, auroc, detection_score, fpr_at_tpr
from fortify.errors import InputError


def scores(seed: int = 0, ties: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(157, generator=g), torch.randn(93, generator=g) + 1.0
    if ties:
        a, b = (a * 4).round() / 4, (b * 4).round() / 4
    return a, b


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_sklearn(ties: bool) -> None:
    skm = pytest.importorskip("sklearn.metrics")
    a, b = scores(ties=ties)
    s = torch.cat([a, b]).numpy()
    out = [0] * 157 + [1] * 93
    assert auroc(a, b) == pytest.approx(skm.roc_auc_score(out, s), abs=1e-12)
    assert aupr_out(a, b) == pytest.approx(skm.average_precision_score(out, s), abs=1e-12)
    assert aupr_in(a, b) == pytest.approx(skm.average_precision_score([1 - o for o in out], -s), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve([1 - o for o in out], -s, drop_intermediate=False)
    assert fpr_at_tpr(a, b) == pytest.approx(float(fpr[(tpr >= 0.95).argmax()]), abs=1e-12)


def test_metric_extremes_and_bootstrap() -> None:
    a, b = torch.zeros(10), torch.ones(5)
    assert auroc(a, b) == 1.0 and fpr_at_tpr(a, b) == 0.0 and aupr_out(a, b) == 1.0
    assert auroc(b, a) == 0.0 and auroc(a, a) == 0.5
    r = detection_score(*scores(), resamples=100, seed=1)
    for k in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        lo, hi = r.intervals[k]
        assert lo <= getattr(r, k) <= hi and hi - lo < 0.4
    assert detection_score(*scores(), resamples=100, seed=1).intervals == r.intervals
    with pytest.raises(InputError):
        auroc(torch.tensor([0.1, float("nan")]), b)


def test_ledoit_wolf_equals_sklearn() -> None:
    cov = pytest.importorskip("sklearn.covariance")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    ours, a = ledoit_wolf(x)
    ref = cov.LedoitWolf(assume_centered=True).fit(x.numpy())
    assert a == pytest.approx(ref.shrinkage_, rel=1e-6)
    assert torch.allclose(ours, torch.from_numpy(ref.covariance_), rtol=1e-6, atol=1e-9)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centres[y] + 0.4 * torch.randn(n, 2, generator=g), y


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = blobs(300, 0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def test_analytic_scores(trained: nn.Module) -> None:
    x, y = blobs(50, 1)
    z = trained(x).detach()
    msp = DETECTORS.create("msp").fit(trained, x, y).score(x)
    assert torch.allclose(msp, -z.softmax(1).max(1).values, atol=1e-6)
    e = DETECTORS.create("energy", temperature=2.0).fit(trained, x, y).score(x)
    assert torch.allclose(e, -2.0 * torch.logsumexp(z / 2.0, 1), atol=1e-5)
    ml = DETECTORS.create("max-logit").fit(trained, x, y).score(x)
    assert torch.allclose(ml, -z.max(1).values)
    odin = DETECTORS.create("odin", temperature=1.0, noise=0.0).fit(trained, x, y).score(x)
    assert torch.allclose(odin, msp, atol=1e-6), "ODIN with T = 1 and no noise is MSP"
    react = DETECTORS.create("react", percentile=100.0).fit(trained, x, y).score(x)
    assert torch.allclose(react, -torch.logsumexp(z, 1), atol=1e-5), "ReAct clipping at the max is energy"


def test_knn_is_the_brute_force_kth_distance(trained: nn.Module) -> None:
    x, y = blobs(80, 2)
    q, _ = blobs(7, 3)
    feat = trained[:4]
    f = nn.functional.normalize(feat(x).detach(), dim=1)
    fq = nn.functional.normalize(feat(q).detach(), dim=1)
    ref = torch.tensor([sorted(float((fi - fj).norm()) for fj in f)[4] for fi in fq])
    got = DETECTORS.create("knn", k=5).fit(trained, x, y).score(q)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "vim"])
def test_feature_detectors_find_far_inputs(trained: nn.Module, name: str) -> None:
    x, y = blobs(300, 4)
    g = torch.Generator().manual_seed(5)
    ang = torch.rand(200, generator=g) * 2 * math.pi
    far = 6.0 * torch.stack([ang.cos(), ang.sin()], 1)
    det = DETECTORS.create(name, **({"layers": 1} if name == "mahalanobis" else {})).fit(trained, x, y)
    x_in, _ = blobs(200, 6)
    # KNN normalises the features: a ReLU net maps far points onto rays it has seen, so it separates them least
    assert auroc(det.score(x_in), det.score(far)) > (0.8 if name == "knn" else 0.9)


def test_mahalanobis_preprocessing_lowers_in_distribution_scores(trained: nn.Module) -> None:
    x, y = blobs(200, 7)
    plain = DETECTORS.create("mahalanobis").fit(trained, x, y)
    pre = DETECTORS.create("mahalanobis", noise=0.05).fit(trained, x, y)
    assert float(pre.score(x).mean()) < float(plain.score(x).mean())
    thr = plain.threshold(x, 0.95)
    assert float((plain.score(x) <= thr).double().mean()) >= 0.95
