"""Structured channel pruning of any traceable model (ResNets, DenseNets, 1-D convnets, MLPs with BN).

The channel groups of :mod:`fortify.compress.prune.graph_groups` (DepGraph, Fang et al. 2023) decide
what is coupled; the importance is filter-norm pruning (Li et al. 2017, "Pruning filters for
efficient ConvNets") summed over a coupled channel: a channel ``k`` of a group owns one output
filter ``[W_p[k_p], b_p[k_p]]`` of every producer ``p`` it couples (one in a chain, every conv
feeding the same residual add in a ResNet) and its importance is
``sum_p ||[W_p[k_p], b_p[k_p]]||`` (L1 or L2 norm per filter, as chosen by ``criterion``).

In every group the ``sparsity`` fraction of its channels with the lowest importance is removed
(``round(n * (1 - sparsity))`` kept, at least one, fixed channels never removed, every producer
keeps at least one filter), then the modules are **rebuilt** with fewer channels (new
``nn.Conv1d/Conv2d/Linear/BatchNorm`` with the sliced weights and running statistics) inside the
Transform's private copy: parameters, MACs and bytes shrink. A removed channel equals a channel
whose producers' filters *and* BatchNorm affine entries are zero (then it outputs exactly 0 after
every BN); on such a model the pruned network computes the same outputs.
Cost: one trace plus a pass over the weights; no data.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from fortify.compress.base import TRANSFORMS, Data, Transform, TransformResult, check_fraction, count_params
from fortify.compress.prune.graph_io import BASE_ATTR, base_record
from fortify.compress.prune.graph_groups import NORMS, Channel, ChannelPlan, channel_plan
from fortify.compress.prune.structured import CRITERIA, unit_importance
from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.models.graph import trace
from fortify.models.normalized import Normalized
from fortify.models.registry import ARCH_ATTR


def channel_importance(plan: ChannelPlan, channel: Channel, norms: dict[str, torch.Tensor]) -> float:
    """``sum_p ||filter_p[k_p]||`` over the producer filters of ``channel`` (``norms[name]`` is ``(O,)``)."""
    return sum(float(norms[m][i]) for m, d, i in channel.slices if d == 0 and plan.uses[m].role == "producer")


def select_pruned(plan: ChannelPlan, sparsity: float, criterion: str = "l2") -> set[int]:
    """Roots of the channels to remove: per group the ``sparsity`` fraction of lowest importance
    (ties broken by the first slice), never a fixed channel, never a producer's last filter."""
    norms = {n: unit_importance(u.module, criterion) for n, u in plan.uses.items()  # type: ignore[arg-type]
             if u.role == "producer"}
    pruned: set[int] = set()
    for group in plan.groups:
        n = len(group.channels)
        budget = n - max(1, int(round(n * (1.0 - sparsity))))
        left = {p: int(plan.uses[p].out_labels.numel()) for p in group.producers}
        ranked = sorted((c for c in group.channels if not c.fixed),
                        key=lambda c: (channel_importance(plan, c, norms), c.slices[0]))
        for ch in ranked:
            if budget <= 0:
                break
            owned = Counter(m for m, d, _ in ch.slices if d == 0 and m in left)
            if all(left[p] - k >= 1 for p, k in owned.items()):
                for p, k in owned.items():
                    left[p] -= k
                pruned.add(ch.root)
                budget -= 1
    return pruned


def kept_indices(plan: ChannelPlan, pruned: set[int]) -> dict[str, tuple[list[int], list[int]]]:
    """Per module use: ``(kept input indices, kept output indices)`` (a follower's are equal)."""

    def alive(labels: torch.Tensor) -> list[int]:
        return [p for p, e in enumerate(labels.tolist()) if plan.root(e) not in pruned]

    return {n: (alive(u.in_labels), alive(u.out_labels)) for n, u in plan.uses.items()}


