"""Contract: every registered attack, certifier, transform and task refuses the same table of bad inputs
with a typed ``fortify.errors`` exception, and leaves the model exactly as it was.

The table (``BAD_X`` / ``BAD_Y``) is fed to every entry of ``ATTACKS``, ``CERTIFIERS``, ``TRANSFORMS``
and ``TASKS`` (enumerated at collection, so a new method is covered by registering it), on two tiny
models: one that declares its input (``models.create`` records ``in_shape``, wrapped in
``Normalized``) and one that does not (a plain Sequential with batch norm, whose expected shape is
inferred from its first layer and a one-sample probe). Each case asserts an :class:`InputError` whose
message names the offending argument, and that parameters, buffers (batch-norm statistics),
``training`` / ``requires_grad`` flags and ``.grad`` are unchanged. Good inputs are accepted (a
positive control per attack, certifier and task), and unknown constructor keywords are a
:class:`ConfigError` naming the allowed ones for every registry.

dtype policy under test: float64 input to a float32 model is refused (no silent cast); a float64
model takes float64 input.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import pytest
import torch
from torch import nn

import fortify.attacks as attacks
from fortify import data, models
from fortify.attacks import ATTACKS
from fortify.certify import CERTIFIERS, certify
from fortify.compress.base import TRANSFORMS
from fortify.errors import ConfigError, FortifyError, InputError, UnknownNameError
from fortify.threat import ThreatModel
from fortify.train.adversarial.schedules import SCHEDULES
from fortify.train.tasks import TASKS

N, C, H, W, K = 4, 1, 8, 8, 5
THREAT = ThreatModel("linf", 0.05)
#: tiny budgets, mapped onto each constructor by name (keys a constructor lacks are dropped)
TINY: dict[str, Any] = {
    "steps": 1, "restarts": 1, "queries": 20, "samples": 2, "binary_search_steps": 1,
    "n_target_classes": 1, "init_evals": 2, "max_evals": 4, "init_tries": 2, "init_directions": 2, "k": 2,
    "n0": 4, "n": 8, "batch_size": 8, "time_limit": 5.0, "epochs": 1, "threat": "linf:0.05",
    "threats": ("linf:0.05", "l2:0.5"), "candidates": 2,
}
#: per-name constructor arguments a default does not satisfy with TINY
OVERRIDES: dict[str, dict[str, Any]] = {"imp_rewind": {"epochs": 2}, "low_rank": {"rank": 2}}
EPS = {"linf": 0.05, "l2": 0.5, "l1": 2.0}


def threat_for(cls: Any) -> ThreatModel:
    """THREAT when the method supports linf, else its first declared norm."""
    norms = getattr(cls, "norms", ("linf",))
    norm = "linf" if "linf" in norms else norms[0]
    return ThreatModel(norm, EPS[norm])


def declared_model() -> nn.Module:
    """A fortify model (architecture record ``in_shape=(1, 8, 8)``) inside ``Normalized``."""
    torch.manual_seed(0)
    return models.Normalized(models.create("small-cnn", in_shape=(C, H, W), num_classes=K, channels=(2, 4),
                                           hidden=8), [0.5], [0.5])


def undeclared_model() -> nn.Module:
    """A plain Sequential without a record; batch norm makes any train-mode forward visible."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(C, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, K))


MODELS = {"declared": declared_model, "undeclared": undeclared_model}


def good_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, C, H, W, generator=g) * 0.8 + 0.1, torch.randint(0, K, (N,), generator=g)


def _nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    return x


#: bad x: name -> (make from good x, whether the case needs a bounded input box)
BAD_X: dict[str, tuple[Callable[[torch.Tensor], Any], bool]] = {
    "3-D x": (lambda x: x[:, 0], False),
    "3 channels": (lambda x: x.expand(N, 3, H, W).contiguous(), False),
    "32x32": (lambda x: torch.nn.functional.interpolate(x, size=(32, 32)), False),
    "float64": (lambda x: x.double(), False),
    "float16": (lambda x: x.half(), False),
    "integer x": (lambda x: (x * 255).to(torch.uint8), False),
    "NaN x": (_nan, False),
    "inf x": (lambda x: x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill_(0, torch.tensor([1]), True),
                                      float("inf")), False),
    "x > 1": (lambda x: x + 1.0, True),
    "x < 0": (lambda x: x - 1.0, True),
    "empty batch": (lambda x: x[:0], False),
    "list x": (lambda x: x.tolist(), False),
}
#: bad y: name -> make from good y
BAD_Y: dict[str, Callable[[torch.Tensor], Any]] = {
    "label out of range": lambda y: y.clone().fill_(K),
    "negative label": lambda y: y.clone().fill_(-1),
    "y wrong length": lambda y: y[:-1],
    "y float": lambda y: y.float(),
    "y bool": lambda y: y > 2,
    "y 2-D": lambda y: y[:, None],
    "list y": lambda y: y.tolist(),
}


