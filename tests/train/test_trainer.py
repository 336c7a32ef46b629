"""Trainer behaviour: loss goes down, determinism, replays, metrics, callbacks, rollback, progress."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.train import TASKS, RollbackOnDrop, Task, TaskOutput, Trainer, TrainConfig, create_task, train


def blobs(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated Gaussian blobs in 2-D: a linearly separable 3-class problem."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 2.0], [-2.0, -2.0]])
    y = torch.arange(n) % 3
    x = centers[y] + 0.4 * torch.randn(n, 2, generator=g)
    return x, y


def mlp(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


class NoisyTask(Task):
    """Cross-entropy on inputs plus Gaussian noise drawn from the call's ``generator`` (the trainer's)."""

    def __init__(self, sigma: float = 0.3, replays: int = 1) -> None:
        super().__init__()
        self.sigma = sigma
        self.replays = replays
        self.seen: list[torch.Tensor] = []
        self.progress_log: list[tuple[float, int]] = []

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        self.seen.append(x.clone())
        self.progress_log.append((self.progress, self.epoch))
        noise = self.sigma * torch.randn(x.shape, generator=generator)
        logits = model(x + noise)
        return TaskOutput(F.cross_entropy(logits, y), logits,
                          {"grad_evals": 3 * x.shape[0], "bsz": float(x.shape[0]), "lr": 123.0})


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adam", 0.02)])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_every_configuration_lowers_the_loss(optimizer: str, lr: float, schedule: str) -> None:
    x, y = blobs()
    model = mlp()
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    hist = train(model, (x, y), val=(x, y), epochs=6, batch_size=16, optimizer=optimizer, lr=lr,
                 schedule=schedule, warmup=0.1 if schedule != "onecycle" else None, grad_clip=5.0,
                 progress=False)
    assert len(hist) == 6 and [r["epoch"] for r in hist] == list(range(1, 7))
    assert hist[-1]["val_loss"] < 0.5 * before
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_acc"] >= 0.95
    assert model.training and all(m.training for m in model.modules())  # flags as handed over (train mode)
    # val_loss is an honest clean loss of the final model
    with torch.no_grad():
        assert hist[-1]["val_loss"] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_seeded_runs_are_bit_identical_and_seeds_matter() -> None:
    x, y = blobs()

    def run(seed: int) -> torch.Tensor:
        model = mlp(dropout=0.2)
        cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=seed)
        Trainer(model, NoisyTask(), cfg, progress=False).fit((x, y))
        return flat(model)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_rng_of_caller_is_preserved() -> None:
    x, y = blobs(24)
    model = mlp(dropout=0.5)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    train(model, (x, y), epochs=1, batch_size=8, progress=False)
    assert torch.equal(torch.rand(4), expected)


def test_records_progress_grad_evals_and_task_metrics() -> None:
    x, y = blobs(40)
    task = NoisyTask()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="constant")
    hist = Trainer(mlp(), task, cfg, progress=False).fit((x, y))
    # batches of 16, 16, 8: sample-weighted mean of the batch size is (256 + 256 + 64) / 40
    assert hist[0]["bsz"] == pytest.approx(14.4)
    assert hist[0]["task_lr"] == 123.0 and hist[0]["lr"] == pytest.approx(0.05)
    assert [r["samples"] for r in hist] == [40, 40]
    assert [r["grad_evals"] for r in hist] == [40 * 4, 80 * 4]  # 1 param grad + 3 task grads per sample
    assert hist[0]["val_acc"] is None and 0.0 <= hist[0]["train_acc"] <= 1.0
    T = 6
    assert task.progress_log == [(t / T, t // 3) for t in range(T)]


def test_replays_step_each_batch_m_times_and_cover_the_data_once_per_m_epochs() -> None:
    x, y = blobs(64)
    x = x + torch.arange(64).float()[:, None] * 1e-3  # distinct rows
    task = NoisyTask(replays=2)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    hist = Trainer(mlp(), task, cfg, progress=False).fit((x, y))
    # 4 batches per pass; each epoch: 2 batches x 2 replays = 4 steps = one plain epoch's worth
    assert len(task.seen) == 8 and [r["samples"] for r in hist] == [64, 64]
    for i in range(0, 8, 2):
        assert torch.equal(task.seen[i], task.seen[i + 1])
    rows = torch.cat(task.seen[::2])
    assert torch.equal(rows.sort(0).values, x.sort(0).values)  # two epochs = one pass over the data
    with pytest.raises(ConfigError, match="replays"):
        Trainer(mlp(), NoisyTask(replays=5), cfg, progress=False).fit((x, y))


def test_callbacks_merge_metrics_and_see_steps() -> None:
    x, y = blobs(32)
    steps: list[int] = []

    class CB:
        def on_step_end(self, trainer: Trainer, step: int, out: TaskOutput) -> None:
            steps.append(step)
            assert isinstance(out, TaskOutput) and out.loss.dim() == 0 and trainer.global_step == step

        def on_epoch_end(self, trainer: Trainer, record: dict) -> dict:
            return {"robust_acc": torch.tensor(0.25), "note": "ok"}

    hist = train(mlp(), (x, y), epochs=2, batch_size=16, progress=False, callbacks=[CB()])
    assert steps == [1, 2, 3, 4]
    assert all(r["robust_acc"] == 0.25 and isinstance(r["robust_acc"], float) and r["note"] == "ok"
               for r in hist)


@pytest.mark.parametrize("use_disk", [False, True])
def test_rollback_restores_previous_epoch_model_optimizer_and_task(tmp_path: Any, use_disk: bool) -> None:
    x, y = blobs(32)

    class StatefulTask(NoisyTask):
        def __init__(self) -> None:
            super().__init__(sigma=0.0)
            self.calls = 0

        def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None) -> TaskOutput:
            self.calls += 1
            return super()._run(model, x, y, generator)

        def state_dict(self) -> dict[str, Any]:
            return {"calls": self.calls}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.calls = state["calls"]

    snaps: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    class RollbackAt2:
        def on_epoch_end(self, trainer: Trainer, record: dict) -> dict:
            mom = torch.cat([s["momentum_buffer"].flatten() for s in trainer.optimizer.state.values()])
            snaps[record["epoch"]] = (flat(trainer.model), mom.clone(), trainer.task.calls)
            return {"rollback": record["epoch"] == 2}

    task = StatefulTask()
    trainer = Trainer(mlp(), task, TrainConfig(epochs=2, batch_size=16, lr=0.1), progress=False,
                      callbacks=[RollbackAt2()], checkpoint_dir=tmp_path if use_disk else None)
    hist = trainer.fit((x, y))
    assert [r["rolled_back"] for r in hist] == [False, True]
    w1, m1, c1 = snaps[1]
    assert not torch.equal(snaps[2][0], w1)
    assert torch.equal(flat(trainer.model), w1)
    mom = torch.cat([s["momentum_buffer"].flatten() for s in trainer.optimizer.state.values()])
    assert torch.equal(mom, m1)
    assert task.calls == c1 == 2
    assert trainer.scheduler.step_count == 4  # the schedule keeps going


def test_rollback_on_drop_and_stop() -> None:
    x, y = blobs(32)
    values = iter([0.5, 0.9, 0.2, 0.85])
    guard = RollbackOnDrop("robust_acc", max_drop=0.3, metric_fn=lambda tr: next(values))

    class StopAt4:
        def on_epoch_end(self, trainer: Trainer, record: dict) -> dict:
            return {"stop": record["epoch"] == 4}

    hist = train(mlp(), (x, y), epochs=6, batch_size=16, progress=False, callbacks=[guard, StopAt4()])
    assert [r["robust_acc"] for r in hist] == [0.5, 0.9, 0.2, 0.85]
    assert [r["rolled_back"] for r in hist] == [False, False, True, False]
    assert guard.rollbacks == 1 and guard.best == 0.9
    with pytest.raises(ConfigError, match="no metric"):
        train(mlp(), (x, y), epochs=1, batch_size=16, progress=False, callbacks=[RollbackOnDrop("pgd", 0.1)])


def test_progress_bar_on_stderr_only_when_enabled(capsys: Any) -> None:
    x, y = blobs(32)
    train(mlp(), (x, y), val=(x, y), epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    # not a terminal (captured): one compact, flushed line per epoch instead of a live bar
    assert "epoch 2/2" in err and "val " in err
    assert all(len(line) <= 100 for line in err.splitlines())
    train(mlp(), (x, y), epochs=2, batch_size=16, progress=False)
    assert capsys.readouterr().err == ""


def test_input_and_task_errors() -> None:
    x, y = blobs(16)
    cfg = TrainConfig(epochs=1, batch_size=8)
    tr = Trainer(mlp(), "standard", cfg, progress=False)
    with pytest.raises(InputError, match="pair"):
        tr.fit(x)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shape"):
        tr.fit((x, y[:-1]))
    with pytest.raises(InputError, match="NaN"):
        tr.fit((x * float("nan"), y))
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        tr.fit((x, y), resume=True)

    class NotAnOutput(Task):
        def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None) -> TaskOutput:
            return {"logits": model(x)}  # type: ignore[return-value]

    class NoGraph(Task):
        def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None) -> TaskOutput:
            logits = model(x)
            return TaskOutput(F.cross_entropy(logits, y).detach(), logits)

    with pytest.raises(TypeError, match="NotAnOutput._run must return a TaskOutput"):
        Trainer(mlp(), NotAnOutput(), cfg, progress=False).fit((x, y))
    with pytest.raises(InputError, match="loss"):
        Trainer(mlp(), NoGraph(), cfg, progress=False).fit((x, y))
    with pytest.raises(ConfigError, match="diverged"):
        train(mlp(), (x, y), epochs=1, batch_size=8, lr=1e30, progress=False)
    with pytest.raises(ConfigError, match="Task"):
        Trainer(mlp(), object(), cfg)  # type: ignore[arg-type]


def test_exports_and_registry() -> None:
    assert "standard" in TASKS
    task = create_task("standard", label_smoothing=0.1)
    assert isinstance(task, Task) and task.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="label_smoothing"):
        create_task("standard", label_smoothing=1.5)
