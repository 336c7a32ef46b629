"""Distributed training (fortify.train.distributed): sync data-parallel equals the single-process
reference, ranks stay identical, async lowers the loss within its staleness bound, the caller's
model is untouched, bad arguments give typed errors / CLI exit 2, and a failing worker surfaces as
a typed error instead of a hang. Two worker processes on gloo over 127.0.0.1."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError, FortifyError
from fortify.train import Task, TaskOutput, Trainer, TrainConfig, train
from fortify.train import checkpoint as ckpt
from fortify.train.distributed import RunOptions, WorkerError, fit

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def blobs(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 2-D (a separable 3-class problem)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 2.0], [-2.0, -2.0]])
    y = torch.arange(n) % 3
    return centers[y] + 0.4 * torch.randn(n, 2, generator=g), y


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class FailingTask(Task):
    """Cross-entropy, except on rank ``rank`` (read from the worker's RANK variable): raises or exits."""

    def __init__(self, rank: int, how: str) -> None:
        super().__init__()
        self.rank, self.how = rank, how

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        if int(os.environ.get("RANK", "-1")) == self.rank:
            if self.how == "raise":
                raise RuntimeError(f"boom on rank {self.rank}")
            os._exit(3)
        logits = model(x)
        return TaskOutput(F.cross_entropy(logits, y), logits)


SYNC_CFG = dict(optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="cosine", grad_clip=3.0)


def test_sync_one_step_equals_single_process_and_input_is_untouched(tmp_path: Path) -> None:
    x, y = blobs(32)
    net = mlp()
    before = state(net)
    res = fit(net, (x, y), val=(x, y), world_size=2, mode="sync", epochs=1, batch_size=32,
              checkpoint_dir=tmp_path, **SYNC_CFG)
    ref = mlp()
    ref_hist = train(ref, (x, y), val=(x, y), epochs=1, batch_size=32, progress=False, **SYNC_CFG)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # caller's model untouched
    assert res.model is not net and max_diff(res.model, net) > 1e-3  # ... and the copy did move
    assert max_diff(res.model, ref) < 1e-5
    assert res.stats["rank_param_max_diff"] == 0.0 and res.stats["steps"] == 1
    assert len(res.stats["cpu_s"]) == 2 and all(c > 0 for c in res.stats["cpu_s"])
    h, r = res.history[0], ref_hist[0]
    assert h["samples"] == 32 and h["grad_evals"] == r["grad_evals"] == 32
    assert h["train_loss"] == pytest.approx(r["train_loss"], abs=1e-6)
    assert h["train_acc"] == r["train_acc"] and h["val_acc"] == r["val_acc"]
    # rank 0 wrote the checkpoint; it holds the returned weights
    assert ckpt.complete_epochs(tmp_path) == [0, 1]
    loaded = mlp(seed=5)
    ckpt.load_model_into(tmp_path, 1, loaded)
    assert max_diff(loaded, res.model) == 0.0


def test_sync_two_uneven_steps_through_the_trainer_equal_single_process() -> None:
    """Global batches of 31 rows split 16 + 15: the all-reduce must weight shards by their rows."""
    x, y = blobs(62)
    net, ref = mlp(), mlp()
    trainer = Trainer(net, "standard", dict(epochs=1, batch_size=31, nproc=2, **SYNC_CFG), progress=False)
    hist = trainer.fit((x, y))  # nproc=2 in the config: the Trainer trains in 2 worker processes, in place
    ref_hist = train(ref, (x, y), epochs=1, batch_size=31, progress=False, **SYNC_CFG)
    assert trainer.global_step == 2 and trainer.dist_stats["rank_param_max_diff"] == 0.0
    assert max_diff(net, ref) < 1e-5
    assert hist[0]["train_loss"] == pytest.approx(ref_hist[0]["train_loss"], abs=1e-6)


def test_async_lowers_the_loss_and_respects_max_staleness() -> None:
    x, y = blobs(96)
    net = mlp()
    before = state(net)
    with torch.no_grad():
        loss0 = float(F.cross_entropy(net(x), y))
    res = fit(net, (x, y), world_size=2, mode="async", max_staleness=0, epochs=4, batch_size=8,
              lr=0.1, schedule="constant")
    with torch.no_grad():
        loss1 = float(F.cross_entropy(res.model(x), y))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert loss1 < 0.3 * loss0, (loss0, loss1)
    s = res.stats
    assert s["mode"] == "async" and s["workers"] == 2 and s["world_size"] == 3
    assert len(s["cpu_s"]) == 3 and all(c > 0 for c in s["cpu_s"])
    assert s["pushes"] == 4 * 12 == s["applied"] + s["dropped"]
    # both workers start from version 0, so the second push of the run is stale: >= 1 drop
    assert s["dropped"] >= 1
    assert set(s["staleness"]) == {"0"} and s["staleness"]["0"] == s["applied"]  # nothing staler applied
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    assert sum(h["applied"] for h in res.history) == s["applied"]
    assert sum(h["samples"] for h in res.history) == 4 * 96


def test_recipe_entry_point_sync_equals_one_process_on_mnist() -> None:
    """``fit(recipe)``: the recipe's seeded model (LeNet-300-100 on 64 mnist-5k images, two global
    batches of 32) trained by 2 sync workers equals the in-process run of the same recipe."""
    ov = ["data.train_limit=64", "data.test_limit=32", "model.name=mlp", "train.epochs=1", "train.batch_size=32"]
    two = fit("standard-mnist-5k", overrides=ov, world_size=2, mode="sync")
    one = fit("standard-mnist-5k", overrides=ov, world_size=1)
    assert two.stats["steps"] == one.stats["steps"] == 2
    assert max_diff(two.model, one.model) < 1e-5
    assert two.history[0]["val_acc"] == one.history[0]["val_acc"]


@pytest.mark.parametrize("how, expect", [("raise", "boom on rank 1"), ("exit", "exit code 3")])
def test_a_failing_worker_is_a_typed_error_not_a_hang(how: str, expect: str) -> None:
    x, y = blobs(32)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=expect) as info:
        fit(mlp(), (x, y), task=FailingTask(1, how), world_size=2, mode="sync", epochs=1, batch_size=16,
            deadline_s=60)
    assert isinstance(info.value, FortifyError)
    assert time.monotonic() - t0 < 60


