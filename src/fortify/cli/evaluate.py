"""``fortify evaluate``: clean accuracy of a saved model and, with ``--threat``, its robust accuracy
under an attack cascade (stages load, accuracy, [robustness,] report).

Also holds :func:`run_model_verb`, the runner shared with ``fortify certify``: it validates the
config, runs the stages, prints the usual run summary and then the verb's own result tables.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, ClassVar, Sequence

from fortify.cli.base import UsageError, _quote, add_run_options, build_raw, register_verb, run_with_config

EVALUATE_STAGES = ("load", "accuracy", "report")
ROBUST_STAGES = ("load", "accuracy", "robustness", "report")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """MODEL (optional with --resume), the common run options, ``--dataset``, ``--architecture``, ``--resume``."""
    parser.add_argument("model_path", metavar="MODEL", nargs="?", default=None,
                        help="model file (.safetensors written by fortify, or .pt/.pth state dict with --architecture)")
    add_run_options(parser)
    parser.add_argument("--dataset", metavar="NAME", default=None,
                        help="dataset whose test split is used (default: the one recorded in the model file)")
    parser.add_argument("--architecture", metavar="NAME", default=None,
                        help="architecture of a .pt/.pth state dict (same as load.architecture=NAME)")
    parser.add_argument("--resume", metavar="ID", default=None,
                        help="continue an interrupted or failed run of this verb in its folder, with its recorded "
                             "config (finished attacks are read back from the run's cascade state)")


def model_overrides(args: argparse.Namespace) -> list[str]:
    """``load.path``/``load.architecture``/``data.name`` overrides from MODEL, --architecture, --dataset."""
    if args.model_path is None:
        raise UsageError(f"{args.verb}: the MODEL argument is required (or --resume ID)")
    check_architecture_flag(args)
    extra = [f"load.path={_quote(args.model_path)}"]
    if args.architecture is not None:
        extra.append(f"load.architecture={args.architecture}")
    if args.dataset is not None:
        extra.append(f"data.name={args.dataset}")
    elif not any(o.split("=", 1)[0].strip() == "data.name" for o in args.overrides):
        extra += _dataset_of(args.model_path)
    return extra


def check_architecture_flag(args: argparse.Namespace) -> None:
    """A ``.pt``/``.pth`` MODEL needs ``--architecture NAME`` (the file holds only tensors); a
    ``.safetensors`` MODEL records its own, so ``--architecture`` there is a mistake. Said in CLI terms."""
    from fortify.models import MODELS

    path = str(args.model_path)
    given = args.architecture is not None or any(o.split("=", 1)[0].strip() == "load.architecture"
                                                 for o in args.overrides)
    if path.lower().endswith((".pt", ".pth")) and not given:
        raise UsageError(f"{args.verb}: {path} is a .pt/.pth state dict, which holds no architecture; pass "
                         f"--architecture NAME (e.g. --architecture mlp; one of: {', '.join(MODELS.names())})")
    if path.lower().endswith(".onnx") and args.architecture is not None:
        raise UsageError(f"{args.verb}: --architecture {args.architecture} applies to .pt/.pth state dicts only; "
                         f"{path} is an ONNX model")
    if path.lower().endswith(".safetensors") and args.architecture is not None:
        raise UsageError(f"{args.verb}: --architecture {args.architecture} applies to .pt/.pth state dicts only; "
                         f"{path} records its own architecture")


def run_model_verb(args: argparse.Namespace, verb: str, raw: dict[str, Any], stages: Sequence[str],
                   show: Callable[[Any, bool], None]) -> int:
    """Run ``stages`` on a saved model (or reopen ``--resume ID``), print the summary, then ``show(ctx, quiet)``."""
    return run_with_config(args, verb, args.argv, raw, stages, show)


def show_robustness(ctx: Any, quiet: bool) -> None:
    """Print the robustness stage's result on stdout: tables, or one line with ``--quiet``."""
    from rich.console import Console

    from fortify.evaluate import render
    from fortify.pipeline.results import RobustnessResult

    res = ctx.find("robustness", RobustnessResult)
    if res is None:
        return
    report = res.report
    out = Console()
    if quiet:
        parts = [f"robust_accuracy[{t.threat}]={t.robust_accuracy:.4f}" for t in report.threats]
        if len(report.threats) > 1:
            parts.append(f"robust_accuracy[union]={report.robust_accuracy:.4f}")
        parts.append("flags_fired=" + (",".join(report.fired) or "none"))
        out.print(" ".join(parts), highlight=False, markup=False, soft_wrap=True)
        return
    render(report, console=out)
    for f in report.flags:
        if f.fired:
            out.print(f"[red]{f.name}[/red]: {f.explanation}")
    for name in ("robustness_curves", "evaluation_json"):
        if name in ctx.artefacts:
            out.print(f"{name.replace('_', ' ')}: {ctx.artefacts[name]}", highlight=False, soft_wrap=True)


