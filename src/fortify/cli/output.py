"""Rich tables printed by the CLI (run summary, ``runs ls``, ``runs show``)."""
from __future__ import annotations

import json
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fortify.pipeline.base import RunContext
from fortify.store import RunRecord, RunStore


def fmt(v: Any) -> str:
    """Compact display of a metric value."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e12:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def when(t: float | None) -> str:
    """Local date and time of a UNIX timestamp, or a dash."""
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def print_summary(ctx: RunContext, store: RunStore, *, quiet: bool = False) -> None:
    """The end-of-run table on stdout (one line with ``--quiet``)."""
    from fortify.pipeline.results import AccuracyResult

    out = Console()
    res = ctx.find("accuracy", AccuracyResult)
    acc = res.clean_accuracy if res is not None else None
    if quiet:
        extra = f" clean_accuracy={acc:.4f}" if acc is not None else ""
        out.print(f"run {ctx.run_id} ok{extra} in {ctx.run_dir}", highlight=False, soft_wrap=True)
        return
    c = ctx.config
    t = Table(title=f"fortify {ctx.verb} · {ctx.run_id}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("status", "[green]ok[/green]")
    t.add_row("stages", " → ".join(ctx.stages or c.stages))
    t.add_row("data", f"{c.data.name}")
    if "train" in ctx.metrics:
        t.add_row("model", f"{c.model.name}{' (normalized)' if c.model.normalize else ''}, task {c.task.name}, "
                           f"epochs {int(ctx.metrics['train'].get('epochs', 0))}, seed {c.seed}")
    elif ctx.model_meta.get("architecture"):
        arch = ctx.model_meta["architecture"]
        t.add_row("model", str(arch.get("name", arch)) if isinstance(arch, dict) else str(arch))
    if res is not None:
        t.add_row("clean test accuracy", f"[bold]{_rate(res.clean_accuracy, res.n)}[/bold]")
    tr = ctx.metrics.get("train", {})
    if "train_loss" in tr:
        t.add_row("final train loss / acc", f"{fmt(tr.get('train_loss'))} / {fmt(tr.get('train_acc'))}")
    for label, value in _pillar_rows(ctx):
        t.add_row(label, value)
    t.add_row("wall time", ", ".join(f"{k} {v:.1f}s" for k, v in ctx.timing.items()))
    t.add_row("run folder", str(ctx.run_dir))
    for name in ("model", "report_html", "report_json"):
        if name in ctx.artefacts:
            t.add_row(name.replace("_", "."), ctx.artefacts[name])
    t.add_row("run store", f"{store.path}  (fortify runs show {ctx.run_id})")
    out.print(t)


def _rate(value: float, n: object) -> str:
    """An accuracy with its exact 95% interval and n (:func:`fortify.stats.rate_text`); bare if n is unknown."""
    from fortify.stats import rate_text

    return rate_text(float(value), int(n)) if isinstance(n, (int, float)) and n >= 1 else f"{value:.2%}"


def _pillar_rows(ctx: RunContext) -> list[tuple[str, str]]:
    """Headline figures of the robustness, certify and compress stages, when they ran."""
    rows: list[tuple[str, str]] = []
    rob = ctx.metrics.get("robustness", {})
    per_threat = {k[len("robust_accuracy["):-1]: v for k, v in rob.items() if k.startswith("robust_accuracy[")}
    if per_threat:
        cfg = ctx.config.sections.get("robustness")
        preset = getattr(cfg, "preset", "") if cfg is not None else ""
        n = rob.get("n")
        text = ", ".join(f"{k} [bold]{_rate(v, n)}[/bold]" for k, v in per_threat.items())
        if len(per_threat) > 1 and "robust_accuracy" in rob:
            text += f", union {_rate(rob['robust_accuracy'], n)}"
        flags = int(rob.get("flags_fired", 0))
        from fortify.evaluate.presets import PRESET_CAVEATS

        caveat = "; may be above AutoAttack" if preset in PRESET_CAVEATS else ""
        rows.append(("robust accuracy", f"{text} ({preset} preset{caveat}, "
                                        f"{flags} sanity flag{'s' if flags != 1 else ''} fired)"))
    cert = ctx.metrics.get("certify", {})
    if "certified_accuracy" in cert:
        cfg = ctx.config.sections.get("certify")
        method = getattr(cfg, "method", "") if cfg is not None else ""
        rows.append(("certified accuracy", f"[bold]{_rate(cert['certified_accuracy'], cert.get('n'))}[/bold] at "
                                           f"eps {fmt(cert.get('eps'))} ({method})"))
    comp = ctx.metrics.get("compress", {})
    if "size_ratio" in comp:
        from fortify.timing import SpeedUp

        speed = SpeedUp.from_metrics(comp, "speedup_b256")  # a ratio is shown only with its interval
        rows.append(("compressed model", (
            f"{comp['size_ratio']:.1f}x smaller on disk ({fmt(comp.get('bytes[original]'))} -> "
            f"{fmt(comp.get('bytes[compressed]'))} bytes)"
            + (f"; batch 256: {speed.text()}" if speed is not None else "") + "; "
            f"clean {fmt(comp.get('clean_acc[original]'))} -> {fmt(comp.get('clean_acc[compressed]'))} "
            f"(n={fmt(comp.get('n_test'))}), robust {fmt(comp.get('robust_acc[original]'))} -> "
            f"{fmt(comp.get('robust_acc[compressed]'))} (n={fmt(comp.get('n_robust'))})")))
    return rows


def _headline(rec: RunRecord, store: RunStore) -> str:
    m = store.final_metrics(rec.id)
    acc = m.get("accuracy/clean_accuracy", m.get("evaluate/clean_accuracy"))  # runs before the rename: evaluate
    return "–" if acc is None else f"{acc:.2%}"


def print_runs(store: RunStore, limit: int | None) -> None:
    """Print the ``runs ls`` table (newest first, at most ``limit`` rows) on stdout."""
    runs = store.list_runs(limit=limit)
    out = Console()
    if not runs:
        out.print(f"no runs in {store.path}")
        return
    failed = any(r.error for r in runs)
    t = Table(title=f"runs in {store.path}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["id", "verb", "status", "seed", "clean acc", "time"]
    rows = []
    for r in runs:
        rows.append([r.id, r.verb, r.status, fmt(r.seed), _headline(r, store),
                     "–" if r.duration is None else f"{r.duration:.1f}s"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    for c, w in zip(cols, widths):
        t.add_column(c, no_wrap=True, min_width=w)
    for r, row in zip(runs, rows):
        style = {"ok": "green", "failed": "red"}.get(r.status, "yellow")
        row[2] = f"[{style}]{r.status}[/{style}]"
        t.add_row(*row)
    out.print(t)
    if failed:
        out.print("errors:")
        for r in runs:
            if r.error:
                out.print(f"  {r.id}  {r.error}", highlight=False, markup=False, overflow="ellipsis", no_wrap=True)


def print_run(rec: RunRecord, *, as_json: bool = False) -> None:
    """Print one run (``runs show``): header, config, final metrics, artefacts; or all of it as JSON."""
    out = Console()
    if as_json:
        d = {k: getattr(rec, k) for k in ("id", "created", "finished", "verb", "argv", "config", "seed", "versions",
                                          "status", "error", "run_dir")}
        d["metrics"] = [vars(m) for m in rec.metrics]
        d["artefacts"] = [vars(a) for a in rec.artefacts]
        print(json.dumps(d, indent=2))
        return
    t = Table(title=f"run {rec.id}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    style = {"ok": "green", "failed": "red"}.get(rec.status, "yellow")
    t.add_row("status", f"[{style}]{rec.status}[/{style}]" + (f": {rec.error}" if rec.error else ""))
    t.add_row("verb / argv", f"{rec.verb}  {' '.join(rec.argv)}")
    t.add_row("started / took", f"{when(rec.created)} / " + ("–" if rec.duration is None else f"{rec.duration:.1f}s"))
    t.add_row("seed", fmt(rec.seed))
    t.add_row("run folder", rec.run_dir or "–")
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in rec.versions.items()))
    out.print(t)
    out.print("[bold]config[/bold]")
    out.print_json(json.dumps(rec.config))
    final = [m for m in rec.metrics if m.step is None]
    per_step = [m for m in rec.metrics if m.step is not None]
    mt = Table(title="metrics", title_justify="left")
    for col in ("stage", "metric", "value"):
        mt.add_column(col)
    for m in final:
        mt.add_row(m.stage, m.key, fmt(m.value))
    out.print(mt)
    if per_step:
        steps = sorted({m.step for m in per_step if m.step is not None})
        out.print(f"(+{len(per_step)} per-step values over steps {steps[0]}..{steps[-1]}; "
                  f"see report.json or --json)")
    at = Table(title="artefacts", title_justify="left")
    for col in ("name", "kind", "path"):
        at.add_column(col, overflow="fold")
    for a in rec.artefacts:
        at.add_row(a.name, a.kind, a.path)
    out.print(at)
