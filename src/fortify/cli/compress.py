"""``fortify compress MODEL --recipe NAME``: compress a saved model and measure it for real (stages
load, compress, report; see :mod:`fortify.pipeline.stages.compress`)."""
from __future__ import annotations

import argparse
from typing import Any, ClassVar

from fortify.cli.base import UsageError, _quote, add_run_options, build_raw, register_verb
from fortify.cli.evaluate import model_overrides, run_model_verb

COMPRESS_STAGES = ("load", "compress", "report")


def recipe_help() -> str:
    """One line per compression recipe: ``NAME: help``."""
    from fortify.compress import RECIPES

    return "; ".join(f"{n}: {RECIPES.help(n)}" for n in RECIPES.names())


def _recipe_names() -> list[str]:
    """The registered compression recipe names."""
    from fortify.compress import RECIPES

    return RECIPES.names()


def show_compression(ctx: Any, quiet: bool) -> None:
    """Print the compress stage's measurements on stdout: a table, or one line with ``--quiet``."""
    from rich.console import Console
    from rich.table import Table

    from fortify.pipeline.results import CompressResult

    res = ctx.find("compress", CompressResult)
    if res is None:
        return
    rows, m = res.rows, ctx.metrics.get("compress", {})
    out = Console()
    if quiet:
        a, b = rows
        parts = [f"bytes={a.bytes}->{b.bytes}", f"size_ratio={m.get('size_ratio', float('nan')):.2f}"]
        if "speedup_b256_ci_low" in m:  # never a bare ratio: its 95% interval and the noisy flag with it
            parts.append(f"speedup_b256={m['speedup_b256']:.2f}[{m['speedup_b256_ci_low']:.2f},"
                         f"{m['speedup_b256_ci_high']:.2f}]{'~noisy' if m.get('speedup_b256_noisy') else ''}")
        for key in ("clean_acc", "robust_acc"):
            if getattr(a, key) is not None and getattr(b, key) is not None:
                parts.append(f"{key}={getattr(a, key):.4f}->{getattr(b, key):.4f}")
        parts.append(f"artefact={res.artefact}")
        out.print(" ".join(parts), highlight=False, markup=False, soft_wrap=True)
        return
    sec = res.config
    a, b = rows
    t = Table(title=f"compression ({sec.describe()}): the files written, measured on CPU ({sec.threads} threads)")
    t.add_column("measurement", no_wrap=True)
    for c in ("original", "compressed", "ratio"):
        t.add_column(c, justify="right", no_wrap=c != "ratio")  # speed-up cells carry their 95% CI: may wrap

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    def ratio(x: Any, y: Any, larger_better: bool = False) -> str:
        if not x or not y:
            return "-"
        return f"{(y / x if larger_better else x / y):.2f}x"

    t.add_row("bytes on disk", f"{a.bytes:,}", f"{b.bytes:,}", ratio(a.bytes, b.bytes) + " smaller")
    t.add_row("parameters (nonzero)", f(a.params_nonzero, ","), f(b.params_nonzero, ","),
              ratio(a.params_nonzero, b.params_nonzero) + " fewer")
    t.add_row("parameters (total)", f(a.params_total, ","), f(b.params_total, ","), ratio(a.params_total, b.params_total))
    t.add_row("MACs (nonzero)", f(a.macs_nonzero, ","), f(b.macs_nonzero, ","), ratio(a.macs_nonzero, b.macs_nonzero))
    for batch, spec in ((1, ".3f"), (256, ".2f")):  # ratio: the speed-up with its 95% interval, else none
        speed = b.speedups.get(batch)
        t.add_row(f"CPU latency batch {batch} (ms)", f(getattr(a, f"latency_b{batch}_ms"), spec),
                  f(getattr(b, f"latency_b{batch}_ms"), spec), speed.wall.cell() if speed and speed.wall else "-")
        t.add_row("  CPU time, 1 thread (ms)", f(getattr(a, f"latency_b{batch}_cpu_ms"), spec),
                  f(getattr(b, f"latency_b{batch}_cpu_ms"), spec), speed.cell() if speed else "-")
    t.add_row(f"clean accuracy ({res.n_test} images)", f(a.clean_acc, ".2%"),
              f(b.clean_acc, ".2%"), "-")
    t.add_row(f"robust accuracy ({sec.threat})", f(a.robust_acc, ".2%"), f(b.robust_acc, ".2%"), "-")
    if b.robust_method:
        t.caption = (f"robust accuracy on the first {min(sec.n_robust, res.n_test)} test images:"
                     f" original {a.robust_method}, compressed {b.robust_method}")
    out.print(t)
    for name in ("compressed_model", "pareto", "compress_json"):
        if name in ctx.artefacts:
            out.print(f"{name.replace('_', ' ')}: {ctx.artefacts[name]}", highlight=False, soft_wrap=True)


