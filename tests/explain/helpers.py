"""Tiny models and inputs shared by the explain tests (float64 where exactness is asserted)."""
from __future__ import annotations

import torch
from torch import nn

from fortify import models


def relu_cnn(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """small-cnn on 8x8, 4 classes, biases non-zero (a ReLU net with biases, no max-pooling)."""
    torch.manual_seed(seed)
    m = models.create("small-cnn", in_shape=(1, 8, 8), num_classes=4, channels=(4, 6), hidden=16).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.uniform_(-0.3, 0.3)
    return m.eval()  # the test owns these models; Captum runs them as given


def bn_resnet(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """resnet-mnist on 8x8 with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    m = models.create("resnet-mnist", in_shape=(1, 8, 8), num_classes=4, widths=(4, 6, 8)).to(dtype)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d) and mod.running_mean is not None and mod.running_var is not None:
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return m.eval()  # the test owns these models; Captum runs them as given


def tab_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    m = models.create("tabular-mlp", in_shape=(6,), num_classes=3, hidden=(8, 8)).to(dtype)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d) and mod.running_mean is not None and mod.running_var is not None:
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()  # the test owns these models; Captum runs them as given


def images(n: int = 4, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def table(n: int = 4, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)
