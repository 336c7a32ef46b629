"""Safe model files: one ``.safetensors`` file whose header carries fortify's JSON metadata.

Safetensors (Hugging Face, https://github.com/huggingface/safetensors) stores raw tensors behind a
JSON header, so loading a file never executes code (unlike pickle-based ``torch.save``). fortify
puts its own record under the header key ``"fortify"`` of ``__metadata__``::

    {"format": "fortify.model", "format_version": 1,
     "architecture": {"name": "mlp", "args": {...}}, "in_shape": [1, 28, 28], "num_classes": 10,
     "normalization": {"mean": [...], "std": [...]} | null,
     "dataset": ..., "training": ..., "fortify_version": "0.1.0", "user": {...}}

``save`` folds ``torch.nn.utils.prune`` masks into the weights and refuses a model whose layers no
longer match its architecture record, so every file it writes can be loaded. ``load`` rebuilds the
module from :data:`fortify.models.MODELS` and loads the state dict strictly.
Legacy ``.pt``/``.pth`` files are accepted only as plain state dicts read with
``torch.load(weights_only=True)`` plus an explicit ``architecture=``. Every failure is a
:class:`fortify.errors.ModelFileError` with one clear message.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fortify.io import write_atomic
from fortify.errors import ConfigError, FortifyError, ModelFileError
from fortify.models.normalized import Normalized
from fortify.models.factory import is_factory_record, rebuild
from fortify.models.registry import architecture, create

FORMAT = "fortify.model"
FORMAT_VERSION = 1
_META_KEY = "fortify"
_MAX_HEADER = 100 * 1024 * 1024
_TORCH_SUFFIXES = (".pt", ".pth")


def _fortify_version() -> str:
    import fortify

    return str(getattr(fortify, "__version__", "unknown"))


def save(model: nn.Module, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (weights + metadata) to a single ``.safetensors`` file, atomically.

    Args:
        model: a model built by :func:`fortify.models.create`, optionally wrapped in
            :class:`Normalized` (its mean/std are recorded as ``normalization``).
        path: destination; written to a temporary file in the same folder, then ``os.replace``-d,
            so readers never see a half-written file.
        meta: free-form JSON-serialisable dict; the keys ``dataset`` and ``training`` are lifted to
            the top level of the record, the rest is kept under ``user``.
    Returns:
        The path written.
    Raises:
        ConfigError if the model has no architecture record or ``meta`` is not JSON-serialisable;
        OutputError if the destination cannot be written.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save needs an nn.Module, got {type(model).__name__}")
    arch = architecture(model)
    if arch is None:
        raise ConfigError(
            f"cannot save {type(model).__name__}: it carries no architecture record; build it with "
            "fortify.models.create(name, ...) (optionally wrapped in Normalized) so it can be rebuilt on load"
        )
    user = dict(meta or {})
    if not all(isinstance(k, str) for k in user):
        raise ConfigError("meta keys must be strings")
    normalization = None
    if isinstance(model, Normalized):
        normalization = {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"name": arch["name"], "args": arch["args"],
                         **({"factory": arch["factory"]} if is_factory_record(arch) else {})},
        "in_shape": arch["in_shape"],
        "num_classes": arch["num_classes"],
        "normalization": normalization,
        "dataset": user.pop("dataset", None),
        "training": user.pop("training", None),
        "fortify_version": _fortify_version(),
        "user": user,
    }
    try:
        header = json.dumps(record, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"meta must be JSON-serialisable: {exc}") from None
    from safetensors.torch import save as st_save

    tensors = _effective_state(model)
    _check_structure(tensors, arch, normalization)
    blob = st_save(tensors, metadata={_META_KEY: header})
    return write_atomic(path, blob, what="model file", fsync=True)


def _effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the state dict with ``torch.nn.utils.prune`` reparametrisations folded in.

    A pruned module stores ``weight_orig`` and ``weight_mask``; the saved ``weight`` is their product
    (exactly the weight the pruned model uses), so the file loads into the plain architecture.
    """
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    for key in [k for k in state if k.endswith("_orig")]:
        base = key[: -len("_orig")]
        if base + "_mask" in state:
            state[base] = state.pop(key) * state.pop(base + "_mask")
    return {k: v.contiguous().clone() for k, v in state.items()}


