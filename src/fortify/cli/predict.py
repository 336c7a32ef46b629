"""``fortify predict MODEL --data X.npy --mips NAME``: a saved model's top-k classes through a MIPS index over its
output layer, with the measured recall and speed against the exact head."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fortify.cli.base import UsageError, add_device_option, check_device_flag, register_verb
from fortify.errors import DataFileError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import nn

    from fortify.mips.head import FastHead
    from fortify.timing import SpeedUp


def read_inputs(path: str) -> Any:
    """Inputs ``x (N, ...)`` from a ``.npy`` file or an ``.npz`` file (key ``x``, ``x_test`` or its only array);
    never unpickles. DataFileError for a missing or unreadable file."""
    import zipfile

    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"data file {path!r} does not exist")
    try:
        with open(p, "rb") as fh:
            obj = np.load(fh, allow_pickle=False)
            if isinstance(obj, np.lib.npyio.NpzFile):
                keys = [k for k in ("x", "x_test") if k in obj.files] or (obj.files if len(obj.files) == 1 else [])
                if not keys:
                    raise DataFileError(f"data file {path!r} has arrays {obj.files}; name the inputs 'x'")
                return np.asarray(obj[keys[0]])
            return np.asarray(obj)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"cannot read data file {path!r} (.npy or .npz expected): {exc}") from None


def head_features(model: Any, x: Any) -> tuple[Any, Any]:
    """``(last nn.Linear, its inputs (N, in) as a CPU numpy array)`` for ``x (N, ...)`` through ``model`` (a forward
    hook; model frozen, never moved: ``x`` goes to the model's device, the features come back to the CPU)."""
    import torch
    from torch import nn

    from fortify.errors import InputError, UnsupportedLayerError
    from fortify.models.state import device_of, frozen

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnsupportedLayerError("the model has no nn.Linear output layer to search")
    head = linears[-1]
    got: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inp, _out: got.append(inp[0].detach().reshape(inp[0].shape[0], -1)))
    try:
        xt = torch.as_tensor(x, dtype=torch.float32, device=device_of(model))
        with frozen(model), torch.no_grad():
            try:
                model(xt)
            except RuntimeError as exc:
                raise InputError(f"the model cannot run on inputs of shape {tuple(xt.shape)}: "
                                 f"{str(exc).splitlines()[0]}") from None
    finally:
        handle.remove()
    if not got:
        raise UnsupportedLayerError("the model's last nn.Linear was not called in its forward pass")
    return head, torch.cat(got).cpu().numpy()


@register_verb
class PredictVerb:
    """``fortify predict MODEL --data X --mips NAME [--k K --budget B]``."""

    name: ClassVar[str] = "predict"
    help: ClassVar[str] = ("top-k classes of a saved model through a MIPS index over its output layer, with "
                           "recall and speed against the exact head")
    description = (
        "Load MODEL, run it on the inputs of --data (.npy, or .npz with key 'x') up to its last linear layer, and "
        "predict the top --k classes with the MIPS index --mips built over that layer's weights and bias (the bias "
        "as an extra dimension). Prints the top-k of the first rows and the measured recall@k against the exact "
        "head, inner products per row and the speed-up. Example: fortify predict model.safetensors --data x.npy "
        "--mips ivf --k 5 --budget 4. The model runs on --device; the index, the exact head it is compared with "
        "and the timings run on the CPU (the index is numpy code; both sides of the speed-up on the same device).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from fortify.mips import INDEXES

        parser.add_argument("model", metavar="MODEL", help="a saved model (.safetensors, or .pt with --architecture)")
        parser.add_argument("--data", metavar="PATH", required=True, help="inputs: .npy or .npz (key 'x')")
        parser.add_argument("--mips", metavar="NAME", default="ivf", help=f"index, of: {', '.join(INDEXES.names())}")
        parser.add_argument("--k", type=int, default=5, help="classes per row (default 5)")
        parser.add_argument("--budget", type=int, default=None, help="the index's budget (default: its own)")
        parser.add_argument("--show", type=int, default=5, help="rows whose top-k is printed (default 5)")
        add_device_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        import copy

        from fortify.mips import INDEXES
        from fortify.mips.head import FastHead
        from fortify.models.io import load
        from fortify.train.device import default_device

        if args.k < 1:
            raise UsageError(f"predict: --k must be a positive integer, got {args.k}")
        if args.budget is not None and args.budget < 1:
            raise UsageError(f"predict: --budget must be a positive integer, got {args.budget}")
        device = check_device_flag(args) or default_device()
        INDEXES.get(args.mips)
        model = load(args.model, device=device)  # fortify's own copy of the file, built on the device
        layer, feats = head_features(model, read_inputs(args.data))
        layer = copy.deepcopy(layer).cpu()  # the index is CPU (numpy) code: a CPU copy of the head, fortify's own
        fast = FastHead(layer, args.mips)
        cmp = fast.compare(feats, args.k, args.budget, exact_head=layer, repeats=1)
        ids, logits = fast(feats, args.k, args.budget)
        speed = _speed(fast, layer, feats, args.k, args.budget)
        out = Console()
        for i in range(min(args.show, ids.shape[0])):
            cells = ", ".join(f"{c}:{v:.3g}" for c, v in zip(ids[i].tolist(), logits[i].tolist()))
            out.print(f"row {i}: {cells}", highlight=False, markup=False, soft_wrap=True)
        out.print(f"{args.mips}: recall@{args.k} {cmp.recall:.4f} vs the exact head on {ids.shape[0]} rows; "
                  f"{cmp.inner_products:.0f} inner products per row of {cmp.classes} classes; "
                  f"against the exact head (its nn.Linear + top-k): {speed.text()}", highlight=False, markup=False,
                  soft_wrap=True)
        return 0


def _speed(fast: "FastHead", layer: "nn.Linear", feats: "np.ndarray", k: int, budget: int | None) -> "SpeedUp":
    """The fast head vs the model's own layer + top-k on the same rows: interleaved rounds, medians, a 95%
    bootstrap interval (:func:`fortify.timing.compare`); a speed-up is printed only when the interval excludes 1."""
    import torch

    from fortify.timing import compare

    x = torch.from_numpy(feats)

    def exact() -> None:
        with torch.no_grad():
            torch.topk(layer(x), k, dim=1)

    return compare(exact, lambda: fast(feats, k, budget))
