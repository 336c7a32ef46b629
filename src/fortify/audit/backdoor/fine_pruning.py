"""Fine-pruning (Liu, Dolan-Gavitt & Garg 2018, RAID, "Fine-pruning: defending against backdooring attacks
on deep neural networks").

Backdoor behaviour hides in neurons that stay dormant on clean inputs. On a copy of the model: the mean
ReLU activation of every channel of the LAST convolution is measured on the defender's clean set
``x (N, C, H, W)``; channels are pruned (weights and bias set to zero, kept at zero afterwards) from the
least to the most active until the clean accuracy on ``x`` falls more than ``max_drop`` below the
unpruned accuracy or ``max_ratio`` of the channels are gone (the last pruning within budget is kept);
then the pruned copy is fine-tuned for ``epochs`` on ``(x, y)`` (cross-entropy, Adam, ``lr``). Finally the
pruned channels are removed for real (the convolution and every layer reading its channels are rebuilt
smaller by the compress pillar's channel plan, :mod:`fortify.compress.prune.graph_groups`) when that leaves
the logits unchanged on ``x`` (to 1e-5 relative): exact when the zeroed channels reach the next layer as zeros
(conv -> ReLU/pool -> conv/linear). A layer in between that maps zero to a constant (a BatchNorm shift) keeps
the zeroed copy, and the evidence says why (``structural``, ``structural_note``).
Cost: one forward pass per pruned channel plus ``epochs * N`` training rows, plus one trace.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fortify.audit.backdoor._ops import accuracy, fit, last_module, owned_copy, predict_logits
from fortify.audit.backdoor.detect import check_positive
from fortify.audit.backdoor.mitigate import BACKDOOR_MITIGATIONS, Mitigation
from fortify.errors import ConfigError


def channel_activity(model: nn.Module, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean ReLU activation ``(C_out,)`` of ``conv``'s output channels over ``x``; the hook is removed."""
    acc: list[torch.Tensor] = []

    def grab(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        acc.append(F.relu(out.detach()).mean(dim=(0, 2, 3)) * out.shape[0])

    handle = conv.register_forward_hook(grab)
    try:
        predict_logits(model, x)
    finally:
        handle.remove()
    return torch.stack(acc).sum(0) / x.shape[0]


def zero_channels(conv: nn.Conv2d, channels: torch.Tensor) -> None:
    """Set the weights (and bias) of ``conv``'s output ``channels`` to zero, in place (a copy we own)."""
    with torch.no_grad():
        conv.weight[channels] = 0.0
        if conv.bias is not None:
            conv.bias[channels] = 0.0


def remove_channels(model: nn.Module, conv_name: str, channels: torch.Tensor,
                    x: torch.Tensor) -> tuple[nn.Module | None, str]:
    """A copy of ``model`` with the (zeroed) output ``channels`` of ``conv_name`` removed from the convolution and
    every layer coupled to them, or ``(None, reason)`` when the graph cannot be pruned there or the removal would
    change the logits on ``x`` (module docstring)."""
    from fortify.compress.prune.graph_groups import channel_plan
    from fortify.compress.prune.graph_prune import rebuild
    from fortify.errors import FortifyError
    from fortify.models.graph import trace

    if channels.numel() == 0:
        return None, "no channel pruned"
    cand = copy.deepcopy(model)
    try:
        plan = channel_plan(trace(cand, tuple(x.shape[1:]), ref=x[:2]))
    except FortifyError as e:
        return None, f"kept zeroed: the graph cannot be channel-pruned ({str(e).splitlines()[0]})"
    want = {(conv_name, 0, int(c)) for c in channels}
    roots = {ch.root for g in plan.groups for ch in g.channels if not ch.fixed and any(s in want for s in ch.slices)}
    if len(roots) != channels.numel():
        return None, "kept zeroed: some pruned channels are coupled to channels that must stay"
    rebuild(cand, plan, roots)
    ref, got = predict_logits(model, x), predict_logits(cand, x)
    if not torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max().clamp_min(1.0))):
        return None, "kept zeroed: a layer after the convolution maps zero to a nonzero value (e.g. BatchNorm)"
    return cand, f"removed {channels.numel()} channels of {conv_name} and the weights reading them"


@BACKDOOR_MITIGATIONS.register("fine-pruning", help="fine-pruning (Liu et al. 2018): prune dormant last-conv channels, fine-tune")
class FinePruning(Mitigation):
    """Prune the last convolution's dormant channels, then fine-tune (module docstring)."""

    def __init__(self, max_drop: float = 0.05, max_ratio: float = 0.9, epochs: int = 3, lr: float = 1e-3,
                 batch_size: int = 64, seed: int = 0) -> None:
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 1:
            raise ConfigError(f"max_drop must be a number in [0, 1], got {max_drop!r}")
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0 < max_ratio < 1:
            raise ConfigError(f"max_ratio must be a number in (0, 1), got {max_ratio!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
        self.max_drop, self.max_ratio, self.epochs = float(max_drop), float(max_ratio), epochs
        self.lr = float(check_positive(lr, "lr"))
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        self.seed = seed

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
        new = owned_copy(model)
        name, conv = last_module(new, nn.Conv2d)
        assert isinstance(conv, nn.Conv2d)
        activity = channel_activity(new, conv, x)
        order = activity.argsort()
        base = accuracy(new, x, y)
        w0 = conv.weight.detach().clone()
        b0 = None if conv.bias is None else conv.bias.detach().clone()
        limit = int(self.max_ratio * order.numel())
        pruned = 0
        for k in range(1, limit + 1):
            zero_channels(conv, order[:k])
            if accuracy(new, x, y) < base - self.max_drop:
                with torch.no_grad():  # undo the channel that broke the budget
                    conv.weight[order[k - 1]] = w0[order[k - 1]]
                    if b0 is not None and conv.bias is not None:
                        conv.bias[order[k - 1]] = b0[order[k - 1]]
                break
            pruned = k
        channels = order[:pruned]
        acc_pruned = accuracy(new, x, y)
        if self.epochs:
            fit(new, x, y, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                after_step=lambda _m: zero_channels(conv, channels))
        smaller, note = remove_channels(new, name, channels, x)
        return smaller if smaller is not None else new, {
            "layer": name, "pruned": int(pruned), "channels": int(order.numel()), "pruned_channels": channels.tolist(),
            "clean_acc_unpruned": base, "clean_acc_pruned": acc_pruned, "structural": smaller is not None,
            "structural_note": note}
