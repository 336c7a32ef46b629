"""``fortify runs compare A B [C ...]``: what differs between runs, and whether it is more than noise.

* **Config diff only**: the dotted keys whose values differ (the rest is the same and not shown).
* **Findings** (the report cards' headline figures) side by side; each run after the first is tested
  against the first (the baseline): accuracies measured on ``n`` images with the two-proportion z-test
  (pooled, two-sided; the runs usually attack the *same* test images, and for positively correlated paired
  outcomes this unpaired test is conservative, i.e. its p-value is too large, never too small); other
  figures with intervals by whether their 95% intervals are disjoint; figures without interval are not
  tested.
* **Raw metrics** that differ (``stage/key``), for ``--json`` and the page's appendix.
* **Overlaid curves** on the HTML page: training, robustness, certified vs empirical, Pareto of every
  model of every run.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from fortify.errors import ConfigError
from fortify.report.loading import RunReport

#: significance level of the comparison tests
ALPHA = 0.05


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of ``k1/n1`` vs ``k2/n2``: ``(z, two-sided p)``, with
    ``z = (p2 - p1) / sqrt(p (1 - p) (1/n1 + 1/n2))``, ``p = (k1 + k2) / (n1 + n2)``, ``p-value =
    erfc(|z| / sqrt 2)``; ``(0, 1)`` when both proportions are 0 or both 1. ConfigError for bad counts."""
    for k, n in ((k1, n1), (k2, n2)):
        if not (isinstance(n, int) and n >= 1 and isinstance(k, int) and 0 <= k <= n):
            raise ConfigError(f"need 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k2 / n2 - k1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def config_diff(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The config keys whose values differ between the reports: ``{key, values: [per run]}`` (a key absent
    from a run is ``None``). ``output.*`` is where files went, not how the run was made: skipped. A top-level
    section missing from some runs' configs is one row ``section.*`` (``"set, N keys"`` / None) when its
    stage ran where it is set, and skipped when it did not run anywhere (defaults of an unused stage)."""
    configs = [r.get("config") or {} for r in reports]
    flat = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    rows: list[dict[str, Any]] = []
    collapsed: set[str] = set()
    for k in keys:
        top = k.split(".", 1)[0]
        if top == "output" or top in collapsed:
            continue
        present = [isinstance(c, Mapping) and top in c for c in configs]
        if "." in k and not all(present):
            collapsed.add(top)
            ran = [top in (c.get("stages") or []) for c, p in zip(configs, present) if p]
            if any(ran):
                n = [sum(1 for x in f if x.split(".", 1)[0] == top) for f in flat]
                rows.append({"key": f"{top}.*", "values": [f"set, {m} keys" if p else None
                                                           for m, p in zip(n, present)]})
            continue
        if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1:
            rows.append({"key": k, "values": [f.get(k) for f in flat]})
    return rows


def _test(base: Mapping[str, Any] | None, other: Mapping[str, Any] | None) -> dict[str, Any]:
    """The significance of ``other`` against ``base`` (two findings of the same key)."""
    if base is None or other is None:
        return {"test": None, "significant": None, "text": "not in both runs"}
    a, b = base.get("value"), other.get("value")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
        return {"test": None, "significant": None, "text": "not numeric"}
    diff = float(b) - float(a)  # type: ignore[arg-type]
    if base.get("unit") == "%" and base.get("n") and other.get("n"):
        n1, n2 = int(base["n"]), int(other["n"])
        k1, k2 = round(float(a) / 100 * n1), round(float(b) / 100 * n2)  # type: ignore[arg-type]
        z, p = two_proportion_test(min(max(k1, 0), n1), n1, min(max(k2, 0), n2), n2)
        sig = p < ALPHA
        return {"test": "two-proportion z", "diff": diff, "z": z, "p": p, "significant": sig,
                "text": f"{diff:+.2f} pts, p={p:.3g}" + (" *" if sig else " (n.s.)")}
    ia, ib = base.get("interval"), other.get("interval")
    if ia and ib and None not in (*ia, *ib):
        disjoint = ib[0] > ia[1] or ib[1] < ia[0]
        return {"test": "95% intervals", "diff": diff, "significant": disjoint,
                "text": f"{diff:+.3g}, intervals " + ("disjoint *" if disjoint else "overlap (n.s.)")}
    return {"test": None, "diff": diff, "significant": None, "text": f"{diff:+.3g} (no interval)"}


def findings_diff(runs: Sequence[RunReport]) -> list[dict[str, Any]]:
    """One row per finding key (union over runs, first-seen order): ``{key, label, unit, values: [finding
    or None per run], tests: [None, test of run 2 vs run 1, ...]}``."""
    by_run = [{str(f["key"]): f for f in r.card.get("findings") or []} for r in runs]
    keys = list(dict.fromkeys(k for d in by_run for k in d))
    rows = []
    for k in keys:
        first = next(d[k] for d in by_run if k in d)
        vals = [d.get(k) for d in by_run]
        rows.append({"key": k, "label": first.get("label", k), "unit": first.get("unit", ""), "values": vals,
                     "tests": [None] + [_test(vals[0], v) for v in vals[1:]]})
    return rows


def metrics_diff(runs: Sequence[RunReport], rel: float = 1e-9) -> list[dict[str, Any]]:
    """Raw metrics (``stage/key``) whose values differ between the runs (relative tolerance ``rel``)."""
    flat = [{f"{s}/{k}": v for s, kv in (r.report.get("metrics") or {}).items() for k, v in (kv or {}).items()}
            for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for k in keys:
        vals = [f.get(k) for f in flat]
        nums = [v for v in vals if isinstance(v, (int, float))]
        same = len(nums) == len(vals) and all(abs(v - nums[0]) <= rel * max(1.0, abs(nums[0])) for v in nums)
        if not same and k.split("/")[-1] not in ("seconds", "total_seconds"):
            out.append({"key": k, "values": vals})
    return out


def labels(runs: Sequence[RunReport]) -> list[str]:
    """Short names of the runs in tables and legends: ``A``, ``B``, ... (``A2`` after ``Z``)."""
    return [chr(65 + i % 26) + (str(i // 26 + 1) if i >= 26 else "") for i in range(len(runs))]


def compare_runs(runs: Sequence[RunReport]) -> dict[str, Any]:
    """The comparison of ``runs`` (at least two; the first is the baseline of the tests) as a JSON-able dict:
    ``runs`` (label, id, title, status), ``config_diff``, ``findings``, ``metrics_diff``."""
    if len(runs) < 2:
        raise ConfigError("a comparison needs at least two runs")
    names = labels(runs)
    return {
        "runs": [{"label": n, "run_id": r.run_id, "title": r.card.get("title"), "status": r.status,
                  "report_json": r.from_file, "evaluation": r.card.get("evaluation")} for n, r in zip(names, runs)],
        "baseline": names[0], "alpha": ALPHA,
        "config_diff": config_diff([r.report for r in runs]),
        "findings": findings_diff(runs),
        "metrics_diff": metrics_diff(runs),
    }


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if isinstance(v, (list, dict)) else "\u2013" if v is None else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def terminal_tables(cmp: Mapping[str, Any]) -> list[Any]:
    """rich Tables of a comparison: the runs, the config diff, the findings with their tests."""
    from rich import box
    from rich.table import Table

    from fortify.report.html_parts import interval_text, value_text

    names = [r["label"] for r in cmp["runs"]]
    runs = Table(title="runs", title_justify="left", box=box.SIMPLE_HEAD)
    for c in ("", "run", "model on data", "status"):
        runs.add_column(c, overflow="fold")
    for r in cmp["runs"]:
        runs.add_row(r["label"], r["run_id"], str(r["title"]), r["status"] + ("" if r["report_json"] else
                                                                          " (no report.json: store metrics only)"))
    cfg = Table(title="config differences (only keys that differ)", title_justify="left", box=box.SIMPLE_HEAD)
    cfg.add_column("key", overflow="fold")
    for n in names:
        cfg.add_column(n, overflow="fold")
    for d in cmp["config_diff"]:
        cfg.add_row(d["key"], *(_short(v) for v in d["values"]))
    if not cmp["config_diff"]:
        cfg.add_row("(identical configurations)", *([""] * len(names)))
    fnd = Table(title=f"findings (tests against {cmp['baseline']}; * significant at {cmp['alpha']:g})",
                title_justify="left", box=box.SIMPLE_HEAD)
    fnd.add_column("figure", overflow="fold")
    for n in names:
        fnd.add_column(n, overflow="fold")
    for n in names[1:]:
        fnd.add_column(f"{n} vs {names[0]}", overflow="fold")
    for row in cmp["findings"]:
        cells = []
        for f in row["values"]:
            if f is None:
                cells.append("\u2013")
                continue
            iv = interval_text(f.get("interval"), str(f.get("unit") or ""))
            cells.append(value_text(f.get("value"), str(f.get("unit") or "")) + (f" [{iv}]" if iv != "\u2013" else "")
                         + (" \u26a0" if f.get("warning") else ""))
        fnd.add_row(str(row["label"]), *cells, *(t["text"] for t in row["tests"][1:]))
    return [runs, cfg, fnd]


__all__ = ["ALPHA", "two_proportion_test", "flatten", "config_diff", "findings_diff", "metrics_diff", "labels",
           "compare_runs", "terminal_tables"]
