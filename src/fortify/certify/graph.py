"""Turn a feed-forward model into a flat list of bound-propagation operators.

Supported modules: ``nn.Sequential`` (nested), ``Linear``, ``Conv2d``, ``ReLU``, ``Flatten``,
``BatchNorm1d/2d`` (eval semantics: running statistics), ``AvgPool2d``, ``MaxPool2d``,
``Identity``/``Dropout`` (no-ops in eval mode) and the ``Normalized`` wrapper (duck-typed: a module
with ``inner``, ``mean`` and ``std``; becomes a per-channel affine map ``(x - mean) / std``).
Anything else raises :class:`fortify.errors.UnsupportedLayerError` naming the layer.

Every *linear* operator ``f(x) = W x + b`` offers:

* ``forward(x)``: ``(B, *in) -> (B, *out)``;
* ``interval(l, u)``: interval bound propagation (Gowal et al. 2018), exact for one affine map;
* ``back(A)``: ``A W`` for a batch of linear functionals ``A (B', S, *out) -> (B', S, *in)``;
* ``bias(A)``: ``A . b`` of shape ``(B', S)``.

Nonlinear operators (``ReLUOp``, ``MaxPoolOp``) offer ``forward`` and ``interval``; their linear
relaxations live in :mod:`fortify.certify.crown`. Operators reference the module's parameters (no
copies), so bounds are differentiable for certified training.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import UnsupportedLayerError


class Op:
    """Base operator; ``in_shape``/``out_shape`` (no batch dim) are set by :func:`trace_shapes`."""

    linear: bool = True
    name: str = ""
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def back(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bias(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rows_back(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e_r W, e_r . b)`` for the unit functionals of output neurons ``rows (S,)`` (flat
        indices): ``(1, S, *in)`` and ``(1, S)``. Subclasses avoid the dense one-hot product."""
        ref = next((t for t in vars(self).values() if isinstance(t, torch.Tensor)), torch.zeros(()))
        n = numel(self.out_shape)
        a = torch.zeros(1, rows.numel(), n, dtype=ref.dtype, device=ref.device)
        a[0, torch.arange(rows.numel(), device=ref.device), rows] = 1.0
        a = a.reshape((1, rows.numel()) + tuple(self.out_shape))
        return self.back(a), self.bias(a)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def _flat_spec(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return a.reshape((-1,) + tuple(shape))


class LinearOp(Op):
    def __init__(self, m: nn.Linear, name: str) -> None:
        self.w, self.b, self.name = m.weight, m.bias, name

    def forward(self, x):
        return F.linear(x, self.w, self.b)

    def interval(self, lo, hi):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c = F.linear(mid, self.w, self.b)
        r = F.linear(rad, self.w.abs())
        return c - r, c + r

    def back(self, a):
        return a.matmul(self.w)

    def bias(self, a):
        if self.b is None:
            return a.new_zeros(a.shape[:2])
        return a.matmul(self.b)

    def rows_back(self, rows):
        b = self.b[rows] if self.b is not None else self.w.new_zeros(rows.numel())
        return self.w[rows].unsqueeze(0), b.unsqueeze(0)


class ConvOp(Op):
    """Conv2d; also used for AvgPool2d (a grouped convolution with a constant kernel)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, stride, padding, dilation, groups: int, name: str):
        self.w, self.b, self.name = w, b, name
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, self.stride, self.padding, self.dilation, self.groups)

    def interval(self, lo, hi):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c = self.forward(mid)
        r = F.conv2d(rad, self.w.abs(), None, self.stride, self.padding, self.dilation, self.groups)
        return c - r, c + r

    def back(self, a):
        lead = a.shape[:2]
        flat = _flat_spec(a, self.out_shape)
        out = conv_transpose(flat, self.w, self.stride, self.padding, self.dilation, self.groups,
                             tuple(self.in_shape[1:]))
        return out.reshape(lead + tuple(self.in_shape))

    def bias(self, a):
        if self.b is None:
            return a.new_zeros(a.shape[:2])
        return a.sum(dim=(-1, -2)).matmul(self.b)

    def rows_back(self, rows):
        """Unit rows of a convolution: the kernel of channel ``c`` placed at the receptive field of
        output pixel ``(i, j)`` (a "patch"), written directly instead of a transposed convolution
        of one-hot maps (which costs ``S`` full transposed convolutions)."""
        if self.groups != 1:
            return super().rows_back(rows)
        cout, ho, wo = self.out_shape
        cin, h, w = self.in_shape
        (s0, s1), (p0, p1), (d0, d1) = self.stride, self.padding, self.dilation
        c, rem = rows // (ho * wo), rows % (ho * wo)
        i, j = rem // wo, rem % wo
        n = rows.numel()
        buf = self.w.new_zeros(n, cin, h + 2 * p0 + s0, w + 2 * p1 + s1)
        ar = torch.arange(n, device=rows.device)
        kh, kw = self.w.shape[2:]
        for di in range(kh):
            for dj in range(kw):
                buf[ar, :, i * s0 + di * d0, j * s1 + dj * d1] = self.w[c, :, di, dj]
        a = buf[:, :, p0:p0 + h, p1:p1 + w].unsqueeze(0)
        b = self.b[c] if self.b is not None else self.w.new_zeros(n)
        return a, b.unsqueeze(0)


class ScaleShiftOp(Op):
    """Per-channel affine ``x * scale + shift`` (channel = dim 1): BatchNorm (eval) and Normalized."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, name: str) -> None:
        self.scale, self.shift, self.name = scale.reshape(-1), shift.reshape(-1), name

    def _v(self, t: torch.Tensor, ndim_after: int) -> torch.Tensor:
        return t.reshape((-1,) + (1,) * ndim_after)

    def forward(self, x):
        k = x.dim() - 2
        return x * self._v(self.scale, k) + self._v(self.shift, k)

    def interval(self, lo, hi):
        k = lo.dim() - 2
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c = mid * self._v(self.scale, k) + self._v(self.shift, k)
        r = rad * self._v(self.scale.abs(), k)
        return c - r, c + r

    def back(self, a):
        return a * self._v(self.scale, len(self.in_shape) - 1)

    def bias(self, a):
        k = len(self.in_shape) - 1
        summed = a.reshape(a.shape[:3] + (-1,)).sum(-1) if k else a
        return summed.matmul(self.shift.expand(self.in_shape[0]))


class ReshapeOp(Op):
    """Flatten (or any reshape)."""

    def __init__(self, start_dim: int, end_dim: int, name: str) -> None:
        self.start_dim, self.end_dim, self.name = start_dim, end_dim, name

    def forward(self, x):
        return torch.flatten(x, self.start_dim, self.end_dim)

    def interval(self, lo, hi):
        return self.forward(lo), self.forward(hi)

    def back(self, a):
        return a.reshape(a.shape[:2] + tuple(self.in_shape))

    def bias(self, a):
        return a.new_zeros(a.shape[:2])


class ReLUOp(Op):
    linear = False

    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, x):
        return torch.relu(x)

    def interval(self, lo, hi):
        return torch.relu(lo), torch.relu(hi)