def _check_structure(state: Mapping[str, torch.Tensor], arch: Mapping[str, Any], normalization: Any) -> None:
    """Refuse to write a file that :func:`load` could not rebuild (e.g. a layer was replaced)."""
    if is_factory_record(arch):  # the user's factory, called again as load will (it was just run to build the model)
        ref = rebuild(arch, arch.get("in_shape"), arch.get("num_classes"), trust_factory=True, where="the model")
        if normalization is not None:
            ref = Normalized(ref, normalization["mean"], normalization["std"])
        expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        if expected != {k: tuple(v.shape) for k, v in state.items()}:
            raise ConfigError(f"the model no longer matches what its factory {arch['factory']!r} builds "
                              f"({shape_mismatch(dict((k, tuple(v.shape)) for k, v in state.items()), expected)})")
        return
    with torch.device("meta"):
        ref = create(arch["name"], in_shape=tuple(arch["in_shape"]), num_classes=arch["num_classes"], **arch["args"])
        if normalization is not None:
            ref = Normalized(ref, normalization["mean"], normalization["std"])
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        raise ConfigError(
            f"the model no longer matches its architecture record {arch['name']!r} {arch['args']} "
            f"({shape_mismatch(actual, expected, source='the model')}); rebuild it with fortify.models.create(...) "
            "using the new widths "
            "and copy the weights before saving"
        )


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from None


def _parse_header(blob: bytes, path: Path) -> dict[str, Any]:
    """Validate the safetensors framing (8-byte little-endian length + JSON) and return the header."""
    if len(blob) < 8:
        raise ModelFileError(f"{path}: not a safetensors file (only {len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n == 0 or n > _MAX_HEADER or 8 + n > len(blob):
        raise ModelFileError(f"{path}: not a safetensors file or truncated (header length {n}, file {len(blob)} bytes)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header


def _meta_from_header(header: dict[str, Any], path: Path) -> dict[str, Any]:
    """Extract and validate fortify's JSON record from a parsed safetensors header."""
    header_meta = header.get("__metadata__")
    raw = header_meta.get(_META_KEY) if isinstance(header_meta, dict) else None
    if raw is None:
        raise ModelFileError(
            f"{path}: safetensors file without fortify metadata (was it written by fortify.models.save?)"
        )
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: corrupt fortify metadata in the safetensors header") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: metadata is not a {FORMAT} record")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: unsupported format_version {meta.get('format_version')!r} (expected {FORMAT_VERSION})"
        )
    return meta


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the fortify metadata record of a ``.safetensors`` model file (without loading weights)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            blob = head + fh.read(min(n, _MAX_HEADER + 1))
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {p}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {p}: {exc}") from None
    if n + 8 > p.stat().st_size:
        raise ModelFileError(f"{p}: not a safetensors file or truncated")
    return _meta_from_header(_parse_header(blob, p), p)


def _build_factory(arch: Mapping[str, Any], in_shape: Any, num_classes: Any, normalization: Any,
                   state: Mapping[str, torch.Tensor], path: Path, trust_factory: bool) -> nn.Module:
    """Rebuild a model recorded with a user factory (only with ``trust_factory``: it runs the user's code)."""
    try:
        model = rebuild(arch, in_shape, num_classes, trust_factory=trust_factory, where=str(path))
        if normalization is not None:
            model = Normalized(model, normalization["mean"], normalization["std"])
    except ConfigError as exc:
        raise ModelFileError(str(exc)) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        raise ModelFileError(f"{path}: weights do not match what the factory {arch['factory']!r} builds: "
                             f"{shape_mismatch(actual, expected)}")
    return model


