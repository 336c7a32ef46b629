"""The scan stage's verdict says what was looked at: STRIP alone is no model-level verdict, and flagged
training data shows in the verdict even when the model-level search found nothing."""
from __future__ import annotations

from pathlib import Path

from conftest import Planted
from fortify.config import resolve
from fortify.pipeline import RunContext
from fortify.pipeline.stages.scan import ScanStage


def test_strip_only_and_data_level_verdicts(tmp_path: Path, planted: Planted) -> None:
    cfg = resolve({"stages": ["scan"], "output": {"dir": str(tmp_path)},
                   "scan": {"n": 60, "detectors": ["strip"], "data_level": True}}, check_names=False)
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", model=planted.model, quiet=True, stage="scan")
    ctx.set_data("test", planted.x_test[:60], planted.y_test[:60])
    ctx.set_data("train", planted.x_test[60:460], planted.y_test[60:460])
    res = ScanStage().run(ctx)
    assert res.verdict.startswith("no model-level scan")
    flagged = [n for n in ("activation-clustering", "spectral-signatures") if res.detections[n]["flagged"]]
    assert ("training data flagged as poisoned by" in res.verdict) == bool(flagged)
    assert all(n in res.verdict for n in flagged)
    card = next(f for f in ctx.sections[-1].findings if f.key == "scan.verdict")
    assert card.value == res.verdict and card.warning  # not a clean bill of health
