"""Latency in fortify.compress.measure goes through fortify.timing: interleaved rounds, both clocks,
speed-ups only with their interval; the compress stage's metrics, report text and the main job's summary
line never carry a bare ratio (the issue's ``speedup_b1 528.3`` from a loaded machine)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fortify.cli.output import _pillar_rows
from fortify.compress.measure import LatencyRuns, Measurement, format_table, latency_runs, measure
from fortify.pipeline.stages.compress import CompressStage
from fortify.timing import CPU, WALL, Interleaved, SpeedUp, TimingPolicy

FAST = TimingPolicy(min_rounds=5, max_rounds=40, budget_s=1.5, warmup=1, min_sample_s=0.002)


def _big() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10)).eval()


def test_latency_runs_interleave_both_clocks_and_rank_real_costs(cnn: nn.Module, test_data) -> None:
    x = test_data[0][:2]
    small = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    runs = latency_runs({"big": _big(), "small": small}, x, batch_sizes=(64,), policy=FAST, threads=1)
    run = runs[64]
    assert run.rounds >= FAST.min_rounds and run.inner["small"] >= run.inner["big"]
    s = run.speedup("big", "small")
    # ~1.85 M vs ~8 k multiply-accumulates per image: a real, large speed-up, claimed with its interval
    assert s.clock == CPU and s.significant and s.ci_low > 5 and s.wall is not None and s.wall.clock == WALL
    assert s.text().startswith(f"{s.ratio:.1f}x faster (95% CI") and f"{s.n} interleaved rounds" in s.text()


def test_measure_fills_both_clocks_and_speedups_against_the_first(cnn: nn.Module, test_data) -> None:
    x, y = test_data[0][:64], test_data[1][:64]
    twin = copy.deepcopy(cnn)
    rows = measure({"original": cnn, "same": twin}, x, y, threat=None, robust="none", threads=1, repeats=5)
    a, b = rows
    for r in rows:
        assert r.latency_b1_ms > 0 and r.latency_b256_ms > 0 and r.latency_b1_cpu_ms > 0 and r.latency_b256_cpu_ms > 0
    assert a.speedups == {} and set(b.speedups) == {1, 256}
    for s in b.speedups.values():  # the same network twice: nothing like a real speed-up
        assert 0.75 < s.ratio < 1.33 and s.ci_low < 1.33 and s.ci_high > 0.75
    assert "speed-up b256 (CPU time, 1 thread)" in format_table(rows) and "95% CI" in format_table(rows)
    assert b.to_dict()["speedups"][256]["ci_low"] == b.speedups[256].ci_low  # JSON-ready for compress.json


def _rows_with(speedup: SpeedUp) -> list[Measurement]:
    """Two measurement rows: the issue's float model (83 ms wall at batch 1 on a loaded machine) and int8."""
    base = dict(params_total=1, params_nonzero=1, macs=1, macs_nonzero=1, clean_acc=0.98, robust_acc=0.9)
    a = Measurement("original", 4000, latency_b1_ms=83.0, latency_b256_ms=30.0, latency_b1_cpu_ms=0.4,
                    latency_b256_cpu_ms=25.0, **base)
    b = Measurement("compressed", 1000, latency_b1_ms=0.157, latency_b256_ms=13.0, latency_b1_cpu_ms=0.3,
                    latency_b256_cpu_ms=11.0, speedups={256: speedup, 1: speedup}, **base)
    return [a, b]


WALL_OK = SpeedUp(30e-3, 13e-3, 2.31, 1.9, 2.8, 30, 0.2, False, WALL, threads=2)
WALL_CONTENDED = SpeedUp(83e-3, 0.157e-3, 528.3, 300.0, 700.0, 7, 1.6, True, WALL, threads=2, contention=95.0)
CASES = [
    (SpeedUp(25e-3, 11e-3, 2.27, 2.1, 2.5, 30, 0.05, False, threads=1, wall=WALL_OK),
     "batch 256: 2.27x faster (95% CI 2.10-2.50, CPU time, 1 thread, 30 interleaved rounds; wall clock, 2 threads: "
     "2.31x faster, 95% CI 1.90-2.80)"),
    (SpeedUp(25e-3, 24e-3, 1.04, 0.91, 1.18, 100, 0.4, True, threads=1, wall=WALL_CONTENDED),
     "batch 256: no measurable speed-up (ratio 1.04, 95% CI 0.91-1.18, CPU time, 1 thread, 100 interleaved rounds, "
     "noisy; wall clock, 2 threads: not comparable: 2 threads ran 95.0x slower than 1 thread (contended machine))"),
]


