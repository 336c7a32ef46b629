"""Every harden task through the real Trainer: it lowers its own loss on a tiny problem, resumes
bit-exactly from a checkpoint, reports its cost, and rejects bad values with ConfigError."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fortify.errors import ConfigError, ThreatModelError, UnknownNameError
from fortify.train import TASKS, Trainer, TrainConfig, tasks
from fortify.train.adversarial import RobustnessMonitor

from conftest import blobs, tiny_cnn

EPS = "linf:0.1"
CASES: dict[str, dict[str, Any]] = {
    "pgd_at": dict(threat=EPS, steps=3),
    "fast_at": dict(threat=EPS, grad_align=0.2),
    "free_at": dict(threat=EPS, replays=2),
    "trades": dict(threat=EPS, steps=3, beta=3.0),
    "mart": dict(threat=EPS, steps=3, beta=3.0),
    "multi_perturbation": dict(threats=[EPS, "l2:0.5", "l1:2.0"], mode="max", steps=2),
    "low_curvature": dict(threat=EPS, grad_weight=0.5, curvature_weight=0.1),
    "rse": dict(init_std=0.1, inner_std=0.05),
    "importance": dict(threat=EPS, steps=4, fraction=0.5, schedule=["eps-ramp", {"name": "accuracy", "patience": 1}]),
}
MP_MODES = ("avg", "msd", "stochastic")


def config(epochs: int, lr: float = 0.01) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=lr, weight_decay=0.0, seed=3)


def test_every_registered_harden_task_is_covered() -> None:
    assert set(CASES) | {"standard"} <= set(TASKS.names())


@pytest.mark.parametrize("name", sorted(CASES) + [f"multi_perturbation:{m}" for m in MP_MODES])
def test_task_lowers_its_loss(name: str) -> None:
    name, _, mode = name.partition(":")
    args = dict(CASES[name], **({"mode": mode} if mode else {}))
    x, y = blobs()
    task = tasks.create(name, **args)
    hist = Trainer(tiny_cnn(), task, config(8, lr=0.03), progress=False).fit((x, y))
    first, last = hist[0]["train_loss"], hist[-1]["train_loss"]
    assert last < 0.5 * first, f"{name}: loss {first:.3f} -> {last:.3f}"
    evals = hist[-1]["grad_evals"]
    assert evals >= hist[-1]["samples"] * 8  # the Trainer's count includes the task's input gradients


class _Crash(Exception):
    pass


class _KillDuringSecondEpoch:
    def on_step_end(self, trainer: Trainer, step: int, out: object) -> None:
        if trainer.epoch == 1:
            raise _Crash


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_is_bit_exact(name: str, tmp_path: Path) -> None:
    x, y = blobs()
    xv, yv = blobs(48, seed=1)

    def run(folder: Path, resume: bool, kill: bool) -> torch.nn.Module:
        model, task = tiny_cnn(), tasks.create(name, **CASES[name])
        cbs: list[object] = []
        if getattr(task, "threat", None) is not None:
            cbs.append(RobustnessMonitor(xv, yv, n=32, steps=3))
        if kill:
            cbs.append(_KillDuringSecondEpoch())
        trainer = Trainer(model, task, config(3), checkpoint_dir=folder, progress=False, callbacks=cbs)
        trainer.fit((x, y), resume=resume)
        return model

    straight = run(tmp_path / "a", resume=False, kill=False)
    with pytest.raises(_Crash):
        run(tmp_path / "b", resume=False, kill=True)
    resumed = run(tmp_path / "b", resume=True, kill=False)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{name}: {k} differs after resume"


@pytest.mark.parametrize(
    "name,args,error,match",
    [
        ("pgd_at", dict(threat="linf:-0.1"), ThreatModelError, "eps"),
        ("pgd_at", dict(threat={"norm": "linf", "eps": -1}), ConfigError, "eps"),
        ("pgd_at", dict(steps=0), ConfigError, "steps must be an integer >= 1"),
        ("trades", dict(steps=2.5), ConfigError, "steps"),
        ("fast_at", dict(step_ratio=-1), ConfigError, "step_ratio"),
        ("free_at", dict(replays=0), ConfigError, "replays"),
        ("mart", dict(beta=-6), ConfigError, "beta"),
        ("multi_perturbation", dict(mode="union"), ConfigError, "allowed: max, avg, msd, stochastic"),
        ("multi_perturbation", dict(threats="linf:0.3"), ConfigError, "list"),
        ("multi_perturbation", dict(threats=["linf:0.3", "l3:1"]), ThreatModelError, "unknown norm"),
        ("importance", dict(fraction=0), ConfigError, "fraction"),
        ("low_curvature", dict(grad_weight=0, curvature_weight=0), ConfigError, "grad_weight"),
        ("rse", dict(init_std=-0.2), ConfigError, "init_std"),
        ("pgd_at", dict(schedule="warp-speed"), UnknownNameError, "unknown schedule"),
    ],
)
def test_bad_values_raise_config_error(name: str, args: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        tasks.create(name, **args)
    assert issubclass(error, ConfigError)


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="allowed: .*fast_at.*pgd_at"):
        tasks.create("pgd-at")


def test_tasks_build_their_monitor_and_guard_callbacks() -> None:
    from fortify.train.adversarial import CatastrophicOverfittingGuard, callbacks_for

    x, y = blobs(16)
    fast = tasks.create("fast_at", monitor={"n": 8, "steps": 2})
    cbs = callbacks_for(fast, (x, y))
    assert [type(c).__name__ for c in cbs] == ["RobustnessMonitor", "CatastrophicOverfittingGuard"]
    assert cbs[0].x.shape[0] == 8 and isinstance(cbs[1], CatastrophicOverfittingGuard)
    assert [type(c).__name__ for c in callbacks_for(tasks.create("pgd_at"), (x, y))] == ["RobustnessMonitor"]
    assert callbacks_for(tasks.create("pgd_at", monitor=False), (x, y)) == []
    assert callbacks_for(tasks.create("standard"), (x, y)) == []
    with pytest.raises(ConfigError, match="unknown co_guard option.*allowed: max_drop, max_gap"):
        tasks.create("fast_at", co_guard={"drop": 0.1})
    with pytest.raises(ConfigError, match="monitor must be"):
        tasks.create("trades", monitor="yes")


def test_rse_noise_layers_draw_from_the_call_generator_only_during_the_call() -> None:
    """A model with NoiseLayers: the rse task's logits equal a forward pass with every layer pointed
    at a generator seeded like the call's, and afterwards every layer has its own generator back."""
    from fortify.train.adversarial.noise import add_noise_layers, noise_layers

    x, y = blobs(12)
    noisy = add_noise_layers(tiny_cnn(), init_std=0.1, inner_std=0.05)
    layers = noise_layers(noisy)
    own = torch.Generator().manual_seed(99)
    layers[0].generator = own
    out = tasks.create("rse")(noisy, x, y, generator=torch.Generator().manual_seed(5))
    assert layers[0].generator is own and all(m.generator is None for m in layers[1:])
    ref_gen = torch.Generator().manual_seed(5)
    for m in layers:
        m.generator = ref_gen
    with torch.no_grad():
        assert torch.equal(out.logits.detach(), noisy(x))


def test_targeted_dropout_draws_its_drops_from_the_call_generator() -> None:
    """Loss of ``targeted_dropout`` over ``standard`` == CE of the model with every weight dropped by
    :func:`targeted_dropout_weight` from a generator seeded like the call's (layers in module order)."""
    import torch.nn.functional as F
    from torch.func import functional_call

    from fortify.train.tasks.targeted_dropout import targeted_dropout_weight

    x, y = blobs(12)
    model = tiny_cnn()
    out = tasks.create("targeted_dropout", gamma=0.5, alpha=0.5)(model, x, y, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    params = dict(model.named_parameters())
    dropped = {k: targeted_dropout_weight(params[k], 0.5, 0.5, g) for k in ("0.weight", "3.weight")}
    assert not torch.equal(dropped["0.weight"], params["0.weight"])  # something was dropped
    ref = F.cross_entropy(functional_call(model, dropped, (x,)), y)
    assert torch.equal(out.loss.detach(), ref.detach())
