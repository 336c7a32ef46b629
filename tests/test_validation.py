"""fortify.validation: thread limits, resource errors, keyword checks, declared input shapes, the probe."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify import models
from fortify.errors import ConfigError, InputError, ResourceError
from fortify.validation import (
    check_kwargs, check_threads, expected_input_shape, forward_checked, probe_num_classes, resource_guard,
    thread_limit,
)


def test_thread_limit_is_four_per_core_capped_at_1024() -> None:
    assert thread_limit(2) == 8 and thread_limit(16) == 64 and thread_limit(1000) == 1024
    assert check_threads(8, cores=2) == 8 and check_threads(1, cores=2) == 1
    with pytest.raises(ConfigError, match=r"threads=9 is beyond this machine \(2 cores\); use at most 8"):
        check_threads(9, cores=2)
    with pytest.raises(ConfigError, match="threads=100000"):
        check_threads(100000)  # the issue's --threads 100000 (was a MemoryError)
    for bad in (0, -1, True, 2.0, "4", None):
        with pytest.raises(ConfigError, match="workers"):
            check_threads(bad, name="workers", cores=2)


def test_resource_guard_turns_out_of_memory_into_one_line() -> None:
    with pytest.raises(ResourceError, match="out of memory while training; use a smaller"):
        with resource_guard("training"):
            raise MemoryError()
    with pytest.raises(ResourceError):
        with resource_guard("certifying"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")
    with pytest.raises(RuntimeError, match="unrelated"):
        with resource_guard("training"):
            raise RuntimeError("unrelated")


class _Widget:
    def __init__(self, width: int = 1, *, depth: int = 2) -> None:
        self.width, self.depth = width, depth


def test_check_kwargs_names_bad_key_hint_and_allowed() -> None:
    check_kwargs(_Widget, {"width": 3, "depth": 1}, what="widget 'w'")
    with pytest.raises(ConfigError) as info:
        check_kwargs(_Widget, {"widht": 3}, what="widget 'w'")
    msg = "widget 'w' got unknown argument(s) 'widht' (did you mean 'width'?); allowed: width, depth"
    assert str(info.value) == msg
    with pytest.raises(ConfigError, match="needs argument"):
        check_kwargs(lambda *, teacher: teacher, {}, what="task 'kd'")
    check_kwargs(lambda **kw: kw, {"anything": 1}, what="open")  # **kwargs accepts everything


def test_expected_input_shape_from_record_first_layer_or_none() -> None:
    net = models.create("mlp", in_shape=(1, 8, 8), num_classes=3, hidden=(4,))
    assert expected_input_shape(net) == (1, 8, 8)
    assert expected_input_shape(models.Normalized(net, [0.5], [0.5])) == (1, 8, 8)
    assert expected_input_shape(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())) == (3, None, None)
    assert expected_input_shape(nn.Sequential(nn.Sequential(nn.Linear(7, 2)))) == (7,)
    assert expected_input_shape(nn.Sequential(nn.Conv1d(2, 2, 3))) == (2, None)
    assert expected_input_shape(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) is None


def test_probe_leaves_flags_batchnorm_and_rng_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(5, 1, 2, 2)
    rng = torch.get_rng_state()
    assert probe_num_classes(model, x) == 3
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(InputError, match=r"the model rejects x of shape \(5, 9\) \(mat1 and mat2"):
        probe_num_classes(model, torch.rand(5, 9))


def test_forward_checked_keeps_model_errors_that_are_not_about_input() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyError("a bug in the model")

    with pytest.raises(KeyError):
        forward_checked(Boom(), torch.zeros(1, 2))


def test_task_validates_once_per_call_and_passes_int64_labels() -> None:
    from fortify.train.tasks import Task, TaskOutput

    seen: list[torch.dtype] = []

    class Inner(Task):
        def _run(self, model, x, y, generator):  # type: ignore[no-untyped-def]
            seen.append(y.dtype)
            return TaskOutput(model(x).sum(), model(x))

    class Outer(Task):
        def _run(self, model, x, y, generator):  # type: ignore[no-untyped-def]
            return Inner()(model, x * 5, y, generator=generator)  # nested call: not re-validated (x * 5 may leave a box)

    model = nn.Sequential(nn.Linear(2, 3))
    out = Outer()(model, torch.rand(4, 2), torch.tensor([0, 1, 2, 0], dtype=torch.int32))
    assert out.logits.shape == (4, 3) and seen == [torch.int64]
    with pytest.raises(InputError, match="label 3 but the model has 3 classes"):
        Outer()(model, torch.rand(4, 2), torch.tensor([0, 1, 3, 0]))
    assert Task().input_bounds == (-float("inf"), float("inf"))
