"""The one place that touches a model's flags: eval mode, frozen parameters, fingerprints, device.

fortify never silently changes a user's model. Every pillar that runs a model it does not own
enters one of these context managers, which record each module's ``training`` flag and each
parameter's ``requires_grad`` (and, for :func:`frozen`, its ``.grad``) and put back exactly what was
there, per module, on exit -- also when the body raises. ``model.train(was)`` is *not* a restore: it
sets every submodule to ``was``, switching a deliberately frozen BatchNorm back to training.

* :func:`eval_mode` -- every module in eval mode for the duration.
* :func:`frozen` -- eval mode and ``requires_grad=False`` on every parameter; ``.grad`` restored
  (the tensor object itself, so a stale gradient the user kept is still there, unchanged).
* :func:`train_mode` -- the trainer's side: every module in training mode except those the user
  froze (a module already in eval mode when training starts stays in eval mode), restored after.
* :func:`fingerprint` -- a hashable snapshot of flags, ``requires_grad``, ``.grad`` identity and
  contents, parameter and buffer values and devices: ``fingerprint(m) == fingerprint(m)`` before
  and after any call means nothing observable changed.
* :func:`device_of` -- the device of the first parameter or buffer (``None`` for a stateless model).
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["device_of", "eval_mode", "fingerprint", "frozen", "restore_flags", "snapshot_flags", "train_mode"]

Flags = tuple[list[tuple[nn.Module, bool]], list[tuple[torch.nn.Parameter, bool]]]


def snapshot_flags(model: nn.Module) -> Flags:
    """Every module's ``training`` flag and every parameter's ``requires_grad``."""
    return [(m, m.training) for m in model.modules()], [(p, p.requires_grad) for p in model.parameters()]


def restore_flags(flags: Flags) -> None:
    """Put back what :func:`snapshot_flags` recorded, module by module."""
    modes, grads = flags
    for m, flag in modes:
        m.training = flag
    for p, flag in grads:
        p.requires_grad_(flag)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode for the duration; each module's own flag restored afterwards."""
    flags = snapshot_flags(model)
    try:
        for m, _ in flags[0]:
            m.training = False
        yield model
    finally:
        restore_flags(flags)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, ``requires_grad=False`` on every parameter and ``.grad`` kept as it was.

    Inside, gradients can still be taken with respect to inputs (``torch.autograd.grad``); nothing
    accumulates into the parameters. On exit every flag and every ``.grad`` object is restored.
    """
    flags = snapshot_flags(model)
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        for m, _ in flags[0]:
            m.training = False
        for p, _ in flags[1]:
            p.requires_grad_(False)
        yield model
    finally:
        restore_flags(flags)
        for p, g in grads:
            p.grad = g


@contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Training mode for the modules the user left in training mode when the model was handed over.

    A module that is in eval mode at entry while its parent is in training mode (a frozen
    BatchNorm) stays in eval mode; a model handed over entirely in eval mode is trained entirely
    (the usual ``model.eval()`` after loading). Flags are restored on exit.
    """
    flags = snapshot_flags(model)
    root_training = model.training
    try:
        for m, flag in flags[0]:
            m.training = flag if root_training else True
        yield model
    finally:
        restore_flags(flags)


def device_of(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer; ``None`` when it has neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def _digest(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous()
    if data.dtype == torch.bfloat16:
        data = data.float()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16] + f"{tuple(t.shape)}{t.dtype}{t.device}"


def fingerprint(model: nn.Module) -> tuple[object, ...]:
    """Everything a call could observably change about ``model``, as a comparable tuple.

    Per module (by name): ``training``. Per parameter: ``requires_grad``, device, dtype and a hash of
    the values, plus the identity and a hash of ``.grad``. Per buffer: a hash of the values. Costs
    one pass over the weights (hashing); meant for tests and checks, not hot paths.
    """
    modes = tuple((n, m.training) for n, m in model.named_modules())
    params = tuple(
        (n, p.requires_grad, _digest(p), None if p.grad is None else (id(p.grad), _digest(p.grad)))
        for n, p in model.named_parameters()
    )
    buffers = tuple((n, _digest(b)) for n, b in model.named_buffers())
    return modes, params, buffers
