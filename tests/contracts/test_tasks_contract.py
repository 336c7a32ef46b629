"""Contract every registered training task meets (``TASKS.names()`` at collection, so a new task is
covered by registering it; the list is never hard-coded).

Protocol: no task class defines ``__call__`` (``Task.__call__`` is final and validates; a subclass
that tries is a TypeError at class creation), every call returns a :class:`TaskOutput`, and all
randomness comes from the ``generator`` argument: the same generator seed gives the same loss
twice, whatever torch's global RNG holds.

One training step on a tiny conv net with mixed flags (root training, a BatchNorm the user froze):
the loss is a finite scalar with a graph, logits have ``K`` columns, gradients reach the parameters
(finite, not all zero), and every module's ``training`` flag and every ``requires_grad`` are as the
caller left them. Tasks with a ``teacher`` get a tiny teacher. Cost: a few steps per task, < 1 s each.
"""
from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from fortify import models
from fortify.errors import InputError
from fortify.train.tasks import TASKS, Task, TaskOutput

N, C, H, W, K = 6, 1, 8, 8, 4
#: tiny budgets, passed to each constructor that has the keyword
TINY: dict[str, Any] = {"steps": 1, "replays": 2, "threat": "linf:0.05", "threats": ("linf:0.05", "l2:0.5"),
                        "samples": 2}


def tiny_net(seed: int = 0) -> nn.Module:
    """Normalized small-cnn (8x8 inputs, K classes, a few hundred weights)."""
    torch.manual_seed(seed)
    return models.Normalized(models.create("small-cnn", in_shape=(C, H, W), num_classes=K, channels=(2, 4),
                                           hidden=8), [0.5], [0.5])


def make(name: str) -> Any:
    params = inspect.signature(TASKS.get(name)).parameters
    kwargs = {k: v for k, v in TINY.items() if k in params}
    if "teacher" in params:
        kwargs["teacher"] = tiny_net(seed=5)
    return TASKS.create(name, **kwargs)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, C, H, W, generator=g) * 0.8 + 0.1, torch.arange(N) % K


def flags(model: nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_every_module_of_the_task_package_registers_or_is_infrastructure() -> None:
    import fortify.train.tasks as pkg
    from fortify.registry import DISCOVERED

    registered = {TASKS.get(n).__module__ for n in TASKS.names()}
    infra = {f"{pkg.__name__}.base", f"{pkg.__name__}.registry"}
    assert set(DISCOVERED[pkg.__name__]) - infra <= registered, "a task module registers no task"


@pytest.mark.parametrize("name", TASKS.names())
def test_one_step_finite_loss_gradients_flow_flags_restored(name: str) -> None:
    model = tiny_net()
    model.train()
    list(model.modules())[3].eval()  # a module the user froze must stay in eval mode
    before = flags(model)
    x, y = inputs()
    out = make(name)(model, x, y, generator=gen())
    assert flags(model) == before, f"task {name!r} changed the model's flags"
    assert isinstance(out, TaskOutput), f"task {name!r} returned {type(out).__name__}"
    assert all(isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
               for v in out.metrics.values()), f"task {name!r}: a metric is not a scalar"
    loss = out.loss
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and bool(torch.isfinite(loss))
    assert loss.requires_grad, f"task {name!r} returned a loss without a graph"
    logits = out.logits  # on the inputs the loss saw: N rows, or a multiple (augmented copies)
    assert logits.dim() == 2 and logits.shape[1] == K and logits.shape[0] % N == 0
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    used = [g for g in grads if g is not None]
    assert used and all(bool(torch.isfinite(g).all()) for g in used)
    assert any(float(g.abs().sum()) > 0 for g in used), f"task {name!r}: no gradient reaches the parameters"
    assert all(p.grad is None for p in model.parameters()), "a task must not write .grad (the Trainer does)"


@pytest.mark.parametrize("name", TASKS.names())
def test_no_task_class_defines_call(name: str) -> None:
    cls = TASKS.get(name)
    own = [c.__qualname__ for c in cls.__mro__ if c is not Task and issubclass(c, Task) and "__call__" in vars(c)]
    assert not own, f"task {name!r}: {own} define __call__ (implement _run)"
    assert cls.__call__ is Task.__call__


def test_defining_call_is_a_type_error_and_run_must_return_a_task_output() -> None:
    with pytest.raises(TypeError, match="overrides __call__, the template method of Task"):
        class Bad(Task):  # noqa: F841
            def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
                return None

    class Dict(Task):
        def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None) -> TaskOutput:
            return {"loss": model(x).sum()}  # type: ignore[return-value]

    x, y = inputs()
    with pytest.raises(TypeError, match="Dict._run must return a TaskOutput"):
        Dict()(tiny_net(), x, y)
    with pytest.raises(InputError, match="generator"):
        make("standard")(tiny_net(), x, y, generator=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TASKS.names())
def test_randomness_only_from_the_generator_argument(name: str) -> None:
    """Fresh task and model twice, the same generator seed, different global RNG states: equal loss
    and logits (a task that drew from torch's global RNG or kept a generator of its own would differ)."""
    x, y = inputs()
    runs = []
    for global_seed in (11, 12):
        model, task = tiny_net(), make(name)
        model.train()
        torch.manual_seed(global_seed)
        out = task(model, x, y, generator=gen(3))
        runs.append((out.loss.detach(), out.logits.detach()))
        assert not hasattr(task, "generator"), f"task {name!r} keeps a generator attribute"
    assert torch.equal(runs[0][0], runs[1][0]), f"task {name!r}: loss depends on the global RNG"
    assert torch.equal(runs[0][1], runs[1][1]), f"task {name!r}: logits depend on the global RNG"