def test_a_fortify_error_in_a_worker_keeps_its_type() -> None:
    x, y = blobs(32)
    with pytest.raises(ConfigError, match="worker rank .*training diverged"):
        fit(mlp(), (x, y), world_size=2, mode="async", epochs=1, batch_size=8, lr=1e30, momentum=0.0,
            weight_decay=0.0, schedule="constant", deadline_s=60)


@pytest.mark.parametrize("kwargs, match", [
    (dict(world_size=0), "world_size must be an integer >= 1"),
    (dict(world_size=-2), "world_size must be an integer >= 1"),
    (dict(world_size=True), "world_size must be an integer >= 1"),
    (dict(world_size=2.0), "world_size must be an integer >= 1"),
    (dict(mode="hogwild"), "mode must be one of sync, async"),
    (dict(max_staleness=-1, mode="async"), "max_staleness must be an integer >= 0"),
    (dict(world_size=4, batch_size=3), "need at least 4 rows in every global batch"),
    (dict(world_size=2, batch_size=31), "leaves a batch of 1"),
    (dict(world_size=2, mode="async", task="free_at", task_options={"threat": "linf:0.1"}), "cannot replay"),
    (dict(world_size=2, mode="async", resume=True, checkpoint_dir="unused"), "resuming is not supported"),
    (dict(world_size=4, mode="async", batch_size=16), "at least as many minibatches"),
    (dict(start_method="fork"), "start_method must be one of"),
])
def test_bad_arguments_raise_config_errors_before_any_process(kwargs: dict, match: str) -> None:
    x, y = blobs(32)
    kwargs = dict(kwargs)
    kwargs.setdefault("batch_size", 16)
    net = mlp()
    with pytest.raises(ConfigError, match=match):
        fit(net, (x, y), epochs=1, **kwargs)