def _build(
    arch: object, in_shape: Any, num_classes: Any, normalization: Any,
    state: Mapping[str, torch.Tensor], path: Path, trust_factory: bool = False,
) -> nn.Module:
    """Rebuild the (optionally Normalized) module described by a record; errors become ModelFileError.

    The module is first built on the ``meta`` device (no memory) and its parameter shapes compared
    with the tensors in the file, so a record asking for absurd widths never allocates anything.
    """
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise ModelFileError(f"{path}: missing or malformed architecture record")
    if is_factory_record(arch):
        return _build_factory(arch, in_shape, num_classes, normalization, state, path, trust_factory)
    args = arch.get("args") or {}
    if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        raise ModelFileError(f"{path}: architecture args must be a mapping with string keys")
    shape = tuple(in_shape) if isinstance(in_shape, (list, tuple)) else in_shape

    def make() -> nn.Module:
        model = create(arch["name"], in_shape=shape, num_classes=num_classes, **dict(args))
        if normalization is not None:
            model = Normalized(model, normalization["mean"], normalization["std"])
        return model

    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in make().state_dict().items()}
        actual = {k: tuple(v.shape) for k, v in state.items()}
        if expected != actual:
            raise ModelFileError(f"{path}: weights do not match the architecture {arch['name']!r}: "
                                 f"{shape_mismatch(actual, expected)}")
        return make()
    except ModelFileError:
        raise
    except FortifyError as exc:
        raise ModelFileError(f"{path}: cannot rebuild architecture {arch['name']!r}: {exc}") from None
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: malformed architecture/normalization record: {exc}") from None


def shape_mismatch(in_file: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                   limit: int = 3, *, source: str = "the file") -> str:
    """Say how the tensors of a file differ from those an architecture expects, file shape first:
    ``tensor '1.weight' is (300, 784) in the file, the architecture expects (6, 1, 5, 5); ...``."""
    parts = []
    for k in sorted(set(in_file) & set(expected)):
        if tuple(in_file[k]) != tuple(expected[k]):
            parts.append(f"tensor {k!r} is {tuple(in_file[k])} in {source}, the architecture expects "
                         f"{tuple(expected[k])}")
    missing = sorted(set(expected) - set(in_file))
    extra = sorted(set(in_file) - set(expected))
    if missing:
        parts.append(f"{source} lacks {', '.join(repr(k) for k in missing[:limit])}"
                     f"{f' (+{len(missing) - limit} more)' if len(missing) > limit else ''}")
    if extra:
        parts.append(f"the architecture has no {', '.join(repr(k) for k in extra[:limit])}"
                     f"{f' (+{len(extra) - limit} more)' if len(extra) > limit else ''}")
    more = len(parts) - limit
    shown = parts if more <= 0 else [*parts[:limit], f"{more} more difference{'s' if more > 1 else ''}"]
    return "; ".join(shown)