@register_verb
class CompressVerb:
    """``fortify compress MODEL --recipe NAME``: compress a saved model, save the artefact, measure it."""
    name: ClassVar[str] = "compress"
    help: ClassVar[str] = "compress a saved model (pruning, int8, low-rank, Deep Compression) and measure it for real"

    description = (
        "Load MODEL, run a compression recipe on it (training data of --dataset for fine-tuning and calibration), "
        "save the artefact (model.onnx for int8, model.safetensors in the sparse or codebook format otherwise) and "
        "measure the model before and after: bytes of the file on disk, parameters, MACs, CPU latency at batch 1 "
        "and 256, clean accuracy and robust accuracy under --threat (an int8 model is attacked itself: Square plus "
        "transfer PGD from its float twin). Writes compress.json and pareto.png in DIR/<run-id>/compress/ and "
        "records everything in the run store and report. Hyper-parameters: compress.args.KEY=VALUE (e.g. "
        "compress.args.sparsity=0.8) or explicit compress.steps=[...]. Example: fortify compress "
        "fortify-runs/<id>/model.safetensors --recipe robust-int8 --threat linf:0.3 --n 200")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, the run options and the compression options."""
        parser.add_argument("model_path", metavar="MODEL", nargs="?", default=None,
                            help="model file (.safetensors written by fortify, or .pt/.pth state dict with "
                                 "--architecture)")
        add_run_options(parser, recipe=False)
        parser.add_argument("--dataset", metavar="NAME", default=None,
                            help="dataset for fine-tuning, calibration and measurement (default: the one recorded "
                                 "in the model file)")
        parser.add_argument("--architecture", metavar="NAME", default=None,
                            help="architecture of a .pt/.pth state dict (same as load.architecture=NAME)")
        parser.add_argument("--resume", metavar="ID", default=None,
                            help="rerun a failed compress run in its folder with its recorded config")
        g = parser.add_argument_group("compression")
        g.add_argument("--recipe", dest="compress_recipe", metavar="NAME", default=None,
                       help="compression recipe (listed above); required unless compress.steps=[...] is given")
        plain = parser.format_help

        def format_help() -> str:
            """The help with the recipes listed (fortify.compress imported only for --help)."""
            parser.description = f"{self.description} Recipes: {recipe_help()}."
            return plain()

        parser.format_help = format_help  # type: ignore[method-assign]
        g.add_argument("--threat", metavar="NORM:EPS", default=None,
                       help="threat of the robust accuracy and of the adversarial fine-tuning (default linf:0.3)")
        g.add_argument("--n", type=int, metavar="N", default=None,
                       help="attack the first N test images before and after (default 200)")
        g.add_argument("--robust", metavar="MODE", default=None,
                       help="how robust accuracy is measured: pgd (default), fast (attack cascade), strong (the "
                            "fast cascade + the Square attack the int8 model gets: equal footing for float vs "
                            "int8) or none")
        g.add_argument("--no-latency", action="store_true", help="skip the CPU latency timings")

    def run(self, args: argparse.Namespace) -> int:
        """Compress MODEL with the recipe (or resume a compress run)."""
        args.verb = self.name
        extra: list[str] = []
        if args.compress_recipe is not None:
            extra.append(f"compress.recipe={_quote(args.compress_recipe)}")
        if args.threat is not None:
            extra.append(f"compress.threat={_quote(args.threat)}")
        if args.n is not None:
            extra.append(f"compress.n_robust={args.n}")
        if args.robust is not None:
            extra.append(f"compress.robust={_quote(args.robust)}")
        if args.no_latency:
            extra.append("compress.latency=false")
        args.explicit = bool(extra)
        if not any(o.split("=", 1)[0].strip() in ("compress.task", "compress") for o in args.overrides):
            extra.append("compress.task=null")  # the recipe's own fine-tuning tasks (not the recipe file's task)
        if args.resume is not None:
            return run_model_verb(args, self.name, {}, COMPRESS_STAGES, show_compression)
        if args.model_path is None:
            raise UsageError("compress: the MODEL argument is required (or --resume ID)")
        if args.compress_recipe is None and not any(o.split("=", 1)[0].strip() in (
                "compress.recipe", "compress.steps", "compress") for o in args.overrides):
            raise UsageError(f"compress: --recipe NAME is required (or compress.steps=[...]); recipes: "
                             f"{', '.join(_recipe_names())}")
        raw = build_raw(args, [*model_overrides(args), *extra])
        return run_model_verb(args, self.name, raw, COMPRESS_STAGES, show_compression)
