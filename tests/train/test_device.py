"""Devices (fortify.train.device): training runs on every available device with the same result as on
cpu (up to float rounding), a model on another device than requested is an error naming both (never
moved), bad device names are typed errors / one CLI line, AMP is a no-op off CUDA."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.train import Trainer, TrainConfig
from fortify.train import device as fdevice

DEVICES = fdevice.available()


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


@pytest.mark.parametrize("dev", DEVICES)
def test_training_on_each_available_device_matches_cpu(dev: str) -> None:
    cfg = dict(epochs=2, batch_size=16, lr=0.1, device=dev, amp=dev == "cuda")
    ref = _net()
    Trainer(ref, "standard", dict(cfg, device="cpu", amp=False), progress=False).fit(_data())
    net = _net().to(fdevice.resolve(dev))
    before = [p.detach().clone() for p in net.parameters()]
    trainer = Trainer(net, "standard", cfg, progress=False)
    trainer.fit(_data())
    assert trainer.device.type == dev and all(p.device.type == dev for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    tol = 5e-2 if dev == "cuda" else 1e-4  # bfloat16 autocast on CUDA
    assert all(torch.allclose(a.cpu(), b, atol=tol) for a, b in zip(net.parameters(), ref.parameters()))


def test_model_on_another_device_is_an_error_naming_both() -> None:
    net = _net().to("meta")  # a device other than the requested one, available on every machine
    with pytest.raises(ConfigError, match="the model is on meta but the requested device is cpu"):
        Trainer(net, "standard", dict(device="cpu"), progress=False)
    assert next(net.parameters()).device.type == "meta"  # not moved


def test_device_names_are_checked() -> None:
    assert fdevice.resolve("cpu") == torch.device("cpu")
    assert fdevice.resolve(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match="unknown device|unsupported device"):
        fdevice.resolve("gpu0")
    if "mps" not in DEVICES:
        with pytest.raises(ConfigError, match="not available here"):
            fdevice.resolve("mps")
    assert isinstance(fdevice.autocast(torch.device("cpu"), True), type(fdevice.autocast(torch.device("cpu"), False)))


def test_cli_rejects_an_unavailable_device_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.cli import main

    bad = "mps" if "mps" not in DEVICES else "tpu"
    rc = main(["train", "--device", bad, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("fortify: error: ") and "--device" in err[0], err
    assert not any(tmp_path.iterdir())
