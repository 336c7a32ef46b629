"""Int8 on every x86-64 CPU: the scheme follows the CPU's features, is recorded, and the non-VNNI path is run.

The forced path: ``qemu-x86_64 -cpu Haswell`` runs ONNX Runtime with a CPUID that has AVX2 and no
AVX-512/VNNI, so MLAS takes its ``vpmaddubsw`` (int16-saturating) U8S8 kernel whatever this host has.
Tolerance: the scheme ``auto`` picks must keep >= 99% top-1 agreement with the float model on both
paths (the bar of the other int8 tests); the saturation-free scheme must give *identical* logits on
both paths, since both kernels then compute the same exact int32 sums.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fortify.compress import OnnxModule, create
from fortify.compress.quantize import quantize_onnx
from fortify.compress.quantize.schemes import (
    META_SATURATION_FREE, META_SCHEME, CpuFeatures, cpu_features, portability_warning, resolve_scheme,
)
from fortify.errors import ConfigError

AVX2 = CpuFeatures("x86_64", frozenset({"sse4_2", "avx", "avx2", "fma"}))
AVX512_NO_VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx512f", "avx512bw"}))
VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"}))
AVX_VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx_vnni"}))
ARM = CpuFeatures("aarch64", frozenset({"asimd", "asimddp"}))

_RUNNER = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: np.load(sys.argv[2])})[0])
"""


def _qemu() -> str:
    """Path of qemu-x86_64; skipped off x86-64 Linux, a failure in CI where `make test` installs it."""
    if platform.machine() != "x86_64" or sys.platform != "linux":
        pytest.skip("the non-VNNI path is an x86-64 kernel")
    exe = shutil.which("qemu-x86_64")
    if exe is None:
        msg = "qemu-x86_64 not found: `make setup-dev` installs Debian's qemu-user for the forced non-VNNI path"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _haswell_logits(model: OnnxModule, x: torch.Tensor, tmp: Path) -> torch.Tensor:
    """Logits of ``model`` computed by ONNX Runtime under an emulated AVX2-only CPU."""
    onnx_path, x_path, out_path = tmp / "m.onnx", tmp / "x.npy", tmp / "out.npy"
    model.save(onnx_path)
    np.save(x_path, x.numpy())
    runner = tmp / "run.py"
    runner.write_text(_RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP")}
    proc = subprocess.run([_qemu(), "-cpu", "Haswell", sys.executable, str(runner), str(onnx_path), str(x_path),
                           str(out_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.from_numpy(np.load(out_path))


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


@pytest.mark.parametrize("features, expected", [(AVX2, "u8s8-reduced"), (AVX512_NO_VNNI, "u8s8-reduced"),
                                                (VNNI, "u8s8"), (AVX_VNNI, "u8s8"), (ARM, "u8s8"),
                                                (CpuFeatures("x86_64", frozenset()), "u8s8-reduced")])
def test_auto_scheme_follows_the_cpu(features: CpuFeatures, expected: str) -> None:
    assert resolve_scheme("auto", features) == expected
    assert resolve_scheme("u8u8", features) == "u8u8"  # an explicit choice is kept
    warned = portability_warning("u8s8", features) is not None
    assert warned == features.u8s8_saturates
    assert portability_warning("u8s8-reduced", features) is None


def test_unknown_scheme_is_a_config_error(_cnn: nn.Module, train_data) -> None:
    with pytest.raises(ConfigError, match="u8s8-reduced"):
        create("int8_static", scheme="int4")
    with pytest.raises(ConfigError, match="scheme must be one of"):
        resolve_scheme("fp8", AVX2)


def test_scheme_is_recorded_in_the_artefact(_cnn: nn.Module, train_data, tmp_path: Path) -> None:
    res = create("int8_static", calibration_size=128)(_cnn, train_data[0][:4], data=train_data)
    expected = resolve_scheme("auto", cpu_features())
    assert res.report["scheme"] == expected
    again = OnnxModule.load(res.model.save(tmp_path / "q.onnx"))
    assert again.metadata[META_SCHEME] == expected
    assert again.metadata[META_SATURATION_FREE] == ("false" if expected == "u8s8" else "true")
    assert again.portability_warning is None  # built here, run here


def test_forced_non_vnni_path_keeps_agreement(_cnn: nn.Module, _mlp: nn.Module, train_data, test_data,
                                              tmp_path: Path) -> None:
    """The scheme auto picks for an AVX2 CPU agrees >= 99% with float on the emulated AVX2 path and gives
    the same logits as on this host; full-range u8s8 shows the saturation the choice avoids."""
    x = test_data[0]
    chosen = resolve_scheme("auto", AVX2)
    cases = [("static", _cnn, {"calibration": train_data[0][:256]}), ("dynamic", _mlp, {})]
    for mode, net, kw in cases:
        with torch.no_grad():
            ref = net(x)
        q = quantize_onnx(net, train_data[0][:4], mode=mode, scheme=chosen, **kw)
        emulated = _haswell_logits(q, x, tmp_path)
        assert _agree(emulated, ref) >= 0.99, (mode, _agree(emulated, ref))
        assert torch.equal(emulated, q(x)), mode  # saturation-free: the same exact sums on both kernels
    full = quantize_onnx(_cnn, train_data[0][:4], mode="static", scheme="u8s8", calibration=train_data[0][:256])
    emulated_full = _haswell_logits(full, x, tmp_path)
    if cpu_features().u8s8_saturates:  # this host already takes the saturating kernel
        assert torch.equal(emulated_full, full(x))
    else:  # VNNI host: exact here, saturated under the emulated AVX2 CPU
        assert float((emulated_full - full(x)).abs().max()) > 0.1


def test_loading_a_full_range_artefact_on_a_saturating_cpu_warns(_mlp: nn.Module, train_data, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from fortify.compress.quantize import schemes

    path = quantize_onnx(_mlp, train_data[0][:4], mode="dynamic", scheme="u8s8").save(tmp_path / "full.onnx")
    monkeypatch.setattr(schemes, "cpu_features", lambda: AVX2)
    with pytest.warns(RuntimeWarning, match="u8s8-reduced"):
        OnnxModule.load(path)
    monkeypatch.setattr(schemes, "cpu_features", lambda: VNNI)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxModule.load(path)