# ---------------------------------------------------------------------------------------------- builders
def _tiny_kwargs(cls: Callable[..., Any]) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in TINY.items() if k in params}
    return {**kwargs, **OVERRIDES.get(getattr(cls, "name", ""), {})}


def make_attack(name: str) -> Any:
    return ATTACKS.create(name, **_tiny_kwargs(ATTACKS.get(name)))


def make_certifier(name: str) -> Any:
    return CERTIFIERS.create(name, **_tiny_kwargs(CERTIFIERS.get(name)))


def make_transform(name: str) -> Any:
    return TRANSFORMS.create(name, **_tiny_kwargs(TRANSFORMS.get(name)))


def make_task(name: str) -> Any:
    kwargs = _tiny_kwargs(TASKS.get(name))
    if "teacher" in inspect.signature(TASKS.get(name)).parameters:
        kwargs["teacher"] = declared_model().eval()
    return TASKS.create(name, **kwargs)


def bounded_task(name: str) -> bool:
    lo, hi = make_task(name).input_bounds
    return bool(torch.isfinite(torch.tensor([lo, hi])).all())


# ---------------------------------------------------------------------------------------------- calls
def call_attack(name: str, model: nn.Module, x: Any, y: Any) -> Any:
    return make_attack(name)(model, x, y, threat_for(ATTACKS.get(name)))


def call_certifier(name: str, model: nn.Module, x: Any, y: Any) -> Any:
    return make_certifier(name)(model, x, y, threat_for(CERTIFIERS.get(name)))


def call_task(name: str, model: nn.Module, x: Any, y: Any) -> Any:
    return make_task(name)(model, x, y, generator=torch.Generator().manual_seed(0))


def call_transform_inputs(name: str, model: nn.Module, x: Any, y: Any) -> Any:
    """Bad example inputs (good data) for x cases; bad data for y cases."""
    gx, gy = good_inputs()
    return make_transform(name)(model, x, data=(gx, gy))


def call_transform_data(name: str, model: nn.Module, x: Any, y: Any) -> Any:
    gx, _ = good_inputs()
    return make_transform(name)(model, gx, data=(x, y))


PROTOCOLS: dict[str, tuple[list[str], Callable[..., Any]]] = {
    "attack": (ATTACKS.names(), call_attack),
    "certifier": (CERTIFIERS.names(), call_certifier),
    "task": (TASKS.names(), call_task),
    "transform-inputs": (TRANSFORMS.names(), call_transform_inputs),
    "transform-data": (TRANSFORMS.names(), call_transform_data),
}
#: the name an error message must mention for an x / y case, per protocol
X_NAME = {"transform-inputs": "example_inputs", "transform-data": "data x"}
Y_NAME = {"transform-inputs": "data y", "transform-data": "data y"}


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad is None for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad"] == before["grad"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"model {k} changed"


def _cases() -> list[Any]:
    out = []
    for proto, (names, _) in PROTOCOLS.items():
        for name in names:
            bounded = proto != "task" or bounded_task(name)
            for case, (_, needs_box) in BAD_X.items():
                if needs_box and not bounded:
                    continue
                out.append(pytest.param(proto, name, "x", case, id=f"{proto}-{name}-{case}"))
            if proto != "transform-inputs":
                out += [pytest.param(proto, name, "y", case, id=f"{proto}-{name}-{case}") for case in BAD_Y]
    return out


CASES = _cases()


def run_case(proto: str, name: str, which: str, case: str, model: nn.Module) -> FortifyError:
    x, y = good_inputs()
    if which == "x":
        x = BAD_X[case][0](x)
    else:
        y = BAD_Y[case](y)
    model.train()  # flags must come back as the caller left them (train mode)
    before = snapshot(model)
    with pytest.raises(FortifyError) as info:
        PROTOCOLS[proto][1](name, model, x, y)
    assert_unchanged(model, before)
    return info.value