@register_verb
class EvaluateVerb:
    """``fortify evaluate MODEL [--threat NORM:EPS ...]``: clean and robust accuracy of a saved model."""
    name: ClassVar[str] = "evaluate"
    help: ClassVar[str] = "clean accuracy of a saved model and, with --threat, robust accuracy under an attack cascade"
    description = (
        "Load MODEL (a .safetensors file written by fortify, or a plain .pt state dict with --architecture) and "
        "measure its clean accuracy on the test split of --dataset (default: the dataset recorded in the model "
        "file). With --threat (or any robustness option) the first --n test images are also attacked by a cascade "
        "(each attack only on the images still robust, per-image worst case kept): robust accuracy per threat and "
        "for their union, the per-attack contribution table, sanity flags that catch gradient masking (each with "
        "an explanation), and accuracy-vs-eps robustness curves saved as PNG. Everything is recorded in the run "
        "store and the run's report. Example: fortify evaluate fortify-runs/<id>/model.safetensors --threat "
        "linf:0.3 --threat l2:2 --preset standard --n 200")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, run options and the robustness options."""
        add_model_options(parser)
        g = parser.add_argument_group("robustness (any of these adds the attack cascade)")
        g.add_argument("--threat", action="append", metavar="NORM:EPS", default=None,
                       help="threat model, e.g. linf:0.3, l2:2, l1:10; repeat for several (their union is "
                            "reported too); default from the recipe: linf:0.3")
        g.add_argument("--preset", metavar="NAME", default=None,
                       help="attack preset: fast (APGD-CE, APGD-T), standard (AutoAttack-strength: + Square, "
                            "APGD-T9, FAB-T on signs of masking), thorough (+ restarts, CW, NES, HopSkipJump, "
                            "Sign-OPT); default fast")
        g.add_argument("--attacks", metavar="A,B,...", default=None,
                       help="custom cascade of registered attacks run in this order instead of the preset "
                            "(e.g. pgd,square)")
        g.add_argument("--n", type=int, metavar="N", default=None,
                       help="attack the first N test images (default 500)")
        g.add_argument("--budget", type=float, metavar="X", default=None,
                       help="multiply every attack's iterations and queries by X (default 1)")
        g.add_argument("--state", metavar="PATH", default=None,
                       help="resumable cascade state file (default: <run folder>/robustness/state.safetensors); "
                            "rerunning with the same file skips the attacks already finished")
        g.add_argument("--curve-points", type=int, metavar="N", default=None,
                       help="images used for the robustness curves (default 100; 0: no curves)")
        g.add_argument("--no-sanity", action="store_true",
                       help="skip the sanity checks (faster, but gradient masking goes undetected)")

    def run(self, args: argparse.Namespace) -> int:
        """Evaluate MODEL (clean, and robust when a robustness option is given) or resume a run."""
        args.verb = self.name
        extra: list[str] = []
        if args.threat is not None:
            extra.append(f"robustness.threats=[{', '.join(_quote(t) for t in args.threat)}]")
        if args.preset is not None:
            extra.append(f"robustness.preset={_quote(args.preset)}")
        if args.attacks is not None:
            names = [a.strip() for a in args.attacks.split(",") if a.strip()]
            extra.append(f"robustness.attacks=[{', '.join(_quote(a) for a in names)}]")
        for flag, key in (("n", "n"), ("budget", "budget"), ("curve_points", "curve_points")):
            if getattr(args, flag) is not None:
                extra.append(f"robustness.{key}={getattr(args, flag)}")
        if args.state is not None:
            extra.append(f"robustness.state={_quote(args.state)}")
        if args.no_sanity:
            extra.append("robustness.sanity=false")
        if args.model_path is not None and str(args.model_path).lower().endswith(".onnx"):
            extra += onnx_overrides(args)
        args.explicit = bool(extra)
        if args.resume is not None:
            return run_model_verb(args, self.name, {}, ROBUST_STAGES, show_robustness)
        robust = bool(extra) or any(o.split("=", 1)[0].strip().startswith("robustness.") for o in args.overrides)
        raw = build_raw(args, [*model_overrides(args), *extra])
        return run_model_verb(args, self.name, raw, ROBUST_STAGES if robust else EVALUATE_STAGES, show_robustness)


def onnx_overrides(args: argparse.Namespace) -> list[str]:
    """An ONNX MODEL is a black-box target (ONNX Runtime, no gradients): it needs ``--dataset`` (the file
    records none) and ``--attacks`` of score- or decision-based attacks only; a white-box attack (or
    a preset, which starts with them) is a one-line UsageError saying why. Returns the overrides that
    switch off the gradient-based parts of the cascade (sanity checks, robustness curves)."""
    from fortify.attacks import ATTACKS

    path = str(args.model_path)
    blackbox = [n for n in ATTACKS.names() if ATTACKS.get(n).access != "gradient"]
    why = (f"{args.verb}: {path} is an ONNX Runtime model without gradients: white-box attacks ({{}}) need a "
           f"PyTorch model; use score- or decision-based attacks: {', '.join(blackbox)}")
    names = [a.strip() for a in (args.attacks or "").split(",") if a.strip()]
    white = [n for n in names if n in ATTACKS and ATTACKS.get(n).access == "gradient"]
    if white:
        raise UsageError(why.format(", ".join(white) + ", ..."))
    robust = args.threat is not None or args.preset is not None or any(
        o.split("=", 1)[0].strip().startswith("robustness.") for o in args.overrides)
    if robust and not names:
        raise UsageError(why.format("the presets' apgd, ...") + " (e.g. --attacks square,hopskipjump)")
    has_data = args.dataset is not None or any(o.split("=", 1)[0].strip() in ("data.name", "data.path")
                                               for o in args.overrides) or getattr(args, "data", None)
    if not has_data:
        raise UsageError(f"{args.verb}: {path} is an ONNX model, which records no dataset: pass --dataset NAME "
                         f"(or --data PATH)")
    if not robust and not names:
        return []
    out = ["robustness.sanity=false", "robustness.transfer=true"]  # + PGD on a surrogate, scored on the model
    if args.curve_points is None:
        out.append("robustness.curve_points=0")
    return out


def _dataset_of(path: str) -> list[str]:
    """``["data.name=<dataset recorded in the model file>"]`` when there is a known one."""
    from fortify import models
    from fortify.data import DATASETS

    if not path.lower().endswith(".safetensors"):
        return []
    ds = models.read_meta(path).get("dataset")  # a corrupt file fails here: ModelFileError
    return [f"data.name={ds}"] if isinstance(ds, str) and ds in DATASETS else []
