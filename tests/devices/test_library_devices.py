"""The library side of docs/devices.md: a user's model is never moved. Entry points that take a device
check the model against it; a model elsewhere, or split over several devices, is a ConfigError naming both
devices and leaves the model exactly as it was (:func:`fortify.models.state.fingerprint`). The pipeline runs
on one device (data moved there, fortify's own models built or loaded there); CPU-only work (ONNX export,
CPU latency, ONNX Runtime) uses CPU copies fortify owns. Parametrised over the devices of this machine
(``meta`` stands in for "another device" where a mismatch is needed: every machine has it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from _device_helpers import DEVICES, unavailable_device
from fortify import models
from fortify.attacks import create as create_attack
from fortify.errors import ConfigError, InputError
from fortify.models.state import device_of, fingerprint
from fortify.pipeline import RunContext, resolve, run_pipeline
from fortify.store import RunStore
from fortify.threat import ThreatModel
from fortify.train import Trainer
from fortify.train import device as fdevice
from fortify.validation import generator_for


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _split() -> nn.Sequential:
    """First layer on the CPU, last layer on ``meta``: a model split over two devices."""
    net = _net()
    net[3].to("meta")
    return net


def _state(net: nn.Module) -> tuple[object, ...]:
    """What must not change: every tensor's identity and device, and the CPU part's full fingerprint."""
    ids = tuple((n, id(t), str(t.device)) for n, t in [*net.named_parameters(), *net.named_buffers()])
    return ids, fingerprint(net[1]), net.training


def _cfg(tmp_path: Path, stages: list[str], device: str | None = None) -> object:
    train = {} if device is None else {"device": device}
    return resolve({"stages": stages, "output": {"dir": str(tmp_path / "runs")}, "train": train,
                    "data": {"name": "mnist-5k", "test_limit": 20, "train_limit": 20}})


def test_pipeline_refuses_a_model_on_another_device_before_writing(tmp_path: Path) -> None:
    net = _net().to("meta")
    with pytest.raises(ConfigError, match="the given model is on meta but the requested device is cpu"):
        run_pipeline(_cfg(tmp_path, ["accuracy"], "cpu"), model=net, quiet=True)
    assert all(p.device.type == "meta" for p in net.parameters())  # not moved
    assert not (tmp_path / "runs").exists()


def test_split_model_is_an_error_naming_both_devices_everywhere(tmp_path: Path) -> None:
    net = _split()
    before = _state(net)
    both = r"on cpu and on meta"
    with pytest.raises(ConfigError, match=both):
        run_pipeline(_cfg(tmp_path, ["accuracy"]), model=net, quiet=True)
    with pytest.raises(ConfigError, match=both):
        fdevice.model_device(net)
    with pytest.raises(ConfigError, match=both):  # a library attack: the validators see the split too
        create_attack("fgsm")(net, torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long), ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError, match="the model is on meta but the requested device is cpu"):
        Trainer(net, "standard", dict(device="cpu"), progress=False)
    assert _state(net) == before


def test_inputs_on_another_device_than_the_model_name_both(tmp_path: Path) -> None:
    net = _net().to("meta")
    before = [(id(p), p.device, p.requires_grad) for p in net.parameters()], net.training
    with pytest.raises(InputError, match="x is on cpu but the model is on meta; fortify never moves the model"):
        create_attack("fgsm")(net, torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long), ThreatModel("linf", 0.1))
    assert ([(id(p), p.device, p.requires_grad) for p in net.parameters()], net.training) == before


def test_model_device_of_whole_and_stateless_models() -> None:
    assert fdevice.model_device(_net()) == torch.device("cpu")
    assert fdevice.model_device(nn.ReLU()) is None
    assert fdevice.describe(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("dev", DEVICES)
def test_pipeline_runs_on_the_given_models_device_and_records_it(dev: str, tmp_path: Path) -> None:
    net = models.create("mlp", in_shape=(1, 28, 28), num_classes=10).to(fdevice.resolve(dev))
    before = fingerprint(net)
    store = RunStore(tmp_path / "s.db")
    ctx = run_pipeline(_cfg(tmp_path, ["accuracy"]), model=net, store=store, quiet=True)  # no device: the model's
    assert ctx.device.type == dev and ctx.data("test")[0].device.type == dev
    assert store.get_run(ctx.run_id).versions["device"].split(":")[0].split(" ")[0] == dev
    assert fingerprint(net) == before and ctx.model is net  # run on it, not moved, flags restored


@pytest.mark.parametrize("dev", DEVICES)
def test_data_and_fortifys_models_follow_the_run_device(dev: str, tmp_path: Path, model_file: Path) -> None:
    cfg = _cfg(tmp_path, ["load", "accuracy"], dev)
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", quiet=True)
    ctx.set_data("test", torch.rand(6, 1, 28, 28), torch.zeros(6, dtype=torch.long))  # given on the CPU
    x, y = ctx.data("test")
    assert x.device.type == dev and y.device.type == dev  # the data is copied to the run's device
    loaded = models.load(model_file, device=ctx.device)  # fortify's own model: built there (map_location)
    assert {p.device.type for p in loaded.parameters()} == {dev}


def test_loading_onto_a_device_this_machine_lacks_is_a_config_error(model_file: Path) -> None:
    bad = unavailable_device()
    with pytest.raises(ConfigError, match=f"cannot load the model onto device '{bad}'"):
        models.load(model_file, device=bad)


def test_an_onnx_model_moves_a_default_run_to_the_cpu_and_refuses_an_explicit_device(tmp_path: Path) -> None:
    from fortify.pipeline.stages.load import LoadStage

    ctx = RunContext(config=_cfg(tmp_path, ["load"]), run_dir=tmp_path, run_id="r", quiet=True,
                     versions={"device": "meta"})
    ctx._device = torch.device("meta")  # stands in for a GPU: any device but the CPU
    ctx.set_data("test", torch.rand(3, 1, 28, 28), torch.zeros(3, dtype=torch.long))  # (meta data has no values)
    LoadStage._cpu_for_onnx(ctx, "m.onnx")
    assert ctx.device == torch.device("cpu") and ctx.versions["device"] == "cpu"
    assert ctx.data("test")[0].device.type == "cpu" and ctx.data("test")[0].shape == (3, 1, 28, 28)
    explicit = RunContext(config=_cfg(tmp_path, ["load"], "cpu"), run_dir=tmp_path, run_id="r", quiet=True)
    explicit.config.train = explicit.config.train.replace(device="cuda")  # as if --device cuda on a GPU machine
    explicit._device = torch.device("meta")
    with pytest.raises(ConfigError, match="m.onnx is an ONNX model, which runs on ONNX Runtime's CPU provider"):
        LoadStage._cpu_for_onnx(explicit, "m.onnx")


@pytest.mark.parametrize("dev", DEVICES)
def test_cpu_only_steps_use_a_cpu_copy_and_leave_the_model(dev: str) -> None:
    from fortify.compress.export import cpu_copy, onnx_bytes
    from fortify.compress.measure import latency_runs
    from fortify.compress.quantize.runtime import OnnxModule
    from fortify.timing import fixed_rounds
    from fortify.compress.measure import LATENCY_POLICY

    net = _net().to(fdevice.resolve(dev))
    before = fingerprint(net)
    copy = cpu_copy(net)
    assert (copy is net) == (dev == "cpu") and device_of(copy) == torch.device("cpu")
    x = torch.rand(5, 1, 4, 4, device=net[1].weight.device)
    onnx = OnnxModule(onnx_bytes(net, x))  # exported from a CPU copy; runs on ONNX Runtime (CPU)
    with torch.no_grad():
        got, ref = onnx(x), net(x)
    assert got.device == x.device and torch.allclose(got, ref, atol=1e-5)  # output back on the input's device
    runs = latency_runs({"m": net}, x, batch_sizes=(1,), policy=fixed_rounds(LATENCY_POLICY, 3), threads=1)
    assert runs[1].median("m", "wall") > 0
    assert fingerprint(net) == before


@pytest.mark.parametrize("dev", DEVICES)
def test_calibrated_model_lives_on_the_models_device(dev: str) -> None:
    from fortify.audit.calibrators import calibrate

    net = _net().to(fdevice.resolve(dev))
    before = fingerprint(net)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 1, 4, 4, generator=g).to(net[1].weight.device)
    y = torch.randint(0, 3, (30,), generator=g).to(x.device)
    for method in ("temperature", "vector"):
        wrapped = calibrate(net, x, y, method, batch_size=16)
        assert fdevice.model_device(wrapped) == device_of(net)  # one device: attacks accept the wrapped model
        assert wrapped(x).device == x.device
    assert fingerprint(net) == before


@pytest.mark.parametrize("dev", DEVICES)
def test_a_cpu_generator_drives_an_attack_on_any_device(dev: str) -> None:
    net = _net().to(fdevice.resolve(dev))
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)).to(net[1].weight.device)
    y = torch.zeros(6, dtype=torch.long, device=x.device)
    thr = ThreatModel("linf", 0.1)
    runs = [create_attack("pgd", steps=3)(net, x, y, thr, generator=torch.Generator().manual_seed(7)).x_adv
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # reproducible from the seed of a CPU generator, whatever the device
    g = torch.Generator()
    assert generator_for(g, torch.device("cpu")) is g and generator_for(None, x.device) is None
