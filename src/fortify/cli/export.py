"""``fortify export MODEL --onnx``: write a saved model as ONNX (float or int8), verified with ONNX
Runtime against PyTorch (stages load, export, report; see :class:`fortify.pipeline.stages.compress.ExportStage`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar

from fortify.cli.base import UsageError, _quote, add_device_option, add_store_option, build_raw, register_verb
from fortify.cli.evaluate import model_overrides, run_model_verb
from fortify.errors import OutputError

EXPORT_STAGES = ("load", "export", "report")


def show_export(ctx: Any, quiet: bool) -> None:
    """Print the exported file, its size and the agreement on stdout (one line)."""
    from rich.console import Console

    from fortify.pipeline.results import ExportResult

    res = ctx.find("export", ExportResult)
    if res is None:
        return
    Console().print(f"{res.path}: {res.onnx_bytes:,} bytes, onnxruntime agrees with torch on "
                    f"{res.agreement:.2%} of {res.n_check} test images (max logit diff "
                    f"{res.max_abs_diff:.3g})", highlight=False, markup=False, soft_wrap=True)


@register_verb
class ExportVerb:
    """``fortify export MODEL --onnx [--out DIR|FILE.onnx] [--int8 dynamic|static]``."""
    name: ClassVar[str] = "export"
    help: ClassVar[str] = "export a saved model to ONNX (float or int8), verified with onnxruntime"
    description = (
        "Load MODEL and write it as ONNX (input x (N, C, H, W) in [0, 1] with a dynamic batch axis, output logits; "
        "the normalisation is part of the graph). With --int8 the ONNX model is quantized by ONNX Runtime "
        "(dynamic, or static calibrated on training images of --dataset). Before the file is written, ONNX "
        "Runtime is run on a batch of test images and compared with PyTorch (float: every logit within 1e-4; "
        "int8: same class on >= 99%); the file is written atomically and its size printed and recorded in the "
        "run store. Example: fortify export fortify-runs/<id>/model.safetensors --onnx --out exported "
        "(writes exported/model.onnx; --out model.onnx names the file)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, --onnx, --out DIR|FILE.onnx, --int8 and the common options."""
        parser.add_argument("model_path", metavar="MODEL", nargs="?", default=None,
                            help="model file (.safetensors written by fortify, or .pt/.pth state dict with "
                                 "--architecture)")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="dotted config overrides (e.g. export.n_check=512)")
        parser.add_argument("--onnx", action="store_true", help="export to ONNX (the only format; required)")
        parser.add_argument("--out", dest="onnx_out", metavar="DIR|FILE.onnx", default=None,
                            help="folder to write model.onnx (model.int8.onnx with --int8) into, created if "
                                 "missing, like every verb's --out DIR; or a file path ending in .onnx (its folder "
                                 "must exist). Default: <run folder>/model.onnx")
        parser.add_argument("--int8", metavar="MODE", default=None, choices=("dynamic", "static"),
                            help="quantize to int8 with ONNX Runtime: dynamic or static (calibrated)")
        parser.add_argument("--dataset", metavar="NAME", default=None,
                            help="dataset of the check batch and calibration (default: the one in the model file)")
        parser.add_argument("--architecture", metavar="NAME", default=None,
                            help="architecture of a .pt/.pth state dict")
        parser.add_argument("--runs", metavar="DIR", default=None,
                            help="runs folder for the run record (default: fortify-runs)")
        add_store_option(parser)
        parser.add_argument("--data-dir", metavar="DIR", default=None, help="folder with dataset files")
        parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
        add_device_option(parser)  # the model is loaded there; the ONNX export itself uses a CPU copy
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary table")

    def run(self, args: argparse.Namespace) -> int:
        """Export MODEL."""
        args.verb, args.resume = self.name, None
        if not args.onnx:
            raise UsageError("export: say the format: --onnx (the only one supported)")
        extra: list[str] = []
        if args.int8 is not None:
            extra.append(f"export.int8={args.int8}")
        if args.runs is not None:
            extra.append(f"output.dir={_quote(args.runs)}")
        extra = [*model_overrides(args), *extra]
        folder, dest = export_destination(args.onnx_out, args.int8)
        if folder is not None and not folder.is_dir():
            from fortify.pipeline import resolve

            resolve({**build_raw(args, extra), "stages": list(EXPORT_STAGES)})  # everything else valid first
            make_folder(folder)
        if dest is not None:
            extra.append(f"export.path={_quote(str(dest))}")
        return run_model_verb(args, self.name, build_raw(args, extra), EXPORT_STAGES, show_export)


def export_destination(out: str | None, int8: str | None) -> tuple[Path | None, Path | None]:
    """``(folder to create or None, .onnx path or None)`` for ``--out``: a path ending in ``.onnx`` is
    the file itself; anything else is a folder that receives ``model.onnx`` (``model.int8.onnx``)."""
    if out is None:
        return None, None
    p = Path(out)
    if p.suffix.lower() == ".onnx" and not p.is_dir():
        return None, p
    return p, p / ("model.int8.onnx" if int8 else "model.onnx")


def make_folder(folder: Path) -> None:
    """Create the ``--out`` folder (and its parents); failures are one-line OutputErrors."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the --out folder {str(folder)!r}: {e.strerror or e}") from None
