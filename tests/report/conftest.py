"""Two tiny finished runs of the main job (shared by the report, compare, leaderboard and browser tests).

Run A: the default stages minus explain on a tiny budget (robust training, clean accuracy, attack cascade
with curves, certification with its curve, compression without latency timing, save, report). Run B: the
same with one epoch more, a second threat (linf:0.3 and linf:0.1, so a union figure too) and no
robustness curves (the slowest part)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fortify.cli import main
from fortify.store import RunStore

TINY = ["data.train_limit=200", "data.test_limit=60", "train.batch_size=100", "task.args.monitor.n=50",
        "robustness.n=30", "certify.n=10", "certify.curve_points=3", "compress.n_robust=20",
        "compress.n_test=60", "compress.n_train=100", "compress.latency=false", "compress.repeats=1",
        "stages=[train,accuracy,robustness,certify,compress,save,report]"]


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """``(runs folder, [id of run A, id of run B])``."""
    out = tmp_path_factory.mktemp("report-runs")
    for extra in (["train.epochs=1", "robustness.curve_points=8"],
                  ["train.epochs=2", "robustness.curve_points=0", "robustness.threats=[linf:0.3,linf:0.1]"]):
        rc = main(["run", "--out", str(out), "--threads", "1", "-q", *TINY, *extra])
        assert rc == 0
    ids = [r.id for r in reversed(RunStore(out / "fortify.db").list_runs())]
    return out, ids
