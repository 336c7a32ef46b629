"""``fortify leaderboard``: the models of a run store ranked by robust accuracy per threat model, in the
manner of RobustBench (Croce et al. 2021): clean and robust accuracy (with n and 95% interval), certified
accuracy, size, flags and the evaluation used.

Only an evaluation that meets the bar of :mod:`fortify.report.card` (preset ``standard`` or ``thorough``,
no sanity flag fired, n >= :data:`~fortify.report.card.BAR_MIN_N`) is *reliable* and gets a rank; the
others are listed below the ranked ones, unranked, with the reason, so a weak evaluation never outranks
a strong one. Within each group the order is robust accuracy, then clean accuracy, descending.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from fortify.errors import ThreatModelError
from fortify.report.loading import RunReport


def _value(f: Mapping[str, Any] | None) -> float | None:
    v = None if f is None else f.get("value")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _model_bytes(r: RunReport) -> int | None:
    path = (r.report.get("artefacts") or {}).get("model")
    if path and Path(path).is_file():
        return Path(path).stat().st_size
    v = ((r.report.get("metrics") or {}).get("compress") or {}).get("bytes[original]")
    return int(v) if v is not None else None


def entries(run: RunReport) -> list[dict[str, Any]]:
    """One leaderboard entry per threat model the run attacked (the union is not a threat model)."""
    card = run.card
    fs = {str(f["key"]): f for f in card.get("findings") or []}
    ev = card.get("evaluation") or {}
    warnings = [f"{f['label']}: {f['warning']}" for f in fs.values() if f.get("warning")]
    out = []
    for key, f in fs.items():
        if not key.startswith("robust_accuracy.") or key == "robust_accuracy.union":
            continue
        threat = key.split(".", 1)[1]
        cert = fs.get(f"certified_accuracy.{threat}") or next(
            (c for k, c in fs.items() if k.startswith(f"certified_accuracy.{threat.split(':')[0]}:")), None)
        comp = fs.get("compress.size_ratio")
        out.append({
            "run_id": run.run_id, "model": (card.get("model") or {}).get("name"),
            "params": (card.get("model") or {}).get("params"), "training": (card.get("model") or {}).get("training"),
            "dataset": (card.get("data") or {}).get("name"), "threat": threat,
            "clean": _value(fs.get("clean_accuracy")), "robust": _value(f), "robust_interval": f.get("interval"),
            "n": f.get("n"), "certified": _value(cert), "certified_threat": (cert or {}).get("key", ".").split(".", 1)[1]
            if cert else None, "bytes": _model_bytes(run), "compressed": _value(comp),
            "preset": ev.get("preset"), "attacks": ev.get("attacks"), "flags": list(ev.get("flags_fired") or []),
            "warnings": warnings, "reliable": bool(ev.get("meets_bar")), "why_not": list(ev.get("why_not") or []),
            "report_html": str(run.run_dir / "report.html") if run.run_dir and (run.run_dir / "report.html").is_file()
            else None,
        })
    return out


def _matches(threat: str, wanted: str) -> bool:
    return threat == wanted or (":" not in wanted and threat.split(":")[0] == wanted)


def build_leaderboard(runs: Sequence[RunReport], *, dataset: str | None = None, threat: str | None = None,
                      reliable_only: bool = False) -> dict[str, Any]:
    """``{"boards": [{dataset, threat, rows}], "skipped": [...]}``: one board per (dataset, threat model),
    rows ranked (``rank`` None for an unreliable evaluation, listed after the ranked ones). ``threat`` is
    ``NORM:EPS`` or a norm (``linf``); only finished (``ok``) runs count."""
    if threat is not None and not threat.split(":")[0] in ("linf", "l2", "l1", "l0"):
        raise ThreatModelError(f"--threat must be a norm (linf, l2, l1) or NORM:EPS like linf:0.3, got {threat!r}")
    boards: dict[tuple[str, str], list[dict[str, Any]]] = {}
    skipped = []
    for r in runs:
        if r.status != "ok":
            continue
        es = entries(r)
        if not es:
            skipped.append({"run_id": r.run_id, "reason": "no robust accuracy measured"})
        for e in es:
            if dataset is not None and e["dataset"] != dataset:
                continue
            if threat is not None and not _matches(e["threat"], threat):
                continue
            if reliable_only and not e["reliable"]:
                continue
            boards.setdefault((str(e["dataset"]), e["threat"]), []).append(e)
    out = []
    for (ds, thr), rows in sorted(boards.items()):
        rows.sort(key=lambda e: (not e["reliable"], -(e["robust"] or 0.0), -(e["clean"] or 0.0), e["run_id"]))
        rank = 0
        for e in rows:
            rank += 1 if e["reliable"] else 0
            e["rank"] = rank if e["reliable"] else None
        out.append({"dataset": ds, "threat": thr, "rows": rows})
    return {"boards": out, "skipped": skipped, "filters": {"dataset": dataset, "threat": threat,
                                                          "reliable_only": reliable_only}}


def _pct(v: float | None) -> str:
    return "\u2013" if v is None else f"{v:.2f}%"


def _size(e: Mapping[str, Any]) -> str:
    parts = []
    if e.get("params"):
        parts.append(f"{e['params'] / 1e6:.3g}M params" if e["params"] >= 1e5 else f"{e['params']:,} params")
    if e.get("bytes"):
        parts.append(f"{e['bytes'] / 1024:,.0f} KiB")
    if e.get("compressed"):
        parts.append(f"{e['compressed']:.1f}x compressible")
    return ", ".join(parts) or "\u2013"


def _evaluation(e: Mapping[str, Any]) -> str:
    how = str(e["preset"]) if e.get("preset") else "custom: " + ", ".join(e.get("attacks") or [])
    return f"{how}, n={e.get('n')}" + ("" if e["reliable"] else " (below bar)")


def rows_text(board: Mapping[str, Any]) -> list[list[str]]:
    """A board's rows as text cells (:data:`HEADERS`): rank, model, run, clean, robust [CI], certified, size,
    flags (fired sanity flags, warnings), evaluation (preset or attacks, n, below the bar)."""
    rows = []
    for e in board["rows"]:
        iv = e.get("robust_interval")
        robust = _pct(e["robust"]) + (f" [{iv[0]:.1f}\u2013{iv[1]:.1f}]" if iv else "")
        cert = _pct(e["certified"]) + (f" @ {e['certified_threat']}" if e.get("certified_threat") and
                                       e["certified_threat"] != e["threat"] else "")
        flags = ", ".join(e["flags"])
        if e["warnings"]:
            flags = (flags + "; " if flags else "") + f"{len(e['warnings'])} warning(s)"
        rows.append([str(e["rank"]) if e["rank"] else "\u2013", str(e["model"]), e["run_id"], _pct(e["clean"]), robust,
                     cert, _size(e), flags or "none", _evaluation(e)])
    return rows


HEADERS = ["rank", "model", "run", "clean", "robust [95% CI]", "certified", "size", "flags", "evaluation"]


def terminal_tables(lb: Mapping[str, Any]) -> list[Any]:
    """One rich Table per board, then a line on the unranked rows (rich renderables)."""
    from rich import box
    from rich.table import Table

    out: list[Any] = []
    for b in lb["boards"]:
        t = Table(title=f"{b['dataset']} \u00b7 {b['threat']}", title_justify="left", box=box.SIMPLE_HEAD)
        for h in HEADERS:
            t.add_column(h, overflow="fold", justify="right" if h in ("rank", "clean") else "left")
        for row, e in zip(rows_text(b), b["rows"]):
            t.add_row(*row, style=None if e["reliable"] else "dim")
        out.append(t)
    below = sorted({w for b in lb["boards"] for e in b["rows"] if not e["reliable"] for w in e["why_not"]})
    if below:
        from fortify.report.card import BAR_TEXT

        out.append(f"unranked (dim): evaluations below the bar ({BAR_TEXT}): {'; '.join(below)}")
    return out


def _run_link(e: Mapping[str, Any], page_dir: Path | None) -> str:
    from fortify.report.html_parts import esc

    if not e.get("report_html") or page_dir is None:
        return esc(e["run_id"])
    href = Path(os.path.relpath(e["report_html"], page_dir)).as_posix()
    return f"<a href='{esc(href)}'>{esc(e['run_id'])}</a>"


def render_leaderboard_html(lb: Mapping[str, Any], source: str = "", page_dir: str | Path | None = None) -> str:
    """The leaderboard page: one table per (dataset, threat model), unreliable rows unranked and shaded; with
    ``page_dir`` (the page's folder) each run links to its report.html by a relative path."""
    from fortify.report.card import BAR_TEXT
    from fortify.report.html_parts import esc, page, table

    where = Path(page_dir) if page_dir is not None else None

    f = lb["filters"]
    body = ["<h1>fortify leaderboard</h1>",
            f"<p class='sub'>{esc(source)} \u00b7 ranked by robust accuracy per threat model; only evaluations "
            f"meeting the bar rank ({esc(BAR_TEXT)}); the others are listed unranked (shaded) with the reason."
            + (f" Filters: dataset={esc(f['dataset'])}" if f.get("dataset") else "")
            + (f" threat={esc(f['threat'])}" if f.get("threat") else "") + "</p>"]
    if not lb["boards"]:
        body.append("<p>No run with a robust accuracy matches.</p>")
    for b in lb["boards"]:
        body.append(f"<h2>{esc(b['dataset'])} \u00b7 {esc(b['threat'])}</h2>")
        cells = [[*(esc(c) for c in r[:2]), _run_link(e, where), *(esc(c) for c in r[3:]), esc("; ".join(e["why_not"]))]
                 for r, e in zip(rows_text(b), b["rows"])]
        body.append(table([*HEADERS, "why not ranked"], cells, percent=False, raw=True,
                          row_classes=["" if e["reliable"] else "warn" for e in b["rows"]], nowrap=(0, 3)))
    if lb["skipped"]:
        body.append("<details><summary>Runs not on the board</summary>"
                    + table(["run", "reason"], [[s["run_id"], s["reason"]] for s in lb["skipped"]]) + "</details>")
    return page("fortify leaderboard", body)


__all__ = ["entries", "build_leaderboard", "rows_text", "terminal_tables", "render_leaderboard_html", "HEADERS"]
