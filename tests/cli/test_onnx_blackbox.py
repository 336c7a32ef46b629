"""ONNX models as black-box targets: ``fortify evaluate MODEL.onnx --attacks square,hopskipjump``
runs through ONNX Runtime; white-box attacks (or a preset, which starts with them) are refused in
one line that says why, exit 2, nothing written lost; the library refuses them with InputError."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fortify import data, models
from fortify.attacks import ATTACKS
from fortify.cli import main
from fortify.compress.export import onnx_bytes
from fortify.compress.quantize.runtime import OnnxModule
from fortify.errors import InputError
from fortify.threat import ThreatModel

from _cli_helpers import error_line


@pytest.fixture(scope="module")
def wine_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = models.create("mlp", in_shape=(13,), num_classes=3, hidden=(32,))
    x, y = data.load("wine", "train")
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    path = tmp_path_factory.mktemp("onnx") / "wine.onnx"
    path.write_bytes(onnx_bytes(net, x[:2]))
    return path, net


def test_blackbox_attacks_run_on_the_onnx_model_and_agree_with_torch(wine_onnx) -> None:
    path, net = wine_onnx
    onnx = OnnxModule.load(path)
    x, y = data.load("wine", "test")
    with torch.no_grad():
        assert torch.allclose(onnx(x), net(x), atol=1e-4)
    threat = ThreatModel("linf", 0.15)
    for name in ("square", "hopskipjump"):
        res = ATTACKS.create(name, queries=200)(onnx, x, y, threat, generator=torch.Generator().manual_seed(0))
        assert threat.contains(res.x_adv, x).all()
        with torch.no_grad():
            assert torch.equal(res.success, onnx(res.x_adv).argmax(1) != y)
        assert bool(res.success.any())


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if ATTACKS.get(n).access == "gradient"])
def test_library_refuses_white_box_attacks_on_onnx_with_the_reason(wine_onnx, name: str) -> None:
    onnx = OnnxModule.load(wine_onnx[0])
    x, y = data.load("wine", "test", limit=4)
    with pytest.raises(InputError, match="without gradients: white-box attacks") as exc:
        ATTACKS.create(name)(onnx, x, y, ThreatModel(ATTACKS.get(name).norms[0], 0.1))
    assert "square" in str(exc.value) and "\n" not in str(exc.value)


def test_cli_evaluates_an_onnx_model_with_blackbox_attacks(wine_onnx, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", str(wine_onnx[0]), "--dataset", "wine", "--threat", "linf:0.15", "--attacks",
               "square,hopskipjump", "--n", "20", "--budget", "0.05", "--out", str(tmp_path / "runs"), "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "robust_accuracy[linf:0.15]=" in out
    import json

    (doc,) = list((tmp_path / "runs").glob("*/robustness/evaluation.json"))
    rows = [r["label"] for t in json.loads(doc.read_text())["threats"] for r in t["attacks"]]
    assert "transfer" in rows and "square" in rows  # PGD on a surrogate, scored on the ONNX model


@pytest.mark.parametrize("argv,needle", [
    (["--threat", "linf:0.1", "--attacks", "apgd,square"], "white-box attacks (apgd, ...)"),
    (["--threat", "linf:0.1"], "the presets' apgd"),
    (["--threat", "linf:0.1", "--preset", "thorough", "--attacks", "pgd"], "white-box attacks (pgd, ...)"),
])
def test_cli_refuses_white_box_attacks_in_one_line(wine_onnx, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    argv: list[str], needle: str) -> None:
    keep = tmp_path / "runs" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("kept")
    before = wine_onnx[0].read_bytes()
    line = error_line(capsys, ["evaluate", str(wine_onnx[0]), "--dataset", "wine", *argv,
                               "--out", str(tmp_path / "runs")])
    assert needle in line and "ONNX Runtime model without gradients" in line and "square" in line
    assert keep.read_text() == "kept" and wine_onnx[0].read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["keep.txt"]


def test_cli_onnx_needs_a_dataset(wine_onnx, capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["evaluate", str(wine_onnx[0]), "--threat", "linf:0.1", "--attacks", "square"])
    assert "records no dataset" in line and "--dataset" in line
