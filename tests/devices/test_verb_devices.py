"""Every verb that runs a model takes ``--device`` (docs/devices.md): each device of this machine works
(parametrised over :func:`fortify.train.device.available`, cpu always), a device this machine lacks or a
malformed name is one ``fortify: error:`` line and exit 2 before anything is written, and a run records
its device in the run store (``versions["device"]``) and its config (``train.device``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _device_helpers import DEVICES, error_line, unavailable_device
from fortify.cli import main
from fortify.store import RunStore
from fortify.train import device as fdevice

TRAINING = ["--recipe", "standard-mnist-5k", "model.name=mlp", "train.epochs=1", "train.batch_size=50",
            "data.train_limit=100", "data.test_limit=40"]


def argv(verb: str, model: Path, inputs: Path, out: Path) -> list[str]:
    """The smallest sensible command line of ``verb`` (a few test images, no curves, no latency timings)."""
    run = ["--out", str(out), "-q"]
    m, small = str(model), ["data.test_limit=40"]
    return {
        "evaluate": ["evaluate", m, *run, *small],
        "certify": ["certify", m, "--method", "ibp", "--threat", "linf:0.01", "--n", "8", "--curve-points", "0",
                    *run, *small],
        "compress": ["compress", m, "--recipe", "int8-dynamic", "--robust", "none", "--no-latency", *run, *small,
                     "data.train_limit=64", "compress.n_test=40", "compress.drift_methods=[]"],
        "explain": ["explain", m, "--methods", "saliency", "--metrics", "deletion", "--n", "4", *run, *small],
        "audit": ["audit", m, "--sections", "calibration", "--n", "40", *run, *small, "data.train_limit=64"],
        "scan": ["scan", m, "--detectors", "strip", "--n", "20", *run, *small],
        "predict": ["predict", m, "--data", str(inputs), "--mips", "exact", "--k", "3", "--show", "1"],
        "export": ["export", m, "--onnx", "--out", str(out / "onnx"), "--runs", str(out), "-q", *small,
                   "export.n_check=8"],
        "run": ["run", *run, *TRAINING, "stages=[train,accuracy]"],
        "train": ["train", *run, *TRAINING],
    }[verb]


VERBS = ("evaluate", "certify", "compress", "explain", "audit", "scan", "predict", "export", "run", "train")
#: the verbs whose work is a recorded pipeline run (predict prints and records nothing)
RECORDED = tuple(v for v in VERBS if v != "predict")


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_runs_on_each_available_device(verb: str, dev: str, model_file: Path, inputs_file: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    rc = main([*argv(verb, model_file, inputs_file, out), "--device", dev])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    if verb == "predict":
        assert "recall@3 1.0000" in cap.out  # the exact index is the exact head, whatever the device
        return
    rec = RunStore(out / "fortify.db").list_runs()[0]
    assert rec.status == "ok" and rec.verb == verb
    assert rec.config["train"]["device"] == dev  # the recorded config: resuming uses the same device
    assert rec.versions["device"].split(" ")[0].split(":")[0] == dev  # the device the run really used


@pytest.mark.parametrize("verb", VERBS)
def test_a_device_this_machine_lacks_is_one_line_and_exit_2(verb: str, model_file: Path, inputs_file: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    bad = unavailable_device()
    line = error_line(capsys, [*argv(verb, model_file, inputs_file, out), "--device", bad])
    assert "--device" in line and bad in line and ("not available here" in line or "does not exist" in line)
    assert not out.exists()  # checked before the runs folder or the store is created


def test_an_unavailable_device_in_the_recipe_is_caught_before_writing(model_file: Path, inputs_file: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    bad = unavailable_device()
    line = error_line(capsys, [*argv("certify", model_file, inputs_file, out), f"train.device={bad}"])
    assert line.startswith("fortify: error: train.device: device ") and bad in line
    assert not out.exists()


@pytest.mark.parametrize("bad", ["gpu0", "tpu", "cuda:x"])
def test_a_malformed_device_names_the_allowed_ones(bad: str, model_file: Path, inputs_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, [*argv("evaluate", model_file, inputs_file, tmp_path), "--device", bad])
    assert "--device: " in line and "cpu, cuda, cuda:N, mps" in line


def test_default_device_is_cuda_when_available_else_cpu(model_file: Path, inputs_file: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(argv("evaluate", model_file, inputs_file, out)) == 0
    rec = RunStore(out / "fortify.db").list_runs()[0]
    assert rec.config["train"]["device"] is None  # not pinned: a resumed run takes this machine's default
    want = fdevice.default_device()
    assert rec.versions["device"].startswith(str(want) if want.type == "cpu" else "cuda:")
    assert torch.device(rec.versions["device"].split(" ")[0]).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_resume_keeps_the_recorded_device(model_file: Path, inputs_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["evaluate", "--resume", "20260101-000000-abcdef", "--out", str(tmp_path),
                               "--device", "cpu"])
    assert "drop --device" in line