def test_run_options_equal_the_keyword_call_and_mix_with_config_fields() -> None:
    x, y = blobs(32)
    net = mlp()
    before = state(net)
    a = fit(net, (x, y), run=RunOptions(world_size=1), epochs=2, batch_size=8)
    b = fit(net, (x, y), world_size=1, epochs=2, batch_size=8)
    c = fit(net, (x, y), run=RunOptions(world_size=2, mode="async"), world_size=1, mode="sync", epochs=2,
            batch_size=8)  # keywords override the dataclass
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history] == \
        [r["train_loss"] for r in c.history]
    assert all(torch.equal(v, a.model.state_dict()[k]) for k, v in b.model.state_dict().items())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the input is untouched
    with pytest.raises(ConfigError, match="unknown training config key"):
        fit(net, (x, y), run=RunOptions(world_size=1), bogus=1)


def test_config_and_recipe_misuse_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="nproc"):
        TrainConfig(nproc=0)
    with pytest.raises(ConfigError, match="dist_mode"):
        TrainConfig.from_dict({"dist_mode": "ring"})
    with pytest.raises(ConfigError, match="needs training data"):
        fit(mlp())
    with pytest.raises(ConfigError, match="come from the recipe"):
        fit("standard-mnist-5k", blobs(8))


@pytest.mark.parametrize("argv, match", [
    (["train", "--nproc", "0"], "--nproc must be an integer >= 1"),
    (["train", "--mode", "ring"], "invalid choice: 'ring'"),
    (["train", "--max-staleness", "2"], "--max-staleness applies to --mode async only"),
    (["train", "--mode", "async", "--max-staleness", "-1"], "--max-staleness must be an integer >= 0"),
    (["train", "--resume", "abc", "--nproc", "2"], "drop --nproc"),
    (["train", "train.nproc=-3"], "nproc"),
    (["train", "train.dist_mode=ring"], "dist_mode"),
])
def test_cli_rejects_bad_distributed_options_with_one_line(argv: list[str], match: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.cli import main

    rc = main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("fortify: error: "), err
    assert match in err[0]
    assert not any(tmp_path.iterdir())  # nothing created


def test_resume_of_a_checkpoint_without_distributed_keys_still_matches(tmp_path: Path) -> None:
    """Checkpoints written before nproc/dist_mode existed resume (the new keys take their defaults)."""
    x, y = blobs(32)
    full = mlp()
    train(full, (x, y), epochs=2, batch_size=16, progress=False, checkpoint_dir=tmp_path)
    for p in ckpt.paths(tmp_path, 2):
        p.unlink()
    st = ckpt.load_state(tmp_path, 1)
    for k in ("nproc", "dist_mode", "max_staleness", "format", "epoch", "model_sha256"):
        st.get("config", {}).pop(k, None) if k in ("nproc", "dist_mode", "max_staleness") else st.pop(k)
    at_epoch1 = mlp(seed=3)
    ckpt.load_model_into(tmp_path, 1, at_epoch1)
    ckpt.save(tmp_path, 1, at_epoch1, st)
    resumed = mlp(seed=4)
    hist = train(resumed, (x, y), epochs=2, batch_size=16, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert max_diff(resumed, full) == 0.0


def test_sync_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """A 2-worker run with a noisy task (per-rank generators reseeded per epoch) resumed from its
    epoch-1 checkpoint ends bit-identical to the uninterrupted run."""
    from fortify.train.tasks.gaussian_noise import GaussianNoise

    x, y = blobs(64)
    cfg = dict(epochs=2, batch_size=16, nproc=2, **SYNC_CFG)
    full = Trainer(mlp(), GaussianNoise(sigma=0.3), cfg, checkpoint_dir=tmp_path / "a", progress=False)
    full.fit((x, y))
    part = tmp_path / "b"
    Trainer(mlp(), GaussianNoise(sigma=0.3), cfg, checkpoint_dir=part, progress=False).fit((x, y))
    for p in ckpt.paths(part, 2):
        p.unlink()  # as if killed during epoch 2
    resumed = Trainer(mlp(seed=7), GaussianNoise(sigma=0.3), cfg, checkpoint_dir=part, progress=False)
    hist = resumed.fit((x, y), resume=True)
    assert [h["epoch"] for h in hist] == [1, 2] and resumed.global_step == full.global_step == 8
    assert max_diff(resumed.model, full.model) == 0.0
    assert hist[1]["train_loss"] == full.history[1]["train_loss"]
