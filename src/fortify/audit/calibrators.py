"""Post-hoc calibrators: fitted on a held-out split, applied by a wrapper that never mutates the model.

``cal = calibrate(model, x_val, y_val, "temperature")`` fits on the model's logits of a held-out split (the model
runs frozen: flags, ``requires_grad`` and ``.grad`` restored) and returns a :class:`CalibratedModel`, an
``nn.Module`` whose ``forward(x)`` is ``calibrator(model(x))``: logits whose softmax is the calibrated
distribution. The wrapped model's weights are never touched (the calibrator keeps its own buffers).

Registered in :data:`CALIBRATORS` (each maps logits ``z (N, C)`` to calibrated logits ``(N, C)``):

* ``temperature`` (Guo et al. 2017, "On calibration of modern neural networks"): ``z / T``, one ``T > 0`` fitted
  by minimising the NLL (convex in ``1 / T``: bisection on its derivative). Keeps the argmax (accuracy unchanged).
* ``vector`` (Guo et al. 2017): ``w * z + b`` with ``w, b in R^C``; ``matrix``: ``W z + b``, ``W in R^{CxC}``
  with an L2 penalty on the off-diagonal entries of ``W`` and on ``b`` (ODIR, Kull et al. 2019); the strength is
  chosen by 3-fold cross-validation on the held-out split unless given.
* ``dirichlet`` (Kull et al. 2019, "Beyond temperature scaling: obtaining well-calibrated multiclass
  probabilities with Dirichlet calibration"): ``W log softmax(z) + b`` with the ODIR regulariser
  ``lambda / (C (C - 1)) sum_{i != j} W_ij^2 + mu / C sum_j b_j^2``.
* ``histogram`` (Zadrozny & Elkan 2001): one-vs-rest per class, equal-width bins of ``p_k``, each bin replaced by
  the frequency of class ``k`` among the held-out samples in it (smoothed towards the bin centre by ``prior``
  pseudo-samples; an empty bin keeps its centre), rows renormalised.
* ``isotonic`` (Zadrozny & Elkan 2002): one-vs-rest per class, the monotone non-decreasing fit of ``1[y = k]``
  on ``p_k`` by pool-adjacent-violators, interpolated linearly between the fitted points, rows renormalised.

Histogram and isotonic output ``log`` of the renormalised probabilities (clamped at 1e-12): still logits.
Cost: fitting is one forward pass of the held-out split plus an L-BFGS run on ``(N, C)`` logits (<= ``max_iter``
iterations) or an O(N log N) sort per class; applying costs one forward plus O(C^2) per row.
"""
from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import nn

from fortify.audit.calibration import predict_logits
from fortify.errors import ConfigError, InputError
from fortify.registry import Registry
from fortify.validation import check_labels, check_logits

CALIBRATORS: Registry = Registry("calibrator")
EPS = 1e-12


