"""Model files: metadata, atomic writes, and refusal of hostile, corrupt or mismatched files."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import fortify
from fortify import models
from fortify.errors import ConfigError, ModelFileError, OutputError


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[nn.Module, Path]:
    model = models.create("mlp", in_shape=(1, 8, 8), hidden=(16,))
    return model, models.save(model, tmp_path / "m.safetensors", meta={"dataset": "digits",
                                                                         "training": {"task": "standard"},
                                                                         "note": "hi"})


def test_metadata_record(saved: tuple[nn.Module, Path]) -> None:
    _, path = saved
    meta = models.read_meta(path)
    assert meta["architecture"] == {"name": "mlp", "args": {"hidden": [16]}}
    assert meta["in_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["dataset"] == "digits" and meta["training"] == {"task": "standard"}
    assert meta["user"] == {"note": "hi"} and meta["normalization"] is None
    assert meta["fortify_version"] == fortify.__version__
    # independent reader: the safetensors framing, parsed by hand
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    assert json.loads(header["__metadata__"]["fortify"]) == meta
    assert set(header) - {"__metadata__"} == {"1.weight", "1.bias", "3.weight", "3.bias"}


def test_save_is_atomic(saved: tuple[nn.Module, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = saved
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(models.io.os, "replace", boom)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    with pytest.raises(OutputError, match="disk full"):
        models.save(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]  # no temp files left


def test_save_refuses_models_without_architecture(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="create"):
        models.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="JSON"):
        models.save(models.create("mlp"), tmp_path / "y.safetensors", meta={"bad": object()})
    with pytest.raises(OutputError):
        models.save(models.create("mlp"), tmp_path / "missing-dir" / "z.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    for name in ("none.safetensors", "none.pt"):
        with pytest.raises(ModelFileError, match="not found"):
            models.load(tmp_path / name, architecture="mlp")
    with pytest.raises(ModelFileError, match="not found"):
        models.read_meta(tmp_path / "none.safetensors")


@pytest.mark.parametrize("cut", [3, 20, 200, -10])
def test_truncated_safetensors_refused(saved: tuple[nn.Module, Path], cut: int) -> None:
    _, path = saved
    blob = path.read_bytes()
    path.write_bytes(blob[:cut])
    with pytest.raises(ModelFileError):
        models.load(path)


def test_corrupt_safetensors_refused(saved: tuple[nn.Module, Path]) -> None:
    _, path = saved
    blob = bytearray(path.read_bytes())
    blob[10:30] = b"\xff" * 20  # garbage inside the JSON header
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="header"):
        models.load(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ModelFileError):
        models.load(path)


def _craft(path: Path, record: dict, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path), metadata={"fortify": json.dumps(record)})
    return path


def test_unknown_architecture_and_shape_mismatch_refused(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, path = saved
    record = models.read_meta(path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bad_name = dict(record, architecture={"name": "resnet-9000", "args": {}})
    with pytest.raises(ModelFileError, match="resnet-9000"):
        models.load(_craft(tmp_path / "a.safetensors", bad_name, state))
    wider = dict(record, architecture={"name": "mlp", "args": {"hidden": [32]}})
    with pytest.raises(ModelFileError, match="do not match"):
        models.load(_craft(tmp_path / "b.safetensors", wider, state))
    missing = {k: v for k, v in state.items() if k != "3.bias"}
    with pytest.raises(ModelFileError, match="do not match"):
        models.load(_craft(tmp_path / "c.safetensors", record, missing))
    with pytest.raises(ModelFileError, match="fortify metadata"):
        save_file(state, str(tmp_path / "d.safetensors"))
        models.load(tmp_path / "d.safetensors")


def test_pt_state_dict_accepted_with_architecture(tmp_path: Path) -> None:
    net = models.Normalized(models.create("small-cnn", in_shape=(1, 8, 8)), [0.3], [0.4]).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match="architecture"):
        models.load(tmp_path / "w.pt")
    back = models.load(tmp_path / "w.pt", architecture={"name": "small-cnn", "in_shape": [1, 8, 8]})
    assert isinstance(back, models.Normalized) and not back.training
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(back(x), net(x))
    with pytest.raises(ModelFileError, match="do not match"):
        models.load(tmp_path / "w.pt", architecture="small-cnn")  # 28x28 default: wrong fc size


@pytest.mark.parametrize("how", ["raw-pickle", "torch-save"])
def test_hostile_pt_refused_and_not_run(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"1.weight": _Hostile(marker)}
    if how == "raw-pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(ModelFileError, match="refused"):
        models.load(path, architecture="mlp")
    assert not marker.exists()
    renamed = path.rename(tmp_path / "evil.safetensors")
    with pytest.raises(ModelFileError):
        models.load(renamed)
    assert not marker.exists()


def test_pt_that_is_not_a_state_dict_refused(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ModelFileError, match="state dict"):
        models.load(tmp_path / "list.pt", architecture="mlp")


def test_pruned_model_saves_its_effective_weights(tmp_path: Path) -> None:
    from torch.nn.utils import prune

    model = models.create("lenet5", in_shape=(1, 8, 8)).eval()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    back = models.load(models.save(model, tmp_path / "p.safetensors"))
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(back(x), model(x))
    assert float((back[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert not any(k.endswith(("_orig", "_mask")) for k in back.state_dict())


def test_model_changed_after_create_is_refused_at_save(tmp_path: Path) -> None:
    model = models.create("mlp")
    model[1] = nn.Linear(784, 50)  # e.g. a structured pruning that forgot to update the record
    with pytest.raises(ConfigError, match="no longer matches"):
        models.save(model, tmp_path / "q.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_absurd_widths_in_record_refused_without_allocating(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, path = saved
    record = dict(models.read_meta(path), architecture={"name": "mlp", "args": {"hidden": [10**10]}})
    crafted = _craft(tmp_path / "huge.safetensors", record, dict(model.state_dict()))
    with pytest.raises(ModelFileError, match="do not match"):  # 10**10 x 64 floats would be 2.5 TB
        models.load(crafted)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_finite_weights_refused_naming_the_tensor(tmp_path: Path, bad: float, suffix: str) -> None:
    model = models.create("mlp", in_shape=(1, 8, 8), hidden=(16,))
    with torch.no_grad():
        model.state_dict()["3.bias"][3] = bad  # the second Linear's bias, one value of 10
    path = tmp_path / f"nan{suffix}"
    if suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        models.save(model, path)
    arch = {"name": "mlp", "args": {"hidden": [16]}, "in_shape": [1, 8, 8], "num_classes": 10}
    with pytest.raises(ModelFileError) as e:
        models.load(path, architecture=arch if suffix == ".pt" else None)
    msg = str(e.value)
    kind = "NaN" if bad != bad else "infinite"
    assert "'3.bias'" in msg and f"1 {kind} value (of 10)" in msg and "\n" not in msg and str(path) in msg


def test_shape_mismatch_says_which_shape_is_the_files(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    _, path = saved
    state = models.load(path).state_dict()
    pt = tmp_path / "m.pt"
    torch.save(state, pt)
    wider = {"name": "mlp", "args": {"hidden": [32]}, "in_shape": [1, 8, 8], "num_classes": 10}
    with pytest.raises(ModelFileError) as e:
        models.load(pt, architecture=wider)
    msg = str(e.value)
    assert "tensor '1.weight' is (16, 64) in the file, the architecture expects (32, 64)" in msg
    assert "tensor '3.weight' is (10, 16) in the file, the architecture expects (10, 32)" in msg and "\n" not in msg
    deeper = {**wider, "args": {"hidden": [16, 16]}}
    with pytest.raises(ModelFileError, match=r"the file lacks '5\.bias', '5\.weight'"):
        models.load(pt, architecture=deeper)