def check_finite_weights(state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Refuse a state dict with a NaN or infinite value, naming the first such tensor and its counts.

    Non-finite weights (a diverged training run, a corrupt file) make every prediction NaN and every
    metric meaningless, so they fail at load instead of giving figures. Cost: one pass over the weights."""
    for name, t in state.items():
        if not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        what = " and ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "infinite")) if n)
        raise ModelFileError(f"{path}: tensor {name!r} has {what} value{'s' if nan + inf > 1 else ''} "
                             f"(of {t.numel()}); refusing a model with non-finite weights (did its training diverge?)")


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    try:
        model.load_state_dict(dict(state), strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ModelFileError(f"{path}: weights do not match the architecture: {detail}") from None
    model.eval()
    return model


def _torch_reason(exc: BaseException) -> str:
    """The informative line of torch's weights-only refusal (never its 'use weights_only=False' advice)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "WeightsUnpickler error: Unsupported")) or "GLOBAL" in ln:
            return ln.replace("WeightsUnpickler error: ", "")[:160]
    if lines and "weights_only" not in lines[0]:
        return lines[0][:160]
    return type(exc).__name__


def _load_torch_state_dict(path: Path, architecture_arg: str | Mapping[str, Any] | None) -> nn.Module:
    if architecture_arg is None:
        raise ModelFileError(
            f"{path}: .pt/.pth files hold no architecture; pass architecture='mlp' (or a dict with name, "
            "args, in_shape, num_classes), or re-save as .safetensors with fortify.models.save"
        )
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means: refuse the file
        raise ModelFileError(
            f"{path}: refused: not a plain tensor state dict ({_torch_reason(exc)}); fortify never "
            "unpickles arbitrary objects -- re-export the weights with fortify.models.save"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError(f"{path}: expected a state dict mapping names to tensors")
    spec: dict[str, Any] = {"name": architecture_arg} if isinstance(architecture_arg, str) else dict(architecture_arg)
    normalization = None
    if "mean" in state and "std" in state and all(k in ("mean", "std") or k.startswith("inner.") for k in state):
        normalization = {"mean": state["mean"].flatten().tolist(), "std": state["std"].flatten().tolist()}
    check_finite_weights(state, path)
    model = _build(spec, spec.get("in_shape", (1, 28, 28)), spec.get("num_classes", 10), normalization, state, path)
    return _load_state(model, state, path)


def load(path: str | os.PathLike[str], *, architecture: str | Mapping[str, Any] | None = None,
         trust_factory: bool = False, device: str | torch.device | None = None) -> nn.Module:
    """Load a model file and return the rebuilt module in eval mode, on ``device`` (default CPU).

    Args:
        path: a ``.safetensors`` file written by :func:`save`, or a ``.pt``/``.pth`` plain state
            dict (read with ``torch.load(weights_only=True)``).
        architecture: only for ``.pt``/``.pth``: a registry name (defaults ``in_shape=(1, 28, 28)``,
            ``num_classes=10``) or a dict ``{"name", "args", "in_shape", "num_classes"}``. A state
            dict of a ``Normalized`` model (keys ``mean``, ``std``, ``inner.*``) is rewrapped.
        trust_factory: a file saved from :func:`fortify.models.factory_model` names a user factory
            (``package.module:function``); rebuilding it imports and runs that code, so such a file
            is refused (ModelFileError) unless this is True.
        device: where the rebuilt module lives (``cpu``, ``cuda``, ``cuda:N``, ``mps``; the tensors are read
            on the CPU, checked, then copied there, like ``torch.load(map_location=...)``). The module is
            fortify's own, so placing it is not moving a user's model. ConfigError when torch cannot use it.
    Returns:
        ``nn.Module`` mapping ``(N, *in_shape)`` to ``(N, num_classes)``; ``Normalized`` if the file
        records a normalisation.
    Raises:
        ModelFileError: missing, corrupt, truncated or hostile file, unknown architecture,
        weights that do not fit the architecture (the message gives the file's shape and the expected
        one), or a NaN/infinite weight (the message names the tensor). Nothing from the file is ever executed.
    """
    p = Path(path)
    if p.suffix.lower() in _TORCH_SUFFIXES:
        return _place(_load_torch_state_dict(p, architecture), device, p)
    blob = _read_file(p)
    meta = _meta_from_header(_parse_header(blob, p), p)
    from safetensors.torch import load as st_load

    try:
        state = st_load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(f"{p}: corrupt or truncated safetensors data ({exc})") from None
    check_finite_weights(state, p)
    model = _build(
        meta.get("architecture"), meta.get("in_shape"), meta.get("num_classes"), meta.get("normalization"), state, p,
        trust_factory,
    )
    return _place(_load_state(model, state, p), device, p)


def _place(model: nn.Module, device: str | torch.device | None, path: Path) -> nn.Module:
    """``model`` (just rebuilt from ``path``, fortify's own) on ``device``; ConfigError when torch cannot use it."""
    if device is None:
        return model
    try:
        return model.to(torch.device(device))
    except (RuntimeError, AssertionError, TypeError) as exc:  # torch built without CUDA raises AssertionError
        raise ConfigError(f"{path}: cannot load the model onto device {str(device)!r}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None


__all__ = ["FORMAT", "FORMAT_VERSION", "check_finite_weights", "load", "read_meta", "save", "shape_mismatch"]