class MaxPoolOp(Op):
    """MaxPool2d: monotone, so IBP is exact per output; CROWN uses the relaxation in crown.py."""

    linear = False

    def __init__(self, m: nn.MaxPool2d, name: str) -> None:
        if m.ceil_mode or m.return_indices:
            raise UnsupportedLayerError(f"layer {name!r} (MaxPool2d with ceil_mode/return_indices) is not supported")
        self.name = name
        self.kernel, self.stride, self.padding, self.dilation = m.kernel_size, m.stride, m.padding, m.dilation

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation)

    def forward_indices(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation, return_indices=True)

    def interval(self, lo, hi):
        return self.forward(lo), self.forward(hi)


def conv_transpose(a: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups: int,
                   out_hw: tuple[int, int]) -> torch.Tensor:
    """Transposed convolution of ``a (N, Cout, h, w)`` with ``w (Cout, Cin/groups, kh, kw)`` to spatial
    size ``out_hw``. For few input channels (``Cin * kh * kw <= 64``, e.g. the first layer on
    grey images) a matmul + ``fold`` is used: CPU kernels for 1-channel transposed convolutions
    are several times slower than this column form. Otherwise the transposed convolution runs on
    channels-last input (faster CPU kernel; the result is channels-last too, a memory layout only)."""
    cout, cin, kh, kw = w.shape
    if groups == 1 and cin * kh * kw <= 64:
        n = a.shape[0]
        cols = w.reshape(cout, -1).t().matmul(a.reshape(n, cout, -1))
        return F.fold(cols, out_hw, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    hout, wout = a.shape[-2:]
    oh = out_hw[0] - ((hout - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1)
    ow = out_hw[1] - ((wout - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1)
    if a.dim() == 4 and a.shape[0] > 1:  # the channels-last CPU kernel is 1.3-2x faster, conversion included
        a = a.contiguous(memory_format=torch.channels_last)
    return F.conv_transpose2d(a, w, None, stride, padding, (oh, ow), groups, dilation)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _is_normalized(m: nn.Module) -> bool:
    return all(hasattr(m, k) for k in ("inner", "mean", "std")) and isinstance(getattr(m, "inner"), nn.Module)


def _bn_op(m: nn.modules.batchnorm._BatchNorm, name: str) -> ScaleShiftOp:
    if m.running_mean is None or m.running_var is None:
        raise UnsupportedLayerError(f"layer {name!r} ({type(m).__name__} without running statistics) is not supported")
    inv = torch.rsqrt(m.running_var + m.eps)
    w = m.weight if m.weight is not None else torch.ones_like(inv)
    b = m.bias if m.bias is not None else torch.zeros_like(inv)
    scale = w * inv
    return ScaleShiftOp(scale, b - m.running_mean * scale, name)


def _avgpool_op(m: nn.AvgPool2d, name: str, channels: int, ref: torch.Tensor) -> ConvOp:
    k, s, p = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.padding)
    if m.ceil_mode or (any(p) and not m.count_include_pad) or m.divisor_override is not None:
        raise UnsupportedLayerError(
            f"layer {name!r} (AvgPool2d with ceil_mode, count_include_pad=False or divisor_override) is not supported"
        )
    w = torch.full((channels, 1) + k, 1.0 / (k[0] * k[1]), dtype=ref.dtype, device=ref.device)
    return ConvOp(w, None, s, p, (1, 1), channels, name)


def linearize(model: nn.Module, prefix: str = "") -> list:
    """Flatten ``model`` into a list of operators / pending AvgPool modules (resolved by trace_shapes)."""
    name = prefix or type(model).__name__
    if _is_normalized(model):
        std, mean = model.std, model.mean  # type: ignore[union-attr]
        if not isinstance(std, torch.Tensor) or not isinstance(mean, torch.Tensor):
            raise UnsupportedLayerError(f"layer {name!r} (Normalized with non-tensor mean/std) is not supported")
        inv = 1.0 / std.reshape(-1)
        ops = [ScaleShiftOp(inv, -mean.reshape(-1) * inv, f"{name}.normalize")]
        return ops + linearize(model.inner, f"{prefix}.inner" if prefix else "inner")  # type: ignore[arg-type]
    if isinstance(model, nn.Sequential):
        out: list = []
        for child_name, child in model.named_children():
            out += linearize(child, f"{prefix}.{child_name}" if prefix else child_name)
        return out
    if isinstance(model, nn.Linear):
        return [LinearOp(model, name)]
    if isinstance(model, nn.Conv2d):
        if model.padding_mode != "zeros" or isinstance(model.padding, str):
            raise UnsupportedLayerError(f"layer {name!r} (Conv2d with padding={model.padding!r}, "
                                        f"padding_mode={model.padding_mode!r}) is not supported")
        return [ConvOp(model.weight, model.bias, model.stride, model.padding, model.dilation, model.groups, name)]
    if isinstance(model, nn.ReLU):
        return [ReLUOp(name)]
    if isinstance(model, nn.Flatten):
        return [ReshapeOp(model.start_dim, model.end_dim, name)]
    if isinstance(model, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return [_bn_op(model, name)]
    if isinstance(model, nn.MaxPool2d):
        return [MaxPoolOp(model, name)]
    if isinstance(model, nn.AvgPool2d):
        return [(model, name)]  # needs the channel count: resolved in trace_shapes
    if isinstance(model, (nn.Identity, nn.Dropout)):
        return []
    raise UnsupportedLayerError(
        f"layer {name!r} ({type(model).__name__}) is not supported by bound propagation; supported: Sequential, "
        "Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d, AvgPool2d, MaxPool2d, Identity, Dropout, Normalized"
    )


def trace_shapes(items: list, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    """Resolve pending layers and set ``in_shape``/``out_shape`` of every operator by a forward
    pass of one zero sample ``(1, *in_shape)``."""
    ops: list[Op] = []
    x = torch.zeros((1,) + tuple(in_shape), dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for item in items:
            op = _avgpool_op(item[0], item[1], x.shape[1], ref) if isinstance(item, tuple) else item
            op.in_shape = tuple(x.shape[1:])
            try:
                x = op.forward(x)
            except RuntimeError as e:
                raise UnsupportedLayerError(f"layer {op.name!r} cannot take input of shape {op.in_shape}: {e}") from e
            op.out_shape = tuple(x.shape[1:])
            ops.append(op)
    return ops


def build_ops(model: nn.Module, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    """``linearize`` + ``trace_shapes``: the operator list of ``model`` for inputs ``(B, *in_shape)``."""
    return trace_shapes(linearize(model), in_shape, ref)


def numel(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))
