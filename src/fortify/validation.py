"""Input validation shared by every pillar: the one place that turns bad tensors and arguments into typed errors.

Every public entry point (``Attack.__call__``, ``Certifier.__call__``, ``Transform.__call__``,
``Task.__call__``, the compression data checks, the evaluation cascade) runs the same checks, so the
same mistake gives the same error type and wording everywhere:

* ``x``: a floating tensor ``(N, *sample_shape)`` with ``N >= 1``, finite, inside the declared input
  bounds (the threat model's, or ``[0, 1]`` pixel space for compression). The sample shape is the
  one the model declares (``model.fortify_arch["in_shape"]``, looking through ``Normalized``), else
  what its first layer implies (``Conv2d`` -> ``(C, H, W)`` with ``C = in_channels``, ``Linear`` ->
  ``(in_features,)``); nothing is hard-coded, so tabular and 1-D models work the same way. A shape
  the model still rejects at its first forward pass becomes an :class:`InputError` naming the shape
  given and the one expected, never a raw torch ``RuntimeError``.
* dtype policy (one rule, everywhere): ``x`` must have the model's floating dtype (its first
  floating parameter or buffer; float32 for fortify's models). float64 (or float16) input to a
  float32 model is **refused** with an :class:`InputError` telling the caller to cast; fortify never
  casts silently, so results are computed in the precision the caller chose and ``x_adv`` keeps the
  caller's dtype. A float64 model (``model.double()``) takes float64 input.
* ``y``: an integer tensor of shape ``(N,)`` (same N as ``x``) with values in ``[0, num_classes)``.
* constructor keyword arguments of anything built from a registry: :func:`check_kwargs` names the
  unknown keys and the allowed ones (:class:`ConfigError`), via ``inspect.signature``.
* resources: :func:`check_threads` bounds a thread count by the machine, :func:`resource_guard` turns
  ``MemoryError`` / out-of-memory into one-line :class:`ResourceError`.

Cost: the tensor checks are one pass over ``x`` (``isfinite``, ``min``, ``max``); the model probe is a
single forward pass of one sample in eval mode without gradients, the model's flags restored.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
import os
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar, Union

import torch
from torch import nn

from fortify.errors import ConfigError, InputError, ResourceError

#: attribute holding a model's architecture record (mirrors ``fortify.models.registry.ARCH_ATTR``;
#: read here by name so this module imports nothing from the pillars)
_ARCH_ATTR = "fortify_arch"
#: hard cap of :func:`check_threads`, and the factor over the core count
MAX_THREADS = 1024
THREADS_PER_CORE = 4
#: exceptions a model's forward raises on a shape or dtype it does not take
_FORWARD_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)

SampleShape = tuple["int | None", ...]
#: input bounds: scalars ``(lo, hi)`` or per-feature tensors broadcastable to one example's shape
Bounds = Union[tuple[float, float], tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------------------------- tensors
def check_images(x: object, bounds: Bounds = (0.0, 1.0), *, name: str = "x") -> torch.Tensor:
    """Validate a batch of inputs: a floating tensor ``(N, ...)`` with N >= 1, finite, inside ``bounds``
    (scalars, or per-feature tensors that must broadcast to one example's shape)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise InputError(f"{name} must be batched with shape (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    # one fused pass and one device sync: NaN propagates through aminmax, inf shows as an extreme
    xmin, xmax = (float(v) for v in torch.stack(torch.aminmax(x.detach())).tolist())
    if not (math.isfinite(xmin) and math.isfinite(xmax)):
        raise InputError(f"{name} contains NaN or inf values")
    lo, hi = bounds
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        return _check_per_feature(x, lo, hi, name)
    if xmin < lo - 1e-6 or xmax > hi + 1e-6:
        raise InputError(f"{name} values must lie in [{lo:g}, {hi:g}], found [{xmin:.4g}, {xmax:.4g}]")
    return x


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without changing it."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(tuple(shape)), reversed(tuple(target))))


def _check_per_feature(x: torch.Tensor, lo: object, hi: object, name: str) -> torch.Tensor:
    """InputError unless ``x (N, ...)`` lies in per-feature ``[lo, hi]`` (tensors broadcastable to one
    example's shape, 1e-6 slack); the message names the first feature outside and its range."""
    sample = torch.Size(x.shape[1:])
    lo_t, hi_t = (torch.as_tensor(b, dtype=torch.float64) for b in (lo, hi))
    for t in (lo_t, hi_t):
        if not broadcasts_to(t.shape, sample):
            raise InputError(f"per-feature bounds of shape {tuple(t.shape)} do not fit {name}'s example shape "
                             f"{tuple(sample)}")
    xd = x.detach().to(torch.float64)
    lo_b, hi_b = (torch.broadcast_to(t.to(x.device), sample) for t in (lo_t, hi_t))
    bad = ((xd < lo_b - 1e-6) | (xd > hi_b + 1e-6)).reshape(x.shape[0], -1).any(dim=0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        col = xd.reshape(x.shape[0], -1)[:, i]
        low, high = float(lo_b.reshape(-1)[i]), float(hi_b.reshape(-1)[i])
        raise InputError(f"{name} values must lie in the per-feature bounds: feature {i} must be in "
                         f"[{low:g}, {high:g}], found [{float(col.min()):.4g}, {float(col.max()):.4g}]")
    return x


def check_labels(y: object, n: int, num_classes: int | None = None, *, name: str = "y") -> torch.Tensor:
    """Validate integer labels of shape ``(n,)`` in ``[0, num_classes)``; returns them as int64."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise InputError(f"{name} must be an integer tensor, got dtype {y.dtype}")
    if y.dim() == 1 and y.shape[0] != n:
        raise InputError(f"{name} has {y.shape[0]} labels but x has {n} rows; expected shape ({n},)")
    if y.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise InputError(f"{name} contains negative labels (min {int(y.min())})")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise InputError(f"{name} contains label {int(y.max())} but the model has {num_classes} classes "
                         f"(labels must be in [0, {num_classes}))")
    return y.long()


def check_logits(out: object, n: int) -> torch.Tensor:
    """Validate a model's output: a floating tensor ``(n, C)`` with ``C >= 2``."""
    if not isinstance(out, torch.Tensor):
        raise InputError(f"model must return a tensor of logits, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != n or out.shape[1] < 2:
        raise InputError(f"model must return logits of shape ({n}, C) with C >= 2, got {tuple(out.shape)}")
    return out


# ---------------------------------------------------------------------------------------------- model
def _unwrap(model: nn.Module) -> nn.Module:
    """The module that declares the input (``Normalized.inner``, a wrapper's ``.module``)."""
    for attr in ("inner", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module) and getattr(model, _ARCH_ATTR, None) is None:
            return _unwrap(inner)
    return model


def _first_layer(model: nn.Module) -> nn.Module | None:
    """The first module a Sequential applies (recursing into nested Sequentials), else None."""
    while isinstance(model, nn.Sequential) and len(model):
        model = model[0]
    return None if isinstance(model, nn.Sequential) else model


def expected_input_shape(model: nn.Module) -> SampleShape | None:
    """Per-sample shape the model declares; ``None`` entries are free, ``None`` overall if unknown.

    From the architecture record ``in_shape`` when there is one (fortify's models); else from the
    first layer of a Sequential: ``Conv2d`` -> ``(in_channels, None, None)``, ``Conv1d`` ->
    ``(in_channels, None)``, ``Linear`` -> ``(in_features,)``; a ``Normalized`` wrapper without a
    record gives ``(channels, None, None)``.
    """
    target = _unwrap(model)
    record = getattr(target, _ARCH_ATTR, None)
    if isinstance(record, Mapping) and isinstance(record.get("in_shape"), Sequence):
        return tuple(int(v) for v in record["in_shape"])
    first = _first_layer(target)
    if isinstance(first, nn.Conv2d):
        return (int(first.in_channels), None, None)
    if isinstance(first, nn.Conv1d):
        return (int(first.in_channels), None)
    if isinstance(first, nn.Linear):
        return (int(first.in_features),)
    mean = getattr(model, "mean", None)
    if target is not model and isinstance(mean, torch.Tensor) and mean.dim() == 4:
        return (int(mean.shape[1]), None, None)
    return None


def _shape_text(shape: SampleShape) -> str:
    return "(N, " + ", ".join("?" if v is None else str(v) for v in shape) + ")"


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter or buffer (None if it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def check_model_input(model: nn.Module, x: torch.Tensor, *, name: str = "x") -> SampleShape | None:
    """Check ``x``'s rank, sample shape and dtype against what ``model`` declares (InputError if not).

    Returns the declared sample shape (see :func:`expected_input_shape`), ``None`` when unknown.
    """
    expected = expected_input_shape(model)
    if expected is not None:
        got = tuple(x.shape[1:])
        fits = len(got) == len(expected) and all(e is None or e == g for e, g in zip(expected, got))
        if not fits:
            raise InputError(f"{name} has shape {tuple(x.shape)} but the model expects {_shape_text(expected)}")
    dtype = model_dtype(model)
    if dtype is not None and x.dtype != dtype:
        raise InputError(
            f"{name} has dtype {x.dtype} but the model computes in {dtype}; fortify never casts silently, "
            f"cast it first (.to({dtype}))"
        )
    return expected


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def forward_checked(model: nn.Module, x: torch.Tensor, *, name: str = "x",
                    shown_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``model(x)``, with an error the model raises on a shape or dtype it cannot take turned into
    :class:`InputError` naming the shape given and the one expected where the model declares it.
    Out-of-memory becomes :class:`ResourceError`. Runs under the caller's grad mode and flags.
    ``shown_shape``: the shape to name in messages (the whole batch when ``x`` is a slice of it)."""
    shape = tuple(shown_shape) if shown_shape is not None else tuple(x.shape)
    try:
        out: torch.Tensor = model(x)
        return out
    except _FORWARD_ERRORS as exc:
        if _is_oom(exc):
            raise ResourceError(f"out of memory running the model on {name} of shape {shape}") from None
        expected = expected_input_shape(model)
        want = f"; the model expects {_shape_text(expected)}" if expected is not None else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"the model rejects {name} of shape {shape} ({first}){want}") from None


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients for the duration; every module's ``training`` flag restored.

    The same restore as :func:`fortify.models.state.eval_mode`, written out here because this kernel
    module sits below ``fortify.models`` (importing it would run the models package, and with it the
    registries, from every validation call site)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        with torch.no_grad():
            yield
    finally:
        for m, flag in modes:
            m.training = flag


#: per model, the (sample shape, dtype) pairs already probed -> number of classes
_PROBED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], int]]" = weakref.WeakKeyDictionary()


def probe_num_classes(model: nn.Module, x: torch.Tensor, *, name: str = "x", cache: bool = False) -> int:
    """Number of classes the model outputs for one sample of ``x`` (a forward pass of ``x[:1]`` in eval
    mode without gradients, flags restored; batch-norm statistics untouched). Shape errors become
    InputError (see :func:`forward_checked`). With ``cache``, a model and sample shape probed once
    are not probed again (for per-step entry points such as training tasks)."""
    key = (tuple(x.shape[1:]), x.dtype, x.device)
    if cache:
        seen = _PROBED.get(model)
        if seen is not None and key in seen:
            return seen[key]
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _eval_no_grad(model):
        logits = check_logits(forward_checked(model, x[:1].detach(), name=name, shown_shape=tuple(x.shape)), 1)
    classes = int(logits.shape[1])
    if cache:
        try:
            _PROBED.setdefault(model, {})[key] = classes
        except TypeError:  # pragma: no cover - a module that cannot be weakly referenced
            pass
    return classes


def check_batch(model: object, x: object, y: object, bounds: Bounds, *, x_name: str = "x",
                y_name: str = "y", cache: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The full check of one ``(model, x, y)`` call: model type, ``x`` (dtype, rank, finite, bounds,
    sample shape, device), a one-sample probe for the class count, then ``y``.

    Returns ``(x, y as int64 on x's device, num_classes)``. The model is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_images(x, bounds, name=x_name)
    check_device(model, x, name=x_name)
    check_model_input(model, x, name=x_name)
    classes = probe_num_classes(model, x, name=x_name, cache=cache)
    return x, check_labels(y, x.shape[0], classes, name=y_name).to(x.device), classes


def model_device(model: nn.Module, what: str = "model") -> torch.device | None:
    """The one device of ``model``'s parameters and buffers (``None`` for a stateless model); ConfigError
    naming both devices when they are split over several (fortify runs a model on one device and never
    moves it)."""
    first: torch.device | None = None
    for t in list(model.parameters()) + list(model.buffers()):
        if first is None:
            first = t.device
        elif t.device != first:
            raise ConfigError(f"the {what} has parameters or buffers on {first} and on {t.device}; put the whole "
                              f"model on one device (model.to(...)) before handing it to fortify")
    return first


def check_device(model: nn.Module, x: torch.Tensor, *, name: str = "x") -> None:
    """InputError if ``x`` is not on the model's device; ConfigError naming both devices if the model's
    parameters and buffers are split over several devices (:func:`model_device`; fortify never moves the model)."""
    dev = model_device(model)
    if dev is not None and dev != x.device:
        raise InputError(f"{name} is on {x.device} but the model is on {dev}; fortify never moves the model")


def generator_for(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` when it draws on ``device`` (or is None); else a new generator on ``device`` seeded by one
    draw from ``generator`` (deterministic: the same generator state gives the same stream). Lets a caller
    pass one CPU ``torch.Generator().manual_seed(s)`` whatever the device of the data (torch refuses a CPU
    generator for a CUDA draw)."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def check_pair(data: object, *, name: str = "data", bounds: Bounds = (0.0, 1.0),
               num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a dataset pair ``(x (N, ...), y (N,))``: the tensor checks of :func:`check_images` and
    :func:`check_labels` (batch sizes must match; labels below ``num_classes`` when given)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InputError(f"{name} must be a pair (x, y) of tensors, got {type(data).__name__}")
    x = check_images(data[0], bounds, name=f"{name} x")
    return x, check_labels(data[1], x.shape[0], num_classes, name=f"{name} y")


# ---------------------------------------------------------------------------------------------- arguments
def _accepted(target: Callable[..., Any]) -> tuple[list[str], bool]:
    """Keyword names ``target`` accepts, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_kwargs(target: Callable[..., Any], kwargs: Mapping[str, Any], *, what: str) -> None:
    """ConfigError if ``kwargs`` has keys ``target`` does not accept or misses required ones.

    The message names ``what`` (e.g. ``attack 'square'``), the bad keys, the closest allowed name
    and every allowed one. ``target`` is a class (its ``__init__`` is inspected) or a function.
    """
    allowed, var_kw = _accepted(target)
    if var_kw:
        return
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        hints = [m for k in unknown for m in difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.5)]
        hint = f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else ""
        names = ", ".join(allowed) or "(none)"
        raise ConfigError(f"{what} got unknown argument(s) {', '.join(map(repr, unknown))}{hint}; allowed: {names}")
    params = inspect.signature(target).parameters.values()
    missing = [p.name for p in params if p.default is p.empty and p.kind is p.KEYWORD_ONLY and p.name not in kwargs]
    missing += [p.name for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
                and p.name not in kwargs]
    if missing:
        raise ConfigError(f"{what} needs argument(s) {', '.join(map(repr, missing))}")


F = TypeVar("F", bound=Callable[..., Any])


def strict_keywords(what: str) -> Callable[[F], F]:
    """Decorator: an unknown keyword argument of the decorated function is a ConfigError naming the
    allowed ones (``what`` names the function in the message), not Python's bare TypeError."""

    def wrap(fn: F) -> F:
        allowed, var_kw = _accepted(fn)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            unknown = [k for k in kwargs if k not in allowed]
            if unknown and not var_kw:
                check_kwargs(fn, {k: None for k in kwargs}, what=what)
            return fn(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return wrap


def build(target: Callable[..., Any], kwargs: Mapping[str, Any], *, what: str) -> Any:
    """``target(**kwargs)`` after :func:`check_kwargs`."""
    check_kwargs(target, kwargs, what=what)
    return target(**kwargs)


# ---------------------------------------------------------------------------------------------- resources
def thread_limit(cores: int | None = None) -> int:
    """The largest thread count :func:`check_threads` accepts: ``min(4 x cores, 1024)``."""
    n = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(THREADS_PER_CORE * n, MAX_THREADS))


def check_threads(value: object, *, name: str = "threads", cores: int | None = None) -> int:
    """A thread count in ``[1, thread_limit()]`` (bools and non-integers refused); ConfigError otherwise.

    ``cores`` defaults to ``os.cpu_count()``; the message says how many cores the machine has.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    limit = thread_limit(cores)
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
    if value > limit:
        have = cores if cores is not None else (os.cpu_count() or 1)
        raise ConfigError(f"{name}={value} is beyond this machine ({have} cores); use at most {limit}")
    return int(value)


@contextmanager
def resource_guard(what: str) -> Iterator[None]:
    """Turn ``MemoryError`` and out-of-memory errors raised inside into one-line :class:`ResourceError`.

    ``what`` names the work (``"training"``, ``"loading mnist"``) in the message.
    """
    try:
        yield
    except MemoryError:
        raise ResourceError(f"out of memory while {what}; use a smaller batch, dataset or thread count") from None
    except RuntimeError as exc:
        if not _is_oom(exc):
            raise
        raise ResourceError(f"out of memory while {what}; use a smaller batch, dataset or thread count") from None


def check_finite_number(value: object, name: str, *, error: type[ConfigError] = ConfigError) -> float:
    """A finite real number; bools, strings and one-element bool tensors are refused (``error``,
    a ConfigError type, otherwise). Python, numpy and one-element torch numbers are accepted."""
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_" or (
        isinstance(value, torch.Tensor) and value.dtype == torch.bool)
    if is_bool or isinstance(value, (str, bytes)):
        raise error(f"{name} must be a number, got {type(value).__name__} {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise error(f"{name} must be finite, got {value!r}")
    return out


__all__ = [
    "MAX_THREADS", "Bounds", "broadcasts_to", "build", "check_batch", "check_device", "check_finite_number", "check_images", "check_kwargs",
    "check_labels", "check_logits", "check_model_input", "check_pair", "check_threads", "expected_input_shape",
    "forward_checked", "generator_for", "model_device", "model_dtype", "probe_num_classes", "resource_guard", "strict_keywords", "thread_limit",
]