def _sliced(m: nn.Module, keep_in: list[int], keep_out: list[int]) -> nn.Module:
    """A new module like ``m`` with only channels ``keep_in`` in and ``keep_out`` out (weights copied)."""
    w = m.weight if isinstance(m.weight, torch.Tensor) else m.running_mean
    assert isinstance(w, torch.Tensor)  # Conv/Linear weight, or a non-affine BatchNorm's running mean
    ki = torch.tensor(keep_in, dtype=torch.long, device=w.device)
    ko = torch.tensor(keep_out, dtype=torch.long, device=w.device)
    dd = {"device": w.device, "dtype": w.dtype}
    new: nn.Module
    if isinstance(m, nn.Linear):
        new = nn.Linear(len(ki), len(ko), bias=m.bias is not None, **dd)
        weight = w[ko][:, ki]
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        depthwise = m.groups != 1
        groups = len(ko) if depthwise else 1
        new = type(m)(len(ki), len(ko), m.kernel_size, m.stride, m.padding, m.dilation,  # type: ignore[arg-type]
                      groups, m.bias is not None, m.padding_mode, **dd)
        weight = w[ko] if depthwise else w[ko][:, ki]
    elif isinstance(m, NORMS):
        new = type(m)(len(ko), m.eps, m.momentum, m.affine, m.track_running_stats, **dd)
        weight = w[ko]
    else:  # pragma: no cover - channel_plan only records the types above
        raise UnsupportedLayerError(f"cannot rebuild {type(m).__name__}")
    with torch.no_grad():
        if isinstance(new.weight, torch.Tensor) and new.weight.shape == weight.shape:
            new.weight.copy_(weight)
        for key in ("bias", "running_mean", "running_var"):
            old, dst = getattr(m, key, None), getattr(new, key, None)
            if isinstance(old, torch.Tensor) and isinstance(dst, torch.Tensor):
                dst.copy_(old[ko])
        old_n, dst_n = getattr(m, "num_batches_tracked", None), getattr(new, "num_batches_tracked", None)
        if isinstance(old_n, torch.Tensor) and isinstance(dst_n, torch.Tensor):
            dst_n.copy_(old_n)
    for (_, p_old), (_, p_new) in zip(m.named_parameters(), new.named_parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    new.train(m.training)
    return new


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


def rebuild(model: nn.Module, plan: ChannelPlan, pruned: set[int]) -> dict[str, tuple[list[int], list[int]]]:
    """Replace every module of ``plan`` that loses channels by its sliced copy, in place of ``model``
    (the module names of the plan's trace of ``model``). Returns :func:`kept_indices`."""
    kept = kept_indices(plan, pruned)
    for name, use in plan.uses.items():
        m = use.module
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "parametrizations", None) is not None:
            raise UnsupportedLayerError(f"graph channel pruning: layer {name!r} carries hooks or a "
                                        "reparametrisation (e.g. torch.nn.utils.prune); remove them first")
    for name, use in plan.uses.items():
        k_in, k_out = kept[name]
        if len(k_in) < use.in_labels.numel() or len(k_out) < use.out_labels.numel():
            _replace(model, name, _sliced(use.module, k_in, k_out))
    return kept


def refresh_record(model: nn.Module) -> bool:
    """Keep the architecture record only if it still rebuilds the model's parameter shapes; returns
    whether it was kept (a pruned graph model no longer matches its factory's widths)."""
    target = model.inner if isinstance(model, Normalized) else model
    rec = getattr(target, ARCH_ATTR, None)
    if not isinstance(rec, dict):
        return False
    try:
        from fortify.models import create

        with torch.device("meta"):
            ref = create(rec["name"], in_shape=tuple(rec["in_shape"]), num_classes=rec["num_classes"],
                         **rec.get("args", {}))
        same = [tuple(p.shape) for p in ref.parameters()] == [tuple(p.shape) for p in target.parameters()]
    except Exception:  # noqa: BLE001 - a factory record or stale args: the record no longer describes the model
        same = False
    if not same:
        delattr(target, ARCH_ATTR)
    return same


def prune_graph(model: nn.Module, example_inputs: torch.Tensor, sparsity: float,
                criterion: str = "l2") -> dict[str, Any]:
    """Prune ``model`` **in place** (call it on a copy; :class:`GraphChannelPrune` does) and return the
    report: ``groups``, ``channels_before/after``, ``widths`` ``{module: [before, after]}``, ``kept``
    ``{module: kept output indices}`` (inputs for a follower), ``params_before``, ``params_total``.
    ``example_inputs`` ``(B, *in_shape)`` fixes the traced shapes."""
    target = model.inner if isinstance(model, Normalized) else model
    if not any(True for _ in target.children()):
        raise UnsupportedLayerError(f"channel pruning needs several layers (an nn.Sequential or a traceable graph "
                                    f"of layers); got a single {type(target).__name__}: there is nothing to couple")
    plan = channel_plan(trace(model, tuple(example_inputs.shape[1:]), ref=example_inputs))
    before = count_params(model)[1]
    pruned = select_pruned(plan, sparsity, criterion)
    kept = rebuild(model, plan, pruned)
    base = base_record(model)
    if base is not None:  # what save_graph_model records, so the pruned model can be rebuilt on load
        setattr(target, BASE_ATTR, base)
    n_before = sum(len(g.channels) for g in plan.groups)
    return {
        "sparsity": sparsity, "criterion": criterion, "groups": len(plan.groups),
        "channels_before": n_before, "channels_after": n_before - len(pruned),
        "widths": {n: [int(u.out_labels.numel()), len(kept[n][1])] for n, u in plan.uses.items()},
        "kept": {n: kept[n][1] for n in plan.uses},
        "architecture_record_kept": refresh_record(model),
        "params_before": before, "params_total": count_params(model)[1],
    }


@TRANSFORMS.register("graph_channel_prune",
                     help="structured channel pruning of any traceable model (residual adds, concats; DepGraph groups)")
class GraphChannelPrune(Transform):
    """Args: ``sparsity`` in [0, 1): fraction of the channels of every coupled group removed;
    ``criterion`` ``"l1"``/``"l2"``: the filter norm summed over a channel's producers."""

    def __init__(self, sparsity: float = 0.5, criterion: str = "l2") -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.sparsity = check_fraction(sparsity, "sparsity")
        if criterion not in CRITERIA:
            raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
        self.criterion = criterion

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Trace the private copy, select the channels per group, rebuild the modules smaller."""
        return TransformResult(model, prune_graph(model, example_inputs, self.sparsity, self.criterion))


__all__ = ["GraphChannelPrune", "channel_importance", "kept_indices", "prune_graph", "rebuild", "refresh_record",
           "select_pruned"]
