"""Progress off a terminal (issue 20 items 1 and 5): the compact epoch line fits 100 columns on realistic records,
the shared progress helper prints periodic / done lines to a non-terminal stderr, stays silent unless enabled, and
the trainer, robustness curves, certification chunks and compression steps report through it."""
from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn

from fortify import progress
from fortify.errors import ConfigError
from fortify.train import train
from fortify.train.progress import EpochProgress, epoch_line

# epoch records as the trainer writes them (copied from runs of the shipped recipes: default = pgd_at with the
# robustness monitor, trades, ibp, fast_at with the catastrophic-overfitting guard)
RECORDS: dict[str, dict[str, Any]] = {
    "pgd_at": {"epoch": 3, "train_loss": 2.417320132255554, "train_acc": 0.025, "val_acc": 0.14,
               "val_loss": 2.2892112731933594, "lr": 0.0015, "adv_acc": 0.025, "eps": 0.15, "steps": 2.5,
               "wall_s": 12.3159, "samples": 200, "grad_evals": 600, "clean_acc": 0.14, "robust_acc": 0.63,
               "train_wall_s": 12.3159, "monitor_s": 0.5, "rolled_back": False},
    "trades": {"epoch": 3, "train_loss": 2.318537712097168, "train_acc": 0.09, "val_acc": 0.24,
               "val_loss": 2.280677490234375, "lr": 0.001, "adv_acc": 0.09, "eps": 0.15, "steps": 10.0,
               "natural": 2.2951903343200684, "robust_kl": 0.0038912412431089116, "wall_s": 0.29121075100010785,
               "samples": 200, "grad_evals": 1200, "clean_acc": 0.24, "robust_acc": 0.0,
               "train_wall_s": 0.29121075100010785, "monitor_s": 0.03946372600057657, "rolled_back": False},
    "ibp": {"epoch": 3, "train_loss": 2.6600552797317505, "train_acc": 0.105, "val_acc": 0.06,
            "val_loss": 2.3063404846191404, "lr": 0.002, "eps": 0.1, "kappa": 0.75, "robust_loss": 3.7235169410705566,
            "verified": 0.0, "wall_s": 0.10543711399986933, "samples": 200, "grad_evals": 200, "rolled_back": False},
    "fast_at": {"epoch": 3, "train_loss": 2.378185749053955, "train_acc": 0.025, "val_acc": 0.11,
                "val_loss": 2.2923419189453127, "lr": 0.001, "adv_acc": 0.025, "eps": 0.15, "steps": 1.0,
                "step_ratio": 1.25, "ga_lambda": 0.0, "wall_s": 0.08340208000026905, "samples": 200,
                "grad_evals": 300, "clean_acc": 0.11, "robust_acc": 0.0, "train_wall_s": 0.08340208000026905,
                "monitor_s": 0.039151747000687465, "ramp_robust_acc": 0.0, "co_events": 0.0, "rolled_back": True},
    # worst case: every headline field present with its widest rendering
    "widest": {"epoch": 1000, "train_loss": 0.000123456, "train_acc": 1.0, "val_acc": 1.0, "robust_acc": 1.0,
               "verified": 1.0, "eps": 0.0313725490196, "lr": 0.000123456789, "wall_s": 86399.0, "monitor_s": 1.0,
               "rolled_back": True, **{f"extra_metric_{i}": 0.123456789 for i in range(20)}},
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_epoch_line_fits_100_columns_and_keeps_the_headline(name: str) -> None:
    rec = RECORDS[name]
    line = epoch_line(rec, 1000)
    assert len(line) <= 100 and "\n" not in line, line
    assert line.startswith(f"epoch {rec['epoch']}/1000  loss ")
    assert f"train {rec['train_acc']:.1%}" in line
    assert ("[rolled back]" in line) == bool(rec["rolled_back"])
    assert "extra_metric" not in line and "grad_evals" not in line and "samples" not in line  # details: store


def test_epoch_line_formats_the_example_of_the_issue() -> None:
    rec = {"epoch": 3, "train_loss": 0.4123, "train_acc": 0.912, "robust_acc": 0.63, "lr": 0.05, "wall_s": 12.31}
    assert epoch_line(rec, 8) == "epoch 3/8  loss 0.412  train 91.2%  robust 63.0%  lr 0.05  12.3 s"


def test_epoch_line_drops_least_important_fields_first_when_narrow() -> None:
    rec = RECORDS["pgd_at"]
    full = epoch_line(rec, 8)
    assert "eps 0.15" in full and "lr 0.0015" in full and "val 14.0%" in full
    narrow = epoch_line(rec, 8, width=50)
    assert len(narrow) <= 50 and narrow.startswith("epoch 3/8  loss 2.42  train 2.5%")
    assert "eps" not in narrow  # eps goes first, the loss and accuracies stay


def test_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)
    assert progress.interval() == progress.DEFAULT_INTERVAL
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.5")
    assert progress.interval() == 0.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(progress.INTERVAL_ENV, bad)
        with pytest.raises(ConfigError, match=progress.INTERVAL_ENV):
            progress.interval()


