"""``fortify scan``: is a saved model trojaned? (stages load, scan, report)."""
from __future__ import annotations

import argparse
from typing import Any, ClassVar

from fortify.cli.base import UsageError, build_raw, comma_names, names_override, register_verb
from fortify.cli.evaluate import add_model_options, model_overrides, run_model_verb

SCAN_STAGES = ("load", "scan", "report")
CHOICES = ("neural-cleanse", "data-free", "strip")


def show_scan(ctx: Any, quiet: bool) -> None:
    """Print the scan stage's result on stdout: the verdict and one line per detector (``--quiet``: one line)."""
    from rich.console import Console

    from fortify.pipeline.stages.scan import ScanResult

    res = ctx.find("scan", ScanResult)
    if res is None:
        return
    out = Console()
    if quiet:
        cells = " ".join(f"{k}={v.get('score', float('nan')):.3f}{'*' if v.get('flagged') else ''}"
                         for k, v in res.detections.items() if v.get("level") != "input")
        out.print(f"scan verdict={res.verdict!r} {cells}", highlight=False, markup=False, soft_wrap=True)
        return
    out.print(f"verdict: {res.verdict}", highlight=False, markup=False)
    for k, v in res.detections.items():
        extra = (f" flagged samples {v['flagged_samples']}" if "flagged_samples" in v else "")
        target = v.get("target")
        if v.get("level") == "input":
            out.print(f"  {k}: input-level, entropy threshold {v.get('threshold', float('nan')):.3f} at the FRR, "
                      f"{v.get('seconds', 0.0):.1f} s", highlight=False, markup=False, soft_wrap=True)
            continue
        out.print(f"  {k}: score {v.get('score', float('nan')):.3f}, flagged {v.get('flagged')}, target "
                  f"{'-' if target is None else target}, {v.get('seconds', 0.0):.1f} s{extra}",
                  highlight=False, markup=False, soft_wrap=True)
    if res.asr is not None:
        out.print(f"  attack success rate of the planted trigger: {100 * res.asr:.1f}%", highlight=False)
    if res.strip_far is not None:
        out.print(f"  STRIP FAR at the FRR: {100 * res.strip_far:.1f}%", highlight=False)
    for name, path in ctx.artefacts.items():
        if name.startswith("triggers_") or name == "scan_json":
            out.print(f"{name.replace('_', ' ')}: {path}", highlight=False, soft_wrap=True)


@register_verb
class ScanVerb:
    """``fortify scan MODEL [--data PATH]``: backdoor scan of a saved model (and optionally its training data)."""

    name: ClassVar[str] = "scan"
    help: ClassVar[str] = ("backdoor scan: reverse-engineered triggers per class, Neural Cleanse anomaly index, "
                           "flagged target (and poisoned samples of a data set with --data)")
    description = (
        "Load MODEL and search, for every class, the smallest trigger that sends clean test images to it (Neural "
        "Cleanse, batched over classes); a class whose trigger is an outlier-small one (MAD anomaly index above "
        "--threshold; by default the family-wise threshold, 3.16 for 10 classes) is the backdoor's target. "
        "data-free runs the same search on model-inverted inputs (no clean data); strip calibrates an input-level entropy threshold. With --data PATH (or a dataset "
        "name) the data set is screened for poisoned samples too (activation clustering, spectral signatures). "
        "Saves the reversed triggers as a PNG grid and records everything in the run store and report. "
        "Example: fortify scan fortify-runs/<id>/model.safetensors --detectors neural-cleanse,strip")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, run options and the scan options."""
        add_model_options(parser)
        g = parser.add_argument_group("scan")
        g.add_argument("--detectors", metavar="A,B", default=None,
                       help=f"model/input-level detectors, of: {', '.join(CHOICES)} (default neural-cleanse,strip)")
        g.add_argument("--data-level", action="store_true",
                       help="also screen the dataset's train split for poisoned samples (implied by --data PATH, "
                            "which screens your own data's train split)")
        g.add_argument("--n", type=int, metavar="N", default=None, help="reference test images (default 200)")
        g.add_argument("--steps", type=int, metavar="N", default=None, help="trigger-search steps (default 100)")
        g.add_argument("--threshold", type=float, metavar="T", default=None, help="anomaly index threshold (default: family-wise, 3.16 for 10 classes: 10%% false alarms on "
                            "clean models)")

    def run(self, args: argparse.Namespace) -> int:
        """Scan MODEL (or resume a scan run)."""
        args.verb = self.name
        if args.resume is not None:
            return run_model_verb(args, self.name, {}, SCAN_STAGES, show_scan)
        extra: list[str] = []
        if args.detectors is not None:
            names = comma_names(args.detectors, "--detectors", allow_empty=True)
            if not names or any(n not in CHOICES for n in names):
                raise UsageError(f"scan: --detectors takes names of: {', '.join(CHOICES)}; got {args.detectors!r}")
            extra.append(names_override("scan.detectors", names))
        if args.data is not None or args.data_level:  # --data PATH (a run option: data.path) is screened too
            extra.append("scan.data_level=true")
        for flag in ("n", "steps", "threshold"):
            v = getattr(args, flag)
            if v is not None:
                extra.append(f"scan.{flag}={v}")
        raw = build_raw(args, [*model_overrides(args), *extra])
        return run_model_verb(args, self.name, raw, SCAN_STAGES, show_scan)
