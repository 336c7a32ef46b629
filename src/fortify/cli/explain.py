"""``fortify explain``: attribution maps of a saved model and how faithful they are (stages load,
explain, report)."""
from __future__ import annotations

import argparse
from typing import Any, ClassVar

from fortify.cli.base import _quote, build_raw, comma_names, names_override, register_verb
from fortify.cli.evaluate import add_model_options, model_overrides, run_model_verb

EXPLAIN_STAGES = ("load", "explain", "report")


def _cell(s: Any) -> str:
    if s.low is None or s.high is None:
        return f"{s.mean:.4g}"
    return f"{s.mean:.4g} ± {(s.high - s.low) / 2:.2g}"


def show_explanation(ctx: Any, quiet: bool) -> None:
    """Print the explain stage's result on stdout: the metric x method table and the verdicts, or one
    line per method with ``--quiet``."""
    from rich.console import Console
    from rich.table import Table

    from fortify.pipeline.results import ExplainResult

    res = ctx.find("explain", ExplainResult)
    if res is None:
        return
    out = Console()
    if quiet:
        for m in res.methods:
            cells = " ".join(f"{k}={res.table[m][k].mean:.4f}" for k in res.metrics)
            out.print(f"explain[{m}] {cells} n={res.n} verdict={res.verdicts[m]}".replace("  ", " "), highlight=False,
                      markup=False, soft_wrap=True)
        return
    t = Table(title=f"attribution metrics (mean ± 95% t half-width, {res.n} images, target: {res.target})")
    t.add_column("metric")
    t.add_column("better", justify="center")
    for m in res.methods:
        t.add_column(m, justify="right", overflow="fold")
    t.add_column("random", justify="right")
    for k in res.metrics:
        first = res.table[res.methods[0]][k]
        t.add_row(k, "higher" if first.higher_is_better else "lower", *(_cell(res.table[m][k]) for m in res.methods),
                  _cell(res.baseline[k]) if k in res.baseline else "-")
    out.print(t)
    for m in res.methods:
        out.print(f"{m}: {res.verdicts[m]}", highlight=False, markup=False, soft_wrap=True)
    cmp = getattr(res, "compare", None)
    if cmp is not None:
        for m in res.methods:
            gaps = ", ".join(f"{k} {_cell(cmp['gap'][m][k])}" for k in res.metrics)
            out.print(f"{m} ({cmp['label']}): {cmp['verdicts'][m]}; run minus {cmp['label']}: {gaps}",
                      highlight=False, markup=False, soft_wrap=True)
    for name in ("attributions", "explain_json"):
        if name in ctx.artefacts:
            out.print(f"{name.replace('_', ' ')}: {ctx.artefacts[name]}", highlight=False, soft_wrap=True)


@register_verb
class ExplainVerb:
    """``fortify explain MODEL --methods a,b --metrics a,b --n N``: attributions and their faithfulness."""

    name: ClassVar[str] = "explain"
    help: ClassVar[str] = ("attribution maps of a saved model (saliency, integrated gradients, Grad-CAM, ...) "
                           "scored by faithfulness metrics against a random attribution")
    description = (
        "Load MODEL and explain its class on the first --n test images with each attribution method of --methods, "
        "score every map with each metric of --metrics (deletion, insertion, infidelity, max-sensitivity, "
        "randomisation, ...), and compare each method with a uniform random attribution of the same shape, image by "
        "image. Prints the metric x method table (mean and 95% t interval) and a one-line verdict per method "
        "('no better than a random attribution' or 'fails the randomisation check' are findings, not errors); "
        "saves the attribution grid as PNG with the run and records everything in the run store and report. "
        "Example: fortify explain fortify-runs/<id>/model.safetensors --methods saliency,integrated-gradients,gradcam "
        "--metrics deletion,insertion,randomisation --n 16")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, run options and the explanation options."""
        from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS

        add_model_options(parser)
        g = parser.add_argument_group("explanation")
        g.add_argument("--methods", metavar="A,B", default=None,
                       help=f"attribution methods, of: {', '.join(ATTRIBUTIONS.names())} "
                            "(default saliency,gradient-x-input,integrated-gradients)")
        g.add_argument("--metrics", metavar="A,B", default=None,
                       help=f"metrics, of: {', '.join(ATTRIBUTION_METRICS.names())} (default deletion,insertion)")
        g.add_argument("--n", type=int, metavar="N", default=None, help="explain the first N test images (default 16)")
        g.add_argument("--target", metavar="T", default=None,
                       help="class explained: predicted (default), label, or a class index")
        g.add_argument("--target-layer", metavar="NAME", default=None,
                       help="Grad-CAM's layer, a module name (default: the last convolution)")
        g.add_argument("--compare", metavar="MODEL2", default=None,
                       help="a second model file (e.g. the standard twin of a robust model): the same methods and "
                            "metrics on it, maps side by side and the per-image gap")
        g.add_argument("--compare-label", metavar="NAME", default=None, help="MODEL2's name (default compare)")

    def run(self, args: argparse.Namespace) -> int:
        """Explain MODEL (or resume an explain run)."""
        args.verb = self.name
        extra: list[str] = []
        if args.methods is not None:
            extra.append(names_override("explain.methods", comma_names(args.methods, "--methods")))
        if args.metrics is not None:
            extra.append(names_override("explain.metrics", comma_names(args.metrics, "--metrics", allow_empty=True)))
        if args.n is not None:
            extra.append(f"explain.n={args.n}")
        if args.target is not None:
            t = args.target.strip()
            extra.append(f"explain.target={t if t.lstrip('-').isdigit() else _quote(t)}")
        if args.target_layer is not None:
            extra.append(f"explain.target_layer={_quote(args.target_layer)}")
        if args.compare is not None:
            extra.append(f"explain.compare={_quote(args.compare)}")
        if args.compare_label is not None:
            extra.append(f"explain.compare_label={_quote(args.compare_label)}")
        if args.resume is not None:
            return run_model_verb(args, self.name, {}, EXPLAIN_STAGES, show_explanation)
        raw = build_raw(args, [*model_overrides(args), *extra])
        return run_model_verb(args, self.name, raw, EXPLAIN_STAGES, show_explanation)