def test_tasks_are_silent_unless_enabled(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)
    with progress.task("hidden", total=2) as t:
        t.advance()
    progress.echo("hidden line")
    with progress.enabled(False), progress.task("hidden too", total=1) as t:
        t.advance()
    assert capsys.readouterr().err == ""
    assert not progress.is_enabled() and progress.open_tasks() == 0


def test_plain_mode_prints_periodic_and_done_lines(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    monkeypatch.setattr(progress, "MIN_SECONDS", 0.2)
    with progress.enabled():
        with progress.task("fitting detector", total=4, unit="batches") as t:
            t.advance(info="batch 1")
            time.sleep(0.4)  # never advanced meanwhile: the ticker still reports
            t.advance(3)
        with progress.task("quick", total=1) as q:  # < MIN_SECONDS: no done line
            q.advance()
    lines = capsys.readouterr().err.splitlines()
    periodic = [ln for ln in lines if ln.startswith("fitting detector  1/4 batches (25%)  batch 1")]
    assert len(periodic) >= 2, lines
    assert "eta" in periodic[0]
    assert lines[-1].startswith("fitting detector  4/4 batches (100%)  batch 1  done in ")
    assert not any(ln.startswith("quick") for ln in lines)
    assert all(len(ln) <= progress.WIDTH for ln in lines)
    assert progress.open_tasks() == 0


def test_terminal_mode_uses_one_live_display_for_nested_tasks(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress, "_terminal", lambda: True)
    with progress.enabled():
        with progress.task("outer", total=2) as outer:
            live = progress._DISPLAY.rich
            assert live is not None
            with progress.task("inner", total=3) as inner:
                assert progress._DISPLAY.rich is live and len(live.tasks) == 2  # nested: same display
                inner.advance(3)
                progress.echo("epoch 1/1  loss 0.1")
            assert len(live.tasks) == 1
            outer.advance(2)
    assert progress._DISPLAY.rich is None  # the last task stopped the display
    assert "epoch 1/1  loss 0.1" in capsys.readouterr().err


def _blobs(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = (0.5 + 0.2 * (2 * y.float() - 1)).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1), y


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


def test_trainer_prints_one_flushed_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _blobs()
    hist = train(_mlp(), (x, y), val=(x, y), epochs=3, batch_size=16, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [epoch_line(h, 3) for h in hist]
    assert [ln.split("  ")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_trainer_progress_none_follows_the_enclosing_block(capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.train import Trainer

    x, y = _blobs()
    Trainer(_mlp(), "standard", {"epochs": 1, "batch_size": 32}, progress=None).fit((x, y))
    assert capsys.readouterr().err == ""
    with progress.enabled(), progress.task("compress", total=1):
        Trainer(_mlp(), "standard", {"epochs": 1, "batch_size": 32}, progress=None).fit((x, y))
    err = capsys.readouterr().err
    assert err.startswith("  epoch 1/1  loss ")  # nested in a step: indented


def test_epoch_progress_disabled_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    with EpochProgress(False, 2, "standard") as bar:
        bar.start_epoch(0, 3)
        bar.step(0.5, 0.9)
        bar.end_epoch({"epoch": 1, "train_loss": 0.5})
    assert capsys.readouterr().err == "" and bar.last == "loss 0.5"


def test_curves_certify_and_compress_report_progress(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fortify.certify import certify, certified_accuracy_curve
    from fortify.compress import compress
    from fortify.evaluate import robustness_curve
    from fortify.threat import ThreatModel

    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)  # every task prints its done line
    x, y = _blobs(16)
    model = _mlp().eval()
    robustness_curve(model, x, y, "linf", [0.0, 0.1], budget=0.05, checks=1)
    certify(model, x, y, ThreatModel("linf", 0.05), "ibp")
    assert capsys.readouterr().err == ""  # library calls: silent
    with progress.enabled():
        robustness_curve(model, x, y, "linf", [0.0, 0.1], budget=0.05, checks=1)
        certify(model, x, y, ThreatModel("linf", 0.05), "ibp", batch_size=4)
        certified_accuracy_curve(model, x, y, "linf", [0.0, 0.05], "ibp")
        compress(model, [{"transform": "magnitude_prune", "sparsity": 0.5, "finetune_task": "standard"}], (x, y))
    lines = capsys.readouterr().err.splitlines()
    assert any(ln.startswith("curve linf  ") and "attacks (100%)" in ln and "done in" in ln for ln in lines), lines
    assert any(ln.startswith("certify ibp linf:0.05  4/4 chunks (100%)  16/16 images  done") for ln in lines), lines
    assert any(ln.startswith("certified curve ibp  2/2 radii") for ln in lines), lines
    assert any(ln.startswith("  epoch 1/1  loss ") for ln in lines), lines  # fine-tuning inside the step
    assert any(ln.startswith("compress  1/1 steps (100%)  magnitude_prune  done") for ln in lines), lines
