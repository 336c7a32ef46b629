"""``report.json``: everything measured in a run, machine-readable."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from fortify.io import write_atomic
from fortify.report.sections import Section


def _clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples lists, unknown objects strings."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if hasattr(v, "item") and callable(v.item):
        try:
            return _clean(v.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(v)


def jsonable(v: Any) -> Any:
    """A JSON-safe copy of ``v`` (NaN/inf -> None, tuples -> lists, tensors/numpy scalars -> numbers)."""
    return _clean(v)


def build_report(*, run_id: str, verb: str, status: str, config: Mapping[str, Any], seed: int | None,
                 versions: Mapping[str, str], metrics: Mapping[str, Mapping[str, Any]],
                 history: Sequence[Mapping[str, Any]], artefacts: Mapping[str, str],
                 sections: Sequence[Section], error: str | None = None,
                 timing: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The report as a dict: ``metrics`` is ``{stage: {key: value}}``, ``history`` per-epoch dicts."""
    return _clean({
        "run_id": run_id, "verb": verb, "status": status, "error": error, "seed": seed,
        "config": config, "versions": versions, "metrics": metrics, "history": list(history),
        "artefacts": artefacts, "timing": dict(timing or {}), "sections": [s.to_dict() for s in sections],
    })


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``report`` (from :func:`build_report`) as indented JSON, atomically."""
    return write_atomic(path, json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
