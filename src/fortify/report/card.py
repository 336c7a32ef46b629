"""The report card: the figures a reader wants first, built from a report dict (``report.json``).

:func:`build_card` gathers the model, the data, the threat models and every section's findings (each
with a link to its section); :func:`model_card` is the RobustBench-style summary written to
``model_card.json`` (Croce et al. 2021, "RobustBench: a standardized adversarial robustness benchmark":
clean and AutoAttack-grade robust accuracy per threat model, the evaluation used, an ``unreliable`` flag).

**Evaluation bar.** A robust accuracy counts as *reliable* (it may rank on a leaderboard) when the
attack cascade ran the ``standard`` or ``thorough`` preset (AutoAttack's suite or stronger; ``fast`` is an
upper bound that can exceed AutoAttack's figure), no sanity flag fired (no sign of gradient masking) and
at least :data:`BAR_MIN_N` images were attacked (a 95% binomial interval no wider than about +-4.4
points).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from fortify.report.findings import threat_label

#: presets that meet the evaluation bar
BAR_PRESETS = ("standard", "thorough")
#: fewest attacked images for a reliable figure
BAR_MIN_N = 500
BAR_TEXT = (f"preset {' or '.join(BAR_PRESETS)} (AutoAttack's suite or stronger), no sanity flag fired, "
            f"n >= {BAR_MIN_N} images")


def section_anchor(index: int, section: Mapping[str, Any]) -> str:
    """The HTML id of the ``index``-th section: ``s2-robustness-attacks``."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(section.get("title") or section.get("stage") or "section").lower()).strip("-")
    return f"s{index}-{slug[:40] or 'section'}"


def _cfg(report: Mapping[str, Any], *path: str) -> Any:
    node: Any = report.get("config") or {}
    for p in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(p)
    return node


def _stages(report: Mapping[str, Any]) -> list[str]:
    ran = [str(s.get("stage")) for s in report.get("sections") or []]
    return list(dict.fromkeys([*(str(s) for s in (_cfg(report, "stages") or [])), *ran]))