@pytest.mark.parametrize("proto,name,which,case", CASES)
def test_bad_input_is_a_typed_error_and_model_is_unchanged(proto: str, name: str, which: str, case: str) -> None:
    for kind, build in MODELS.items():
        err = run_case(proto, name, which, case, build())
        assert isinstance(err, InputError), f"{kind}: {type(err).__name__}: {err}"
        arg = (X_NAME if which == "x" else Y_NAME).get(proto, which)
        assert arg in str(err), f"{kind}: message does not name {arg!r}: {err}"
        assert "\n" not in str(err)


@pytest.mark.parametrize("case", ["3-D x", "3 channels", "32x32"])
def test_shape_errors_name_given_and_expected_shapes(case: str) -> None:
    x, y = good_inputs()
    bad = BAD_X[case][0](x)
    for build in MODELS.values():
        with pytest.raises(InputError) as info:
            call_attack("pgd", build(), bad, y)
        msg = str(info.value)
        assert str(tuple(bad.shape)) in msg and "(N, 1, " in msg, msg
    with pytest.raises(InputError, match=r"expects \(N, 1, 8, 8\)"):
        call_attack("pgd", declared_model(), bad, y)


def test_float64_model_takes_float64_input() -> None:
    x, y = good_inputs()
    model = declared_model().double().eval()
    res = call_attack("fgsm", model, x.double(), y)
    assert res.x_adv.dtype == torch.float64 and THREAT.contains(res.x_adv, x.double()).all()
    cert = call_certifier("ibp", model, x.double(), y)
    assert cert.lower_margin.shape == (N,)
    with pytest.raises(InputError, match="float64"):
        call_attack("fgsm", declared_model(), x.double(), y)


# ---------------------------------------------------------------------------------------------- good inputs
@pytest.mark.parametrize("name", ATTACKS.names())
def test_attacks_accept_good_inputs(name: str) -> None:
    x, y = good_inputs()
    for build in MODELS.values():
        model = build().eval()
        res = call_attack(name, model, x, y)
        assert res.x_adv.shape == x.shape and threat_for(ATTACKS.get(name)).contains(res.x_adv, x).all()


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_certifiers_accept_good_inputs(name: str) -> None:
    x, y = good_inputs()
    model = declared_model().eval()
    cert = call_certifier(name, model, x, y)
    assert cert.certified.shape == (N,)


@pytest.mark.parametrize("name", TASKS.names())
def test_tasks_accept_good_inputs_and_int32_labels(name: str) -> None:
    x, y = good_inputs()
    model = declared_model().train()
    out = call_task(name, model, x, y.int())
    assert out.logits.shape[-1] == K and torch.isfinite(out.loss).all()


# ---------------------------------------------------------------------------------------------- kwargs
REGISTRIES = {"attack": ATTACKS, "certifier": CERTIFIERS, "transform": TRANSFORMS, "task": TASKS,
              "schedule": SCHEDULES}
KWARG_CASES = [pytest.param(kind, n, id=f"{kind}-{n}") for kind, reg in REGISTRIES.items() for n in reg.names()]


@pytest.mark.parametrize("kind,name", KWARG_CASES)
def test_unknown_constructor_keyword_is_config_error(kind: str, name: str) -> None:
    reg = REGISTRIES[kind]
    allowed = [p for p in inspect.signature(reg.get(name)).parameters]
    with pytest.raises(ConfigError) as info:
        reg.create(name, bogus=1)
    msg = str(info.value)
    assert "'bogus'" in msg and name in msg and "allowed:" in msg
    assert all(a in msg for a in allowed)


def test_create_helpers_and_certify_refuse_unknown_keywords() -> None:
    with pytest.raises(ConfigError, match=r"'querys' \(did you mean 'queries'\?\); allowed: queries"):
        attacks.create("square", querys=10)
    with pytest.raises(ConfigError, match="'bogus'"):
        attacks.create("pgd", bogus=1)
    x, y = good_inputs()
    with pytest.raises(ConfigError, match="'bogus'.*allowed: .*batch_size"):
        certify(declared_model(), x, y, THREAT, "ibp", bogus=1)
    with pytest.raises(ConfigError, match="bogus"):
        models.create("mlp", bogus=1)
    with pytest.raises(ConfigError, match="'bogus'; allowed: name, split, data_dir, limit"):
        data.load("mnist-5k", bogus=1)
    with pytest.raises(ConfigError, match="task 'kd' got unknown argument.*'bogus'"):
        TRANSFORMS.create("distill", method_args={"bogus": 1})
    with pytest.raises(UnknownNameError):
        attacks.create("nope")
