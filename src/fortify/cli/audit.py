"""``fortify audit``: can a saved model be trusted? Calibration, abstention, OOD and adversarial-input detection
(static and adaptive), MNIST-C corruptions and fooling images (stages load, audit, report)."""
from __future__ import annotations

import argparse
from typing import Any, ClassVar

from fortify.cli.base import UsageError, _quote, build_raw, comma_names, names_override, register_verb
from fortify.cli.evaluate import add_model_options, model_overrides, run_model_verb

AUDIT_STAGES = ("load", "audit", "report")


def _eps(text: str) -> list[float]:
    try:
        return [float(t) for t in comma_names(text, "--eps")]
    except ValueError:
        raise UsageError(f"--eps must be comma-separated numbers, e.g. --eps 0.05,0.1; got {text!r}") from None


def show_audit(ctx: Any, quiet: bool) -> None:
    """Print the audit stage's headline tables on stdout (one line per figure with ``--quiet``)."""
    from rich.console import Console
    from rich.table import Table

    from fortify.pipeline.stages.audit import AuditResult, findings, tables

    res = ctx.find("audit", AuditResult)
    if res is None:
        return
    out = Console()
    if quiet:
        for f in findings(res.audits["model"]):
            warn = f" warning={f.warning!r}" if f.warning else ""
            out.print(f"audit[{f.key}]={f.value}{f.unit} {f.detail}{warn}", highlight=False, markup=False,
                      soft_wrap=True)
        return
    for t in tables(res.audits):
        rt = Table(title=t.title)
        for h in t.headers:
            rt.add_column(h, overflow="fold")
        for row in t.rows:
            rt.add_row(*(str(c) for c in row))
        out.print(rt)
    for lab, a in res.audits.items():
        for n in a.notices:
            out.print(f"{lab}: {n}", highlight=False, markup=False, soft_wrap=True)
    for f in findings(res.audits["model"]):
        if f.warning:
            out.print(f"warning: {f.label}: {f.warning}", highlight=False, markup=False, soft_wrap=True)
    if "audit_json" in ctx.artefacts:
        out.print(f"audit json: {ctx.artefacts['audit_json']}", highlight=False, soft_wrap=True)


@register_verb
class AuditVerb:
    """``fortify audit MODEL --sections calibration,ood,...``: is the model's confidence honest, does it notice
    inputs from elsewhere and crafted ones, how does it fare under corruptions."""

    name: ClassVar[str] = "audit"
    help: ClassVar[str] = ("trust audit of a saved model: calibration (ECE, reliability), selective prediction, OOD "
                           "and adversarial-input detection (static and adaptive attack), corruptions, fooling images")
    description = (
        "Load MODEL and audit it on its dataset: calibration metrics before and after post-hoc calibrators "
        "(temperature, vector, matrix, dirichlet, histogram, isotonic) fitted on half of the --n test images, "
        "risk-coverage curves, OOD detectors (msp, max-logit, odin, energy, mahalanobis, knn, react, vim) fitted on "
        "--n-fit training images and scored against offline OOD sets, the same detectors against static attacks "
        "and an adaptive attack that knows them (a detector whose AUROC collapses is flagged), MNIST-C corruptions "
        "and fooling images. Figures and JSON are saved with the run; numbers go to the run store. "
        "Example: fortify audit fortify-runs/<id>/model.safetensors --sections calibration,ood,adversarial "
        "--detectors energy,mahalanobis --eps 0.1")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, run options and the audit options."""
        from fortify.audit.calibrators import CALIBRATORS
        from fortify.audit.detect import DETECTORS
        from fortify.audit.suite import SECTIONS

        add_model_options(parser)
        g = parser.add_argument_group("audit")
        g.add_argument("--sections", metavar="A,B", default=None,
                       help=f"sections to run, of: {', '.join(SECTIONS)} (default all)")
        g.add_argument("--detectors", metavar="A,B", default=None,
                       help=f"detectors, of: {', '.join(DETECTORS.names())} (default msp,energy,mahalanobis,knn)")
        g.add_argument("--calibrators", metavar="A,B", default=None,
                       help=f"post-hoc calibrators, of: {', '.join(CALIBRATORS.names())} (default temperature)")
        g.add_argument("--ood-sets", metavar="A,B", default=None,
                       help="OOD sets (default fashion-mnist,gaussian-noise,uniform-noise)")
        g.add_argument("--eps", metavar="E,F", default=None, help="attack radii for adversarial detection (default 0.1)")
        g.add_argument("--n", type=int, metavar="N", default=None,
                       help="test images: half fit the calibrators, half are measured (default 400)")
        g.add_argument("--n-fit", type=int, metavar="N", default=None,
                       help="training images the detectors are fitted on (default 1000)")
        g.add_argument("--compare", metavar="MODEL2", default=None,
                       help="a second saved model audited side by side (e.g. the standard twin of a robust model)")
        g.add_argument("--no-adaptive", action="store_true", help="skip the adaptive attack")

    def run(self, args: argparse.Namespace) -> int:
        """Audit MODEL (or resume an audit run)."""
        args.verb = self.name
        extra: list[str] = []
        for flag, key in (("sections", "sections"), ("detectors", "detectors"), ("calibrators", "calibrators"),
                          ("ood_sets", "ood_sets")):
            value = getattr(args, flag)
            if value is not None:
                extra.append(names_override(f"audit.{key}", comma_names(value, "--" + flag.replace("_", "-"))))
        if args.eps is not None:
            extra.append(f"audit.eps=[{', '.join(repr(e) for e in _eps(args.eps))}]")
        for flag in ("n", "n_fit"):
            if getattr(args, flag) is not None:
                extra.append(f"audit.{flag}={getattr(args, flag)}")
        if args.compare is not None:
            extra.append(f"audit.compare_model={_quote(args.compare)}")
        if args.no_adaptive:
            extra.append("audit.adaptive=false")
        if args.resume is not None:
            return run_model_verb(args, self.name, {}, AUDIT_STAGES, show_audit)
        raw = build_raw(args, [*model_overrides(args), *extra])
        return run_model_verb(args, self.name, raw, AUDIT_STAGES, show_audit)