def threat_models(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every threat of the run with the stages that used it: ``{threat, label, used_by}``."""
    stages = _stages(report)
    found: dict[str, list[str]] = {}

    def add(t: Any, who: str) -> None:
        if t:
            found.setdefault(str(t), []).append(who)

    if "train" in stages:
        add((_cfg(report, "task", "args") or {}).get("threat"), "training")
    if "robustness" in stages:
        for t in _cfg(report, "robustness", "threats") or []:
            add(t, "attacks")
    if "certify" in stages:
        add(_cfg(report, "certify", "threat"), "certification")
    if "compress" in stages and _cfg(report, "compress", "robust") not in (None, "none"):
        add(_cfg(report, "compress", "threat"), "compression")
    return [{"threat": t, "label": threat_label(t), "used_by": who} for t, who in found.items()]


def evaluation(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """How robust accuracy was measured and whether it meets the bar (None without a robustness stage)."""
    for s in report.get("sections") or []:
        if s.get("stage") == "robustness":
            d = s.get("data") or {}
            m = (report.get("metrics") or {}).get("robustness") or {}
            preset = d.get("preset", _cfg(report, "robustness", "preset"))
            attacks = d.get("attacks", _cfg(report, "robustness", "attacks"))
            n = d.get("n", m.get("n"))
            fired = list(d.get("flags_fired") or [])
            if not fired and m.get("flags_fired"):
                fired = [f"{int(m['flags_fired'])} flag(s)"]
            reasons = []
            if attacks:
                reasons.append("custom attack list")
            elif preset not in BAR_PRESETS:
                reasons.append(f"preset {preset!r} is below the bar")
            if fired:
                reasons.append("sanity flags fired: " + ", ".join(fired))
            if n is None or int(n) < BAR_MIN_N:
                reasons.append(f"n={n} < {BAR_MIN_N}")
            return {"preset": preset if not attacks else None, "attacks": attacks, "n": int(n) if n else None,
                    "flags_fired": fired, "meets_bar": not reasons, "why_not": reasons, "bar": BAR_TEXT}
    return None


def _params(report: Mapping[str, Any]) -> int | None:
    v = ((report.get("metrics") or {}).get("compress") or {}).get("params_total[original]")
    return int(v) if v is not None else None


def build_card(report: Mapping[str, Any]) -> dict[str, Any]:
    """The card of a report dict: ``model``, ``data``, ``threats``, ``evaluation``, ``findings`` (each
    Finding's fields plus ``section`` (anchor), ``section_title``, ``stage``) and the ``warnings`` count."""
    findings: list[dict[str, Any]] = []
    for i, s in enumerate(report.get("sections") or []):
        for f in s.get("findings") or []:
            findings.append({**f, "section": section_anchor(i, s), "section_title": s.get("title", ""),
                             "stage": s.get("stage", "")})
    task = _cfg(report, "task", "name")
    stages = _stages(report)
    acc = (report.get("metrics") or {}).get("accuracy") or {}
    return {
        "title": f"{_cfg(report, 'model', 'name') or 'model'} on {_cfg(report, 'data', 'name') or 'data'}",
        "model": {"name": _cfg(report, "model", "name"), "params": _params(report),
                  "training": (f"{task}, {_cfg(report, 'train', 'epochs')} epochs" if "train" in stages
                               else f"loaded from {_cfg(report, 'load', 'path')}" if "load" in stages else None)},
        "data": {"name": _cfg(report, "data", "name"), "test_images": int(acc["test_examples"])
                 if acc.get("test_examples") is not None else None},
        "threats": threat_models(report),
        "evaluation": evaluation(report),
        "findings": findings,
        "warnings": sum(1 for f in findings if f.get("warning")),
    }


def _find(findings: Sequence[Mapping[str, Any]], prefix: str) -> list[Mapping[str, Any]]:
    return [f for f in findings if str(f.get("key", "")).startswith(prefix)]


def _figure(f: Mapping[str, Any]) -> dict[str, Any]:
    iv = f.get("interval") or [None, None]
    return {"value": f.get("value"), "unit": f.get("unit"), "n": f.get("n"), "ci95": list(iv),
            "detail": f.get("detail"), "warning": f.get("warning") or None}


def model_card(report: Mapping[str, Any]) -> dict[str, Any]:
    """RobustBench-style model card of a report dict (``model_card.json``): per threat model the clean and
    robust accuracy with n and 95% interval, ``autoattack_acc`` only for an evaluation meeting the bar,
    certified accuracy, compression, the evaluation used and ``unreliable`` when it does not meet the bar."""
    card = report.get("card") or build_card(report)
    fs = card["findings"]
    ev = card.get("evaluation")
    clean = next(iter(_find(fs, "clean_accuracy")), None)
    robust = {str(f["key"]).split(".", 1)[1]: _figure(f) for f in _find(fs, "robust_accuracy.")}
    first = next((t for t in robust if t != "union"), None)
    norm, _, eps = (first or ":").partition(":")
    meets = bool(ev and ev["meets_bar"])
    return {
        "schema": "fortify-model-card/1",
        "run_id": report.get("run_id"), "name": card["title"], "architecture": card["model"]["name"],
        "params": card["model"]["params"], "dataset": card["data"]["name"], "training": card["model"]["training"],
        "threat_model": {"linf": "Linf", "l2": "L2", "l1": "L1"}.get(norm, norm or None), "eps": eps or None,
        "clean_acc": clean.get("value") if clean else None,
        "robust_acc": robust,
        "autoattack_acc": robust[first]["value"] if first and meets else None,
        "certified_acc": {str(f["key"]).split(".", 1)[1]: _figure(f) for f in _find(fs, "certified_accuracy.")},
        "compression": {str(f["key"]).split(".", 1)[1]: _figure(f) for f in _find(fs, "compress.")},
        "evaluation": ev, "unreliable": bool(ev) and not meets,
        "additional_data": False, "number_forward_passes": 1,
        "footnote": (None if not ev or meets else "not a leaderboard-grade evaluation: " + "; ".join(ev["why_not"])),
        "other_findings": [_figure(f) | {"key": f["key"], "label": f["label"]} for f in fs
                           if not str(f.get("key", "")).startswith(("clean_accuracy", "robust_accuracy.",
                                                                     "certified_accuracy.", "compress."))],
        "versions": report.get("versions"), "seed": report.get("seed"),
    }


__all__ = ["BAR_PRESETS", "BAR_MIN_N", "BAR_TEXT", "section_anchor", "threat_models", "evaluation", "build_card",
           "model_card"]