@pytest.mark.parametrize("speedup, expect", CASES)
def test_stage_metrics_and_main_job_summary_show_ratio_only_with_interval(speedup: SpeedUp, expect: str) -> None:
    rows = _rows_with(speedup)
    metrics = CompressStage.metrics(rows, 1.0, 2.0)
    assert metrics["speedup_b256"] == speedup.ratio and metrics["speedup_b256_ci_low"] == speedup.ci_low
    assert metrics["speedup_b256_noisy"] == float(speedup.noisy) and metrics["speedup_b256_rounds"] == speedup.n
    assert metrics["latency_b1_cpu_ms[original]"] == 0.4
    # the old summary took wall-clock latencies of one noisy run: 83 / 0.157 = 528.7x
    assert "528" not in f"{metrics['speedup_b1']:.1f}"
    ctx = SimpleNamespace(metrics={"compress": {k: float(v) for k, v in metrics.items()}},
                          config=SimpleNamespace(sections={}))
    (label, line), = [r for r in _pillar_rows(ctx) if r[0] == "compressed model"]
    assert line.startswith("4.0x smaller on disk (4000 -> 1000 bytes); " + expect + "; clean ")
    ctx.metrics["compress"] = {k: v for k, v in ctx.metrics["compress"].items() if not k.startswith("speedup")}
    (_, bare), = [r for r in _pillar_rows(ctx) if r[0] == "compressed model"]
    assert "faster" not in bare and "x faster" not in bare and bare.startswith("4.0x smaller on disk (4000 -> 1000 "
                                                                                "bytes); clean ")


def test_stage_section_text_uses_the_interval() -> None:
    from pathlib import Path

    sec = SimpleNamespace(describe=lambda: "int8", threads=2, threat="linf:0.3", drift_methods=[], n_drift=0,
                          robust="pgd", n_robust=100)
    rows = _rows_with(SpeedUp(25e-3, 24e-3, 1.04, 0.91, 1.18, 100, 0.05, False))
    metrics = CompressStage.metrics(rows, 1.0, 2.0)
    section = CompressStage.section(sec, rows, [], metrics, Path("/tmp/x/model.onnx"), None, Path("/tmp/x"))
    assert "no measurable speed-up (ratio 1.04, 95% CI 0.91-1.18" in section.text
    assert "x faster" not in section.text
    speed_col = section.tables[0].headers.index("speed-up b256 (CPU time, 1 thread)")
    assert section.tables[0].rows[1][speed_col].startswith("no measurable difference (ratio 1.04")


def _run(medians_ms: dict[str, float], seed: int) -> Interleaved:
    """An interleaved run with 30 rounds of 5% noise around the given medians (both clocks alike)."""
    rng = np.random.default_rng(seed)
    samples = {n: {c: m / 1000 * rng.lognormal(0, 0.05, 30) for c in (CPU, WALL)} for n, m in medians_ms.items()}
    return Interleaved(samples, {n: 1 for n in medians_ms}, TimingPolicy())


def test_contended_thread_pool_gives_the_one_thread_ratio_and_no_wall_ratio() -> None:
    # what this machine measured (2 cores shared with other jobs): the float MLP at batch 1 takes 0.07 ms on one
    # thread and 7.3 ms on two (CPU time too: the OpenMP pool spins); ONNX Runtime 0.037 ms and 0.2 ms
    runs = LatencyRuns({1: _run({"original": 0.07, "compressed": 0.037}, 0)},
                       {1: _run({"original": 7.3, "compressed": 0.2}, 1)}, threads=2, baseline="original")
    s = runs.speedup("compressed", 1)
    assert s.threads == 1 and 1.7 < s.ratio < 2.1 and s.significant
    assert s.wall is not None and s.wall.contention > 50 and s.wall.ratio > 30  # kept in the record ...
    text = s.text()  # ... but never printed as a speed-up
    assert text.startswith(f"{s.ratio:.2f}x faster (95% CI") and "CPU time, 1 thread, 30 interleaved rounds" in text
    assert "; wall clock, 2 threads: not comparable: 2 threads ran" in text and f"{s.wall.ratio:.1f}x" not in text
    stored = s.to_metrics("speedup_b1")
    assert "speedup_b1_wall" not in stored and stored["speedup_b1_wall_contention"] == s.wall.contention
    assert max(stored.values()) == s.wall.contention  # the report's metric table shows no ratio above it
    back = SpeedUp.from_metrics(stored, "speedup_b1")
    assert back is not None and back.text() == text
    quiet = LatencyRuns({1: _run({"original": 0.07, "compressed": 0.037}, 0)},
                        {1: _run({"original": 0.06, "compressed": 0.03}, 1)}, threads=2, baseline="original")
    assert quiet.speedup("compressed", 1).wall.contention == 0.0
