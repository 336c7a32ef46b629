"""Checkpoints: SIGKILL mid-epoch + resume equals an uninterrupted run; corrupt files -> ModelFileError."""
from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fortify.errors import ConfigError, ModelFileError
from fortify.train import Trainer, TrainConfig
from fortify.train import checkpoint as ckpt

# A free-adversarial-style job: replays=2, a persistent perturbation (task state) drawn from and
# updated with the trainer's generator, dropout (torch's global RNG), SGD momentum, onecycle.
JOB = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from fortify.train import Task, TaskOutput, Trainer, TrainConfig

    torch.set_num_threads(1)
    ckdir, kill_step, resume, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]

    class ReplayNoise(Task):
        replays = 2

        def __init__(self):
            super().__init__()
            self.delta = None
            self.calls = 0

        def _run(self, model, x, y, generator):
            if self.delta is None or self.delta.shape != x.shape:
                self.delta = 0.1 * torch.randn(x.shape, generator=generator)
            self.delta = (self.delta + 0.05 * torch.randn(x.shape, generator=generator)).clamp(-0.3, 0.3)
            self.calls += 1
            logits = model(x + self.delta)
            return TaskOutput(F.cross_entropy(logits, y), logits, {"delta_norm": self.delta.norm()})

        def state_dict(self):
            return {"delta": self.delta, "calls": self.calls}

        def load_state_dict(self, state):
            self.delta, self.calls = state["delta"], state["calls"]

    class Killer:
        steps_here = 0

        def on_step_end(self, trainer, step, out):
            Killer.steps_here += 1
            if step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 0.8).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(16, 3))
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.1, momentum=0.9, schedule="onecycle", seed=11)
    trainer = Trainer(model, ReplayNoise(), cfg, checkpoint_dir=ckdir if ckdir != "-" else None,
                      progress=False, callbacks=[Killer()])
    hist = trainer.fit((x, y), val=(x, y), resume=resume)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["calls"] = torch.tensor(trainer.task.calls)
    state["grad_evals"] = torch.tensor(hist[-1]["grad_evals"])
    state["epochs_done"] = torch.tensor(len(hist))
    state["steps_here"] = torch.tensor(Killer.steps_here)
    save_file(state, out)
    """
)


def _script(tmp: Path) -> Path:
    script = tmp / "job.py"
    script.write_text(JOB)
    return script


def _run_here(tmp: Path, ckdir: str, resume: bool, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the job in this process (threads = 1, as in the subprocess)."""
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", ["job.py", ckdir, "-1", "1" if resume else "0", str(out)])
        runpy.run_path(str(_script(tmp)), run_name="__main__")


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckdir = tmp_path / "ck"
    # 8 batches per pass, replays 2 -> 8 steps per epoch; step 19 is mid third epoch
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = subprocess.run(
        [sys.executable, str(_script(tmp_path)), str(ckdir), "19", "0", str(tmp_path / "never.safetensors")],
        capture_output=True, text=True, timeout=120, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.safetensors").exists()
    assert ckpt.complete_epochs(ckdir) == [1, 2]  # epochs 0..2 written, the oldest pruned
    # a second process (this one) resumes; the reference runs uninterrupted without checkpoints
    _run_here(tmp_path, str(ckdir), True, tmp_path / "res.safetensors", monkeypatch)
    _run_here(tmp_path, "-", False, tmp_path / "ref.safetensors", monkeypatch)
    a, b = load_file(str(tmp_path / "ref.safetensors")), load_file(str(tmp_path / "res.safetensors"))
    assert a.keys() == b.keys() and int(a["epochs_done"]) == 4
    # the resumed process only ran the last two epochs (8 steps each) and picked up the rest
    assert int(a.pop("steps_here")) == 32 and int(b.pop("steps_here")) == 16
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _tiny(seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), (x, y)


CFG = TrainConfig(epochs=3, batch_size=8, lr=0.1, optimizer="adam", schedule="cosine", warmup=0.2)


def test_in_process_crash_resume_and_finished_run(tmp_path: Path) -> None:
    ref_model, data = _tiny()
    ref_hist = Trainer(ref_model, "standard", CFG, progress=False).fit(data)

    class Crash(Exception):
        pass

    class CrashAt:
        def on_step_end(self, trainer: Trainer, step: int, out: dict) -> None:
            if step == 5:
                raise Crash

    model, _ = _tiny()
    with pytest.raises(Crash):
        Trainer(model, "standard", CFG, checkpoint_dir=tmp_path, progress=False, callbacks=[CrashAt()]).fit(data)
    model2, _ = _tiny(seed=99)  # different init: everything must come from the checkpoint
    hist = Trainer(model2, "standard", CFG, checkpoint_dir=tmp_path, progress=False).fit(data, resume=True)
    for p, q in zip(ref_model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(p, q)
    assert [r["train_loss"] for r in hist] == [r["train_loss"] for r in ref_hist]
    # resuming a finished run trains nothing and restores the final weights
    model3, _ = _tiny(seed=5)
    again = Trainer(model3, "standard", CFG, checkpoint_dir=tmp_path, progress=False).fit(data, resume=True)
    assert len(again) == 3 and model3.training  # flags as handed over
    for p, q in zip(ref_model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(p, q)
    # a changed config cannot silently resume
    with pytest.raises(ConfigError, match="lr"):
        Trainer(_tiny()[0], "standard", CFG.replace(lr=0.2), checkpoint_dir=tmp_path,
                progress=False).fit(data, resume=True)
    # resume without any checkpoint starts fresh
    fresh, _ = _tiny()
    h = Trainer(fresh, "standard", CFG, checkpoint_dir=tmp_path / "empty", progress=False).fit(data, resume=True)
    assert len(h) == 3 and all(torch.equal(p, q) for p, q in zip(ref_model.state_dict().values(),
                                                               fresh.state_dict().values()))


def _trained_dir(tmp_path: Path) -> tuple[Path, tuple[torch.Tensor, torch.Tensor]]:
    model, data = _tiny()
    Trainer(model, "standard", CFG, checkpoint_dir=tmp_path, progress=False).fit(data)
    assert ckpt.complete_epochs(tmp_path) == [2, 3]
    return tmp_path, data


class Hostile:
    """An arbitrary class: weights_only unpickling must refuse it."""

    def __reduce__(self) -> Any:
        return (print, ("pwned",))


@pytest.mark.parametrize("damage", ["truncate_state", "garbage_state", "hostile_state", "flip_model",
                                    "truncate_model", "wrong_format"])
def test_corrupt_checkpoint_raises_model_file_error(tmp_path: Path, damage: str) -> None:
    folder, data = _trained_dir(tmp_path)
    model_path, state_path = ckpt.paths(folder, 3)
    if damage == "truncate_state":
        state_path.write_bytes(state_path.read_bytes()[:100])
    elif damage == "garbage_state":
        state_path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "hostile_state":
        torch.save({"format": ckpt.FORMAT, "epoch": 3, "x": Hostile()}, state_path)
    elif damage == "flip_model":
        raw = bytearray(model_path.read_bytes())
        raw[-3] ^= 0xFF
        model_path.write_bytes(bytes(raw))
    elif damage == "truncate_model":
        model_path.write_bytes(model_path.read_bytes()[:40])
    else:
        torch.save({"format": "something-else", "epoch": 3}, state_path)
    with pytest.raises(ModelFileError):
        Trainer(_tiny()[0], "standard", CFG, checkpoint_dir=folder, progress=False).fit(data, resume=True)


def test_checkpoint_of_a_different_model_raises(tmp_path: Path) -> None:
    folder, data = _trained_dir(tmp_path)
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ModelFileError):
        Trainer(other, "standard", CFG, checkpoint_dir=folder, progress=False).fit(data, resume=True)


def test_fresh_fit_clears_old_checkpoints_only(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    folder, data = _trained_dir(tmp_path)
    one = CFG.replace(epochs=1)
    Trainer(_tiny()[0], "standard", one, checkpoint_dir=folder, progress=False).fit(data)
    assert ckpt.complete_epochs(folder) == [0, 1]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    state = torch.load(ckpt.paths(folder, 1)[1], weights_only=True)
    assert state["config"] == one.to_dict() and len(state["history"]) == 1
