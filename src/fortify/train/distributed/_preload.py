"""Imported only by the forkserver process (see :data:`fortify.train.distributed.launch.PRELOAD`):
pulls in what every worker needs *before* the workers are forked from it, so each of them starts
in a fraction of a second. Constructing and stepping a torch optimiser the first time imports
``torch._dynamo`` (about 2-5 s on a busy machine); doing it here once pays that cost once per
parent process instead of once per worker and run."""
from __future__ import annotations

import torch
import torch.distributed  # noqa: F401

import fortify.train.distributed.async_sgd  # noqa: F401
import fortify.train.distributed.launch  # noqa: F401
import fortify.train.distributed.producers  # noqa: F401
import fortify.train.distributed.sync  # noqa: F401


def _warm_up() -> None:
    """One step of each optimiser the Trainer builds, on a throw-away one-element parameter."""
    p = torch.zeros(1, requires_grad=True)
    for opt in (torch.optim.SGD([p], lr=0.1, momentum=0.9), torch.optim.Adam([p], lr=0.1)):
        p.grad = torch.ones(1)
        opt.step()


_warm_up()
