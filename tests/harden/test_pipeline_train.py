"""The pipeline's train stage runs the task's harden callbacks: every epoch record of an adversarial
task carries the monitor's clean / PGD-10 robust accuracy, training wall time and cumulative gradient
evaluations, and these land in the run store as per-epoch rows (stage ``train``, step = epoch);
a standard task's records and rows stay free of them."""
from __future__ import annotations

from pathlib import Path

import torch

from fortify.config import resolve
from fortify.pipeline import run_pipeline
from fortify.store import RunStore
from fortify.train.adversarial import robust_accuracy
from fortify.threat import ThreatModel

MONITOR = ("clean_acc", "robust_acc", "train_wall_s", "grad_evals")


def _run(tmp_path: Path, task: dict) -> tuple[object, object]:
    torch.set_num_threads(1)
    cfg = resolve({
        "stages": ["train"], "output": {"dir": str(tmp_path / "runs")},
        "data": {"name": "mnist-5k", "train_limit": 256, "test_limit": 48},
        "model": {"name": "small-cnn"},
        "task": task,
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": 0.002, "weight_decay": 0.0, "seed": 0},
    })
    store = RunStore(tmp_path / "fortify.db")
    ctx = run_pipeline(cfg, verb="train", argv=["train"], store=store, quiet=True)
    return ctx, store.get_run(ctx.run_id)


def test_train_stage_records_monitor_metrics_per_epoch_in_the_store(tmp_path: Path) -> None:
    ctx, rec = _run(tmp_path, {"name": "fast_at", "args": {
        "threat": "linf:0.1", "monitor": {"n": 32, "steps": 5}, "co_guard": {"max_drop": 1.0, "max_gap": 1.0}}})
    assert rec.status == "ok"
    hist = ctx.history
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert set(MONITOR) | {"co_events", "steps", "step_ratio", "ga_lambda"} <= set(h), sorted(h)
        assert 0 <= h["robust_acc"] <= h["clean_acc"] <= 1
        assert (h["steps"], h["step_ratio"], h["ga_lambda"], h["co_events"]) == (1, 1.25, 0, 0)
    assert hist[1]["grad_evals"] > hist[0]["grad_evals"] > 0
    assert hist[1]["train_wall_s"] >= hist[0]["train_wall_s"] > 0
    # store: one row per metric per epoch, step = epoch, stage = train, values equal the records
    rows = {(m.key, m.step): m.value for m in rec.metrics if m.stage == "train" and m.step is not None}
    for h in hist:
        for k in MONITOR + ("co_events",):
            assert rows[(k, h["epoch"])] == h[k], k
    # robust_acc is the PGD-5 accuracy of the final model on the first 32 test images (independent count)
    x, y = ctx.data("test")
    clean, robust = robust_accuracy(ctx.model, x[:32], y[:32], ThreatModel("linf", 0.1), steps=5, seed=0)
    assert (clean, robust) == (hist[-1]["clean_acc"], hist[-1]["robust_acc"])


def test_train_stage_leaves_standard_tasks_without_callbacks(tmp_path: Path) -> None:
    ctx, rec = _run(tmp_path, {"name": "standard", "args": {}})
    assert rec.status == "ok"
    assert all(not set(MONITOR[:3]) & set(h) for h in ctx.history)
    keys = {m.key for m in rec.metrics if m.stage == "train"}
    assert "train_loss" in keys and not {"robust_acc", "clean_acc", "co_events"} & keys
