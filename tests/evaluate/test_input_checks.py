"""robust_accuracy, robustness_curve and run_evaluation refuse bad inputs with typed fortify errors
(the shared checks of fortify.validation, as attacks do), never a raw torch error, and leave the
model's flags untouched."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.evaluate import robust_accuracy, robustness_curve, run_evaluation
from fortify.models.state import fingerprint

from _eval_cases import trained_mlp


def _cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    return robust_accuracy(model, x, y, "linf:0.05", preset="fast", budget=0.05, sanity=False)


def _curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    return robustness_curve(model, x, y, "linf", [0.05], budget=0.05, checks=1)


ENTRY_POINTS: dict[str, Callable[..., Any]] = {"robust_accuracy": _cascade, "robustness_curve": _curve}


class Flat(nn.Module):
    """A model declaring no input shape: ``x (N, 16) @ W``; anything else fails inside torch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = trained_mlp()
    return model, x[:12], y[:12]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_tensors_are_input_errors(problem, entry: str) -> None:
    model, x, y = problem
    run = ENTRY_POINTS[entry]
    before = fingerprint(model)
    cases = {
        "3-D input": (x.reshape(12, 4, 4), y, "shape"),
        "float64": (x.double(), y, "dtype"),
        "labels out of range": (x, torch.full_like(y, 3), "label 3"),
        "negative labels": (x, y - 1, "negative"),
        "NaN": (torch.where(torch.arange(16) == 3, torch.nan, x), y, "NaN"),
        "outside bounds": (x + 2, y, "must lie in"),
        "float labels": (x, y.float(), "integer"),
        "label count": (x, y[:5], "labels"),
    }
    for what, (xb, yb, text) in cases.items():
        with pytest.raises(InputError, match=text):
            run(model, xb, yb)
    assert fingerprint(model) == before  # nothing left switched or accumulated


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_wrong_channels_and_undeclared_shapes_are_input_errors(entry: str) -> None:
    run = ENTRY_POINTS[entry]
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x3 = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(InputError, match=r"expects \(N, 1, \?, \?\)"):
        run(conv, x3, y)
    with pytest.raises(InputError, match="rejects"):  # the model declares nothing: its own failure, typed
        run(Flat(), torch.rand(6, 8), y)
    with pytest.raises(InputError):
        run(42, torch.rand(6, 16), y)


def test_unknown_options_are_config_errors(problem, tmp_path) -> None:
    model, x, y = problem
    with pytest.raises(ConfigError, match="batch_sise"):
        robust_accuracy(model, x, y, "linf:0.05", batch_sise=8)
    with pytest.raises(ConfigError, match="did you mean 'checks'"):
        robustness_curve(model, x, y, "linf", [0.05], check=1)
    with pytest.raises(ConfigError, match="eot_samples"):
        robust_accuracy(model, x, y, "linf:0.05", eot_samples=0)
    with pytest.raises(ConfigError, match="state"):
        run_evaluation(model, x, y, "linf:0.05", out_dir=tmp_path, state_path=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="budget"):
        run_evaluation(model, x, y, "linf:0.05", budget=-1)