def check_fit_inputs(logits: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits (N, C)`` finite floating and ``labels (N,)`` in ``[0, C)`` (InputError otherwise), as float64 / int64."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise InputError("logits must be a floating torch.Tensor (N, C)")
    z = check_logits(logits.detach(), logits.shape[0] if logits.dim() else 0)
    if not bool(torch.isfinite(z).all()):
        raise InputError("logits contain NaN or inf")
    return z.double(), check_labels(labels, z.shape[0], z.shape[1], name="labels")


class Calibrator(nn.Module, abc.ABC):
    """A map from logits ``(N, C)`` to calibrated logits ``(N, C)``, fitted once on held-out logits."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.fitted = False
        self.classes = 0

    def fit(self, logits: torch.Tensor, labels: torch.Tensor) -> "Calibrator":
        """Fit on held-out ``logits (N, C)`` and ``labels (N,)``; returns ``self``."""
        z, y = check_fit_inputs(logits, labels)
        self.classes = int(z.shape[1])
        with torch.enable_grad():
            self._fit(z, y)
        # stored in float32: a wrapped model's dtype (the first floating tensor, looked up by the input checks) must
        # stay the model's own, also for a model without parameters (ONNX Runtime); applied in float64
        for name, buf in list(self.named_buffers()):
            setattr(self, name, buf.float())
        self.fitted = True
        return self

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated logits ``(N, C)`` (the input's dtype); InputError before :meth:`fit` or for another C."""
        if not self.fitted:
            raise InputError(f"the {self.name} calibrator is used before fit(): fit it on a held-out split first")
        if logits.dim() != 2 or logits.shape[1] != self.classes:
            raise InputError(f"the {self.name} calibrator was fitted on {self.classes} classes, got logits of shape "
                             f"{tuple(logits.shape)}")
        return self._calibrate(logits.double()).to(logits.dtype)

    @abc.abstractmethod
    def _fit(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Fit on float64 ``z (N, C)`` and ``y (N,)``."""

    @abc.abstractmethod
    def _calibrate(self, z: torch.Tensor) -> torch.Tensor:
        """Calibrated float64 logits of float64 ``z (N, C)``."""


def _minimise(params: list[torch.Tensor], loss_fn: "torch.nn.Module | object", max_iter: int) -> None:
    """L-BFGS (strong Wolfe line search) on ``params`` minimising ``loss_fn()``."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()  # type: ignore[operator]
        loss.backward()
        return loss

    opt.step(closure)


def _ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(z, y)


def _check_nonneg(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


@CALIBRATORS.register("temperature", help="temperature scaling z / T (Guo et al. 2017)")
class TemperatureScaling(Calibrator):
    """``z / T`` with ``T`` minimising the held-out NLL (Guo et al. 2017).

    The NLL of ``beta z`` is convex in ``beta = 1 / T`` (log-sum-exp of a linear map minus a linear term), so its
    derivative ``mean_i (E_{softmax(beta z_i)}[z_i] - z_{i, y_i})`` is non-decreasing: the minimiser is found by
    bisection on ``log beta`` in ``[log 1e-3, log 1e3]`` (``iterations`` halvings; exact up to that bracket, no
    line search). Cost: O(iterations N C)."""

    log_t: torch.Tensor

    def __init__(self, iterations: int = 60) -> None:
        super().__init__()
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ConfigError(f"iterations must be a positive integer, got {iterations!r}")
        self.iterations = iterations
        self.register_buffer("log_t", torch.zeros((), dtype=torch.float64))

    @property
    def temperature(self) -> float:
        return float(self.log_t.exp())

    def _fit(self, z: torch.Tensor, y: torch.Tensor) -> None:
        zy = z.gather(1, y[:, None]).squeeze(1)

        def slope(log_beta: float) -> float:
            p = (math.exp(log_beta) * z).softmax(dim=1)
            return float(((p * z).sum(dim=1) - zy).mean())

        lo, hi = math.log(1e-3), math.log(1e3)
        for _ in range(self.iterations):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        self.log_t.fill_(-(lo + hi) / 2)

    def _calibrate(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.log_t.double().exp()


#: ODIR strengths tried by ``reg="cv"`` (Kull et al. 2019 select lambda by cross-validation over a log grid)
CV_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)


class _Affine(Calibrator):
    """Shared affine calibrators: ``W f(z) + b`` with the ODIR penalty (``reg`` on off-diagonals, ``reg_bias`` on b).

    ``reg="cv"`` (default): the strength (the same for ``W`` and ``b``) is chosen from :data:`CV_GRID` by 3-fold
    cross-validated NLL on the held-out split, then refitted on all of it; with few samples per parameter the
    unregularised fit overfits badly (NLL several times worse on new data)."""

    full: ClassVar[bool] = True
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, reg: float | str = "cv", reg_bias: float | None = None, max_iter: int = 200) -> None:
        super().__init__()
        if reg != "cv":
            _check_nonneg(reg, "reg")
        self.reg = reg
        self.reg_bias = None if reg_bias is None else _check_nonneg(reg_bias, "reg_bias")
        self.max_iter = max_iter
        self.chosen_reg: float | None = None
        self.register_buffer("weight", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(0, dtype=torch.float64))

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def _affine(self, f: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return f @ w.T + b if self.full else f * w + b

    def _solve(self, f: torch.Tensor, y: torch.Tensor, reg: float, reg_bias: float) -> tuple[torch.Tensor, torch.Tensor]:
        c = f.shape[1]
        w = (torch.eye(c, dtype=torch.float64) if self.full else torch.ones(c, dtype=torch.float64)).requires_grad_()
        b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
        off = 1 - torch.eye(c, dtype=torch.float64)

        def loss() -> torch.Tensor:
            pen = reg * ((w * off) ** 2).sum() / (c * (c - 1)) if self.full else 0.0
            return _ce(self._affine(f, w, b), y) + pen + reg_bias * (b ** 2).sum() / c

        _minimise([w, b], loss, self.max_iter)
        return w.detach().clone(), b.detach().clone()

    def _cv(self, f: torch.Tensor, y: torch.Tensor) -> float:
        """The strength of :data:`CV_GRID` with the lowest 3-fold held-out NLL (folds by index modulo 3)."""
        folds = torch.arange(f.shape[0]) % 3
        best, best_nll = CV_GRID[0], float("inf")
        for reg in CV_GRID:
            nll = 0.0
            for k in range(3):
                tr, te = folds != k, folds == k
                w, b = self._solve(f[tr], y[tr], reg, reg if self.reg_bias is None else self.reg_bias)
                nll += float(_ce(self._affine(f[te], w, b), y[te])) * int(te.sum())
            if nll < best_nll:
                best, best_nll = reg, nll
        return best

    def _fit(self, z: torch.Tensor, y: torch.Tensor) -> None:
        f = self._features(z)
        reg = self._cv(f, y) if self.reg == "cv" and f.shape[0] >= 6 else (1.0 if self.reg == "cv" else float(self.reg))
        self.chosen_reg = reg
        self.weight, self.bias = self._solve(f, y, reg, reg if self.reg_bias is None else self.reg_bias)

    def _calibrate(self, z: torch.Tensor) -> torch.Tensor:
        return self._affine(self._features(z), self.weight.double(), self.bias.double())


@CALIBRATORS.register("vector", help="vector scaling w * z + b (Guo et al. 2017)")
class VectorScaling(_Affine):
    """``w * z + b``, ``w, b (C,)`` fitted by NLL with an L2 penalty on ``b`` (Guo et al. 2017)."""

    full = False


@CALIBRATORS.register("matrix", help="matrix scaling W z + b, ODIR-regularised (Guo 2017, Kull 2019)")
class MatrixScaling(_Affine):
    """``W z + b``, ``W (C, C)``: NLL + ODIR penalty (``reg`` off-diagonal, ``reg_bias`` on b; Kull et al. 2019)."""


@CALIBRATORS.register("dirichlet", help="Dirichlet calibration W log p + b, ODIR (Kull et al. 2019)")
class DirichletCalibration(_Affine):
    """``W log softmax(z) + b`` with the ODIR regulariser (Kull et al. 2019)."""

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z, dim=1)


def _probs_to_logits(p: torch.Tensor) -> torch.Tensor:
    """Renormalised rows (uniform for an all-zero row), then ``log`` clamped at 1e-12."""
    s = p.sum(dim=1, keepdim=True)
    p = torch.where(s > 0, p / s.clamp(min=EPS), torch.full_like(p, 1.0 / p.shape[1]))
    return p.clamp(min=EPS).log()


@CALIBRATORS.register("histogram", help="one-vs-rest histogram binning (Zadrozny & Elkan 2001)")
class HistogramBinning(Calibrator):
    """Per class ``k``: ``n_bins`` equal-width bins of ``p_k``, each mapped to the held-out frequency of ``k``,
    smoothed by ``prior`` pseudo-samples at the bin centre (``(hits + prior * centre) / (count + prior)``: a
    bin never maps to probability 0, which would make the NLL infinite)."""

    table: torch.Tensor

    def __init__(self, n_bins: int = 15, prior: float = 1.0) -> None:
        super().__init__()
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
        self.n_bins = n_bins
        self.prior = _check_nonneg(prior, "prior")
        self.register_buffer("table", torch.zeros(0, dtype=torch.float64))

    def _bin(self, p: torch.Tensor) -> torch.Tensor:
        return (p * self.n_bins).long().clamp(0, self.n_bins - 1)

    def _fit(self, z: torch.Tensor, y: torch.Tensor) -> None:
        p = z.softmax(dim=1)
        c = p.shape[1]
        idx = self._bin(p)
        onehot = torch.nn.functional.one_hot(y, c).double()
        count = torch.zeros(c, self.n_bins, dtype=torch.float64).scatter_add_(1, idx.T, torch.ones_like(p.T))
        hits = torch.zeros(c, self.n_bins, dtype=torch.float64).scatter_add_(1, idx.T, onehot.T)
        centres = ((torch.arange(self.n_bins, dtype=torch.float64) + 0.5) / self.n_bins).expand(c, -1)
        self.table = ((hits + self.prior * centres) / (count + self.prior).clamp(min=EPS)).clone()

    def _calibrate(self, z: torch.Tensor) -> torch.Tensor:
        idx = self._bin(z.softmax(dim=1))
        return _probs_to_logits(self.table.to(z.device).double().gather(1, idx.T).T)


def pool_adjacent_violators(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The non-decreasing sequence closest to ``values (n,)`` in weighted least squares (PAV; Ayer et al. 1955).
    Cost: O(n) amortised."""
    v = values.double().tolist()
    w = [1.0] * len(v) if weights is None else weights.double().tolist()
    means: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for vi, wi in zip(v, w):
        means.append(vi)
        wts.append(wi)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, s2 = means.pop(), wts.pop(), sizes.pop()
            tot = wts[-1] + w2
            means[-1] = (means[-1] * wts[-1] + m2 * w2) / tot
            wts[-1] = tot
            sizes[-1] += s2
    return torch.tensor([m for m, s in zip(means, sizes) for _ in range(s)], dtype=torch.float64)


def interp(q: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``(xs, ys)`` (``xs`` sorted ascending) at ``q``, constant outside."""
    i = torch.searchsorted(xs, q.contiguous()).clamp(1, xs.numel() - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    t = ((q - x0) / (x1 - x0).clamp(min=EPS)).clamp(0, 1)
    return y0 + t * (y1 - y0)


@CALIBRATORS.register("isotonic", help="one-vs-rest isotonic regression (Zadrozny & Elkan 2002)")
class IsotonicCalibration(Calibrator):
    """Per class ``k``: PAV fit of ``1[y = k]`` on ``p_k``, linear interpolation between fitted points, floored at
    ``floor`` before renormalising (a fitted 0 would make the NLL infinite on a sample of that class)."""

    knots_x: torch.Tensor
    knots_y: torch.Tensor

    def __init__(self, floor: float = 1e-3) -> None:
        super().__init__()
        self.floor = _check_nonneg(floor, "floor")
        self.register_buffer("knots_x", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("knots_y", torch.zeros(0, dtype=torch.float64))

    def _fit(self, z: torch.Tensor, y: torch.Tensor) -> None:
        p = z.softmax(dim=1)
        n, c = p.shape
        xs, ys = torch.zeros(c, n + 2, dtype=torch.float64), torch.zeros(c, n + 2, dtype=torch.float64)
        for k in range(c):
            order = p[:, k].argsort()
            fit = pool_adjacent_violators((y[order] == k).double())
            xs[k] = torch.cat([torch.zeros(1, dtype=torch.float64), p[order, k], torch.ones(1, dtype=torch.float64)])
            ys[k] = torch.cat([fit[:1], fit, fit[-1:]])
        self.knots_x, self.knots_y = xs, ys

    def _calibrate(self, z: torch.Tensor) -> torch.Tensor:
        p = z.softmax(dim=1)
        xs, ys = self.knots_x.to(z.device).double(), self.knots_y.to(z.device).double()
        cols = [interp(p[:, k], xs[k], ys[k]) for k in range(p.shape[1])]
        return _probs_to_logits(torch.stack(cols, dim=1).clamp(min=self.floor))


class CalibratedModel(nn.Module):
    """``forward(x) = calibrator(model(x))``: the model (``inner``, never changed) followed by a fitted calibrator.
    ``x (N, *sample) -> (N, C)`` calibrated logits; gradients flow through the differentiable calibrators."""

    def __init__(self, model: nn.Module, calibrator: Calibrator) -> None:
        super().__init__()
        self.inner = model
        self.calibrator = calibrator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.calibrator(self.inner(x))


def calibrate(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, method: str = "temperature", *,
              batch_size: int = 256, **options: object) -> CalibratedModel:
    """Fit the calibrator ``method`` (a :data:`CALIBRATORS` name, with its ``options``) on the held-out
    ``x_val (N, *sample)``, ``y_val (N,)`` and wrap ``model`` with it. The model runs frozen (never mutated).
    UnknownNameError for an unknown method; InputError for bad data. Device: the calibrator (``N x C``
    logits, cheap) is fitted on the CPU, then placed on the model's device (it is fortify's own module; the
    model is never moved), so the wrapped model lives on one device."""
    from fortify.models.state import device_of

    cal = CALIBRATORS.create(method, **options)
    z = predict_logits(model, x_val, batch_size)
    fitted = cal.fit(z.detach().cpu(), y_val.cpu())
    return CalibratedModel(model, fitted.to(device_of(model) or z.device))


__all__ = ["CALIBRATORS", "CalibratedModel", "Calibrator", "DirichletCalibration", "HistogramBinning",
           "IsotonicCalibration", "MatrixScaling", "TemperatureScaling", "VectorScaling", "calibrate", "interp",
           "pool_adjacent_violators"]
