"""``fortify certify``: certified accuracy of a saved model and its curve vs eps (stages load,
accuracy, certify, report)."""
from __future__ import annotations

import argparse
from typing import Any, ClassVar

from fortify.cli.base import _quote, build_raw, register_verb
from fortify.cli.evaluate import add_model_options, model_overrides, run_model_verb

CERTIFY_STAGES = ("load", "accuracy", "certify", "report")


def show_certification(ctx: Any, quiet: bool) -> None:
    """Print the certify stage's result on stdout: tables, or one line with ``--quiet``."""
    from rich.console import Console
    from rich.table import Table

    from fortify.pipeline.results import CertifyResult

    res = ctx.find("certify", CertifyResult)
    if res is None:
        return
    cert, curves, thr, method = res.certificate, res.curves, res.threat, res.method
    out = Console()
    if quiet:
        out.print(f"certified_accuracy[{method},{thr}]={cert.certified_accuracy:.4f} n={len(cert)}", highlight=False, markup=False,
                  soft_wrap=True)
        return
    t = Table(title=f"certified accuracy ({method}, {thr}, {len(cert)} images)")
    t.add_column("certified", justify="right")
    t.add_column("certified accuracy", justify="right")
    t.add_row(str(int(cert.certified.sum())), f"{cert.certified_accuracy:.2%}")
    if cert.status is not None:
        t.caption = ", ".join(f"{s}: {cert.status.count(s)}" for s in sorted(set(cert.status)))
    out.print(t)
    if curves:
        ct = Table(title="certified accuracy vs " + ("radius" if method == "smoothing" else "eps"))
        ct.add_column("radius", justify="right")
        for c in curves:
            ct.add_column(c.method, justify="right")
        for i, r in enumerate(curves[0].eps):
            ct.add_row(f"{r:.4g}", *(f"{c.accuracy[i]:.2%}" for c in curves))
        out.print(ct)
    for name in ("certified_curve", "certification_json"):
        if name in ctx.artefacts:
            out.print(f"{name.replace('_', ' ')}: {ctx.artefacts[name]}", highlight=False, soft_wrap=True)


@register_verb
class CertifyVerb:
    """``fortify certify MODEL --method M --threat NORM:EPS``: certified accuracy and its curve."""
    name: ClassVar[str] = "certify"
    help: ClassVar[str] = ("certified accuracy of a saved model (ibp, crown, alpha-crown, smoothing, milp) "
                           "and its curve")
    description = (
        "Load MODEL and prove robustness of the first --n test images under --threat: ibp (interval bounds), "
        "crown (backward linear bounds), alpha-crown (optimised final slopes), crown-ibp, smoothing (randomized "
        "smoothing, l2, a probabilistic certificate for the smoothed classifier) or milp (exact verification of "
        "small ReLU MLPs). Prints the certified accuracy, saves certified accuracy vs eps (radius for "
        "smoothing) as PNG with the run, and records it in the run store and report. Example: fortify certify "
        "fortify-runs/<id>/model.safetensors --method crown --threat linf:0.1 --n 100")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, run options and the certification options."""
        add_model_options(parser)
        g = parser.add_argument_group("certification")
        g.add_argument("--method", metavar="NAME", default=None,
                       help="ibp | crown | alpha-crown | crown-ibp | smoothing | milp (default crown)")
        g.add_argument("--threat", metavar="NORM:EPS", default=None,
                       help="threat model, e.g. linf:0.1 (bound methods, milp: linf/l1) or l2:0.5 (smoothing); "
                            "default linf:0.1")
        g.add_argument("--n", type=int, metavar="N", default=None, help="certify the first N test images (default 100)")
        g.add_argument("--curve-points", type=int, metavar="K", default=None,
                       help="radii of the certified-accuracy curve, evenly spaced from 0 to eps (default 5; 0: none)")
        g.add_argument("--eps-grid", metavar="E1,E2,...", default=None, help="explicit radii for the curve")
        g.add_argument("--compare", metavar="A,B", default=None,
                       help="other bound methods drawn on the same curve (e.g. ibp); default: none")
        g.add_argument("--sigma", type=float, metavar="S", default=None, help="smoothing: noise level (default 0.25)")
        g.add_argument("--samples", type=int, metavar="N", default=None,
                       help="smoothing: Monte Carlo estimation draws per image (default 1000)")
        g.add_argument("--alpha", type=float, metavar="A", default=None,
                       help="smoothing: failure probability of the certificate (default 0.001)")
        g.add_argument("--time-limit", type=float, metavar="S", default=None,
                       help="milp: seconds per image before giving up (default 30)")
        g.add_argument("--max-binaries", type=int, metavar="N", default=None,
                       help="milp: refuse, before solving, a model with more than N unstable ReLUs on an image "
                            "(one binary variable each; default 200)")

    def run(self, args: argparse.Namespace) -> int:
        """Certify MODEL (or resume a certify run)."""
        args.verb = self.name
        extra: list[str] = []
        if args.method is not None:
            extra.append(f"certify.method={_quote(args.method)}")
        if args.threat is not None:
            extra.append(f"certify.threat={_quote(args.threat)}")
        elif args.method == "smoothing":
            extra.append("certify.threat='l2:0.5'")  # smoothing certifies l2 radii
        for flag, key in (("n", "n"), ("curve_points", "curve_points"), ("sigma", "sigma"), ("samples", "samples"),
                          ("alpha", "alpha"), ("time_limit", "time_limit"), ("max_binaries", "max_binaries")):
            if getattr(args, flag) is not None:
                extra.append(f"certify.{key}={getattr(args, flag)}")
        if args.eps_grid is not None:
            extra.append(f"certify.curve_eps=[{args.eps_grid}]")
        compare = [] if args.compare is None else [c.strip() for c in args.compare.split(",") if c.strip()]
        extra.append(f"certify.compare=[{', '.join(_quote(c) for c in compare)}]")
        args.explicit = len(extra) > 1 or args.compare is not None
        if args.resume is not None:
            return run_model_verb(args, self.name, {}, CERTIFY_STAGES, show_certification)
        raw = build_raw(args, [*model_overrides(args), *extra])
        return run_model_verb(args, self.name, raw, CERTIFY_STAGES, show_certification)
