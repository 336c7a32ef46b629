"""The fast paths of pixel flipping and cascading randomisation against their reference loops.

* deletion / insertion: one forward per *distinct* perturbed input (no-op steps and the shared
  all-baseline input evaluated once) gives the curve of the plain loop -- one forward per step and
  image, the features ranked by hand -- to 1e-12 in float64, with exact ties in the attributions,
  exact-baseline pixels, a step count that does not divide ``d``, and baselines 0 and 0.5; the number
  of rows run equals the number of distinct inputs; the model is left as it was.
* randomisation: the ranks equal :func:`scipy.stats.rankdata` (average ties) and the metric equals the
  cascade written out with :func:`fortify.explain.similarity.spearman` per layer (1e-12).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from scipy.stats import rankdata
from torch import nn

from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from fortify.explain.metrics.randomisation import layers_by_execution, randomise
from fortify.explain.similarity import average_ranks, centred_ranks, spearman, spearman_with
from fortify.models.state import fingerprint
from tests.explain.helpers import images, relu_cnn

TARGET = torch.tensor([0, 1, 2, 3, 1])


class RowCounter(nn.Module):
    """Wraps a model and counts the rows it is run on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        out: torch.Tensor = self.inner(x)
        return out


def sparse_images(baseline: float) -> torch.Tensor:
    """5 images 8x8, ~60% of the pixels exactly ``baseline``; the last image all ``baseline``."""
    x = images(5)
    x = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) < 0.6,
                    torch.full_like(x, baseline), x)
    x[4] = baseline
    return x


def perturbed(x: torch.Tensor, attr: torch.Tensor, steps: int, baseline: float,
              insert: bool) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(image i, step k, flat input)`` for every image and step: the top ``round(k d / steps)`` features
    (stable descending order of the attribution) removed from ``x[i]`` or inserted into a ``baseline`` image."""
    n, d = x.shape[0], x[0].numel()
    for i in range(n):
        order = torch.argsort(attr[i].reshape(-1), descending=True, stable=True).tolist()
        for k in range(steps + 1):
            top = order[:round(k * d / steps)]
            flat = (torch.full((d,), baseline, dtype=x.dtype) if insert else x[i].reshape(-1).clone())
            flat[top] = x[i].reshape(-1)[top] if insert else baseline
            yield i, k, flat


def reference_curve(model: nn.Module, x: torch.Tensor, attr: torch.Tensor, target: torch.Tensor, steps: int,
                    baseline: float, insert: bool) -> torch.Tensor:
    """One forward per image and step: the top ``round(k d / steps)`` features (stable descending
    order of the attribution) removed from ``x`` or inserted into a ``baseline`` image."""
    curve = torch.zeros(x.shape[0], steps + 1, dtype=x.dtype)
    for i, k, flat in perturbed(x, attr, steps, baseline, insert):
        with torch.no_grad():
            p = torch.softmax(model(flat.reshape((1,) + tuple(x.shape[1:]))), dim=1)
        curve[i, k] = p[0, target[i]]
    return curve


def distinct_rows(x: torch.Tensor, attr: torch.Tensor, steps: int, baseline: float, insert: bool) -> int:
    """Distinct non-blank perturbed inputs per image, plus one shared all-baseline input if any."""
    seen: set[tuple[float, ...]] = set()
    for i, _, flat in perturbed(x, attr, steps, baseline, insert):
        seen.add((i,) + tuple(flat.tolist()) if bool((flat != baseline).any()) else (-1,))
    return len(seen)


@pytest.mark.parametrize("metric", ["deletion", "insertion"])
@pytest.mark.parametrize("steps,baseline", [(64, 0.0), (7, 0.0), (64, 0.5)])
def test_flip_curve_equals_the_per_step_loop(metric: str, steps: int, baseline: float) -> None:
    model, x = relu_cnn(), sparse_images(baseline)
    attr = ATTRIBUTIONS.create("saliency")(model, x, TARGET).round(decimals=2)  # exact ties
    attr[1] = 0.0  # an all-tied map: index order
    counter = RowCounter(model).eval()
    before = fingerprint(model)
    res = ATTRIBUTION_METRICS.create(metric, steps=steps, baseline=baseline, batch_size=37)(counter, x, attr, TARGET)
    ref = reference_curve(model, x, attr, TARGET, steps, baseline, metric == "insertion")
    assert res.extra["curve"].shape == (5, steps + 1)
    assert float((res.extra["curve"] - ref).abs().max()) < 1e-12
    assert torch.allclose(res.values, torch.trapezoid(ref, dx=1.0 / steps, dim=1), atol=1e-12)
    # + 1: the template's one-row forward that counts the classes (a target is given)
    assert counter.rows == distinct_rows(x, attr, steps, baseline, metric == "insertion") + 1
    assert counter.rows < 5 * (steps + 1)  # the no-op steps and the blank image were skipped
    assert fingerprint(model) == before


def test_flip_curve_without_repeated_inputs_runs_every_step_once() -> None:
    """No pixel equals the baseline: every step is distinct except the shared all-baseline end."""
    model, x = relu_cnn(), images(4)
    attr = ATTRIBUTIONS.create("saliency")(model, x, TARGET[:4])
    counter = RowCounter(model).eval()
    res = ATTRIBUTION_METRICS.create("deletion", steps=9)(counter, x, attr, TARGET[:4])
    assert counter.rows == 4 * 9 + 1 + 1  # one blank row for all; one row counting the classes
    ref = reference_curve(model, x, attr, TARGET[:4], 9, 0.0, False)
    assert float((res.extra["curve"] - ref).abs().max()) < 1e-12


def test_average_ranks_equal_scipy_rankdata_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (20, 50), generator=g).double()
    a[0], a[1, :10] = 2.0, -0.0  # a constant row; -0.0 ties with 0.0
    assert torch.equal(average_ranks(a), torch.as_tensor(rankdata(a.numpy(), axis=1)))
    b = torch.rand(20, 50, generator=g, dtype=torch.float64)
    assert float((spearman_with(centred_ranks(a), b) - spearman(a, b)).abs().max()) < 1e-12
    assert float(spearman_with(centred_ranks(a), b)[0]) == 0.0  # constant row: 0
    b[2, 3] = float("nan")  # a NaN row: 0, as similarity.spearman gives
    assert float(spearman_with(centred_ranks(a), b)[2]) == 0.0 == float(spearman(a, b)[2])


@pytest.mark.parametrize("absolute", [True, False])
def test_randomisation_equals_the_cascade_written_out(absolute: bool) -> None:
    model, x = relu_cnn(), images(5)
    sal = ATTRIBUTIONS.create("saliency")
    attr = sal(model, x, TARGET)
    before = fingerprint(model)
    res = ATTRIBUTION_METRICS.create("randomisation", attribution="saliency", absolute=absolute, seed=4)(
        model, x, attr, TARGET)
    clone = copy.deepcopy(model)
    rows = []
    for k, (_, module) in enumerate(reversed(layers_by_execution(clone, x))):
        randomise(module, 4 + k)
        out = sal(clone, x, TARGET)
        rows.append(spearman(attr.abs(), out.abs()) if absolute else spearman(attr, out))
    ref = torch.stack(rows, dim=1)
    assert float((res.extra["per_layer"] - ref).abs().max()) < 1e-12
    assert torch.allclose(res.values, ref.mean(dim=1), atol=1e-12)
    assert fingerprint(model) == before
