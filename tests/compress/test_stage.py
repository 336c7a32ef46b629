"""The ``compress`` and ``export`` pipeline stages: config validation (before any run exists), figures
that equal independent measurements of the artefact written, the run's model left unchanged, the
report section; the compress tasks visible in TASKS without importing fortify.compress first."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fortify import data, models
from fortify.models.state import fingerprint
from fortify.pipeline.stages.compress import CompressConfig, CompressStage, ExportConfig, ExportStage
from fortify.config import resolve
from fortify.errors import ConfigError, OutputError, UnknownNameError
from fortify.pipeline.base import RunContext


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    net = models.create("mlp", in_shape=(1, 28, 28), num_classes=10, hidden=(64, 32))
    x, y = data.load("mnist-5k", "train", limit=600)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, 600, 50):
            opt.zero_grad()
            F.cross_entropy(net(x[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    return net.eval()


def _ctx(tmp_path: Path, model: torch.nn.Module, stage: str, section: dict) -> RunContext:
    cfg = resolve({"data": {"name": "mnist-5k"}, "model": {"name": "mlp"}, "stages": [stage], stage: section})
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="test", quiet=True)
    ctx.model = model
    ctx.stage = stage
    ctx.set_data("train", *data.load("mnist-5k", "train", limit=300))
    ctx.set_data("test", *data.load("mnist-5k", "test", limit=150))
    return ctx


def _acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(UnknownNameError, match="robust-int8"):
        CompressConfig(recipe="no-such-recipe")
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\)"):
        CompressConfig(recipe="sparse", args={"sparsity": 1.0})
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\)"):
        CompressConfig(recipe="sparse", args={"sparsity": -0.1})
    with pytest.raises(ConfigError, match="rank must be an integer >= 1"):
        CompressConfig(steps=[{"transform": "low_rank", "rank": 0}])
    with pytest.raises(ConfigError, match="no step of recipe 'int8-dynamic' takes 'sparsity'"):
        CompressConfig(recipe="int8-dynamic", args={"sparsity": 0.5})
    with pytest.raises(UnknownNameError, match="magnitude_prune"):
        CompressConfig(steps=[{"transform": "nope"}])
    with pytest.raises(ConfigError, match="quantization must be the last step"):
        CompressConfig(steps=[{"transform": "int8_dynamic"}, {"transform": "magnitude_prune"}])
    with pytest.raises(ConfigError, match="compress.robust"):
        CompressConfig(robust="strongest")
    with pytest.raises(ConfigError, match="compress.n_robust"):
        CompressConfig(n_robust=0)
    with pytest.raises(ConfigError):
        CompressConfig(threat="linf:-1")
    with pytest.raises(OutputError, match="does not exist"):
        ExportConfig(path="/no/such/folder/m.onnx")
    with pytest.raises(ConfigError, match="export.int8"):
        ExportConfig(int8="int4")


def test_args_and_threat_reach_every_step() -> None:
    steps = CompressConfig(recipe="sparse", threat="linf:0.1", args={"sparsity": 0.5}).step_dicts()
    assert steps[0]["sparsity"] == 0.5 and steps[0]["finetune_args"]["threat"] == "linf:0.1"
    from fortify.compress import RECIPES

    assert RECIPES.get("sparse")[0]["sparsity"] == 0.9  # the registered recipe is not modified
    run_task = ("trades", {"beta": 3.0})
    quick = CompressConfig(recipe="robust-int8-quick", task="run").step_dicts(run_task)
    assert quick[0]["finetune_task"] == "trades" and quick[0]["finetune_args"] == {"beta": 3.0}
    assert CompressConfig(recipe="robust-int8-quick").step_dicts(run_task)[0]["finetune_task"] == "pgd_at"
    naive = CompressConfig(recipe="naive-int8", task="run").step_dicts(run_task)
    assert "finetune_task" not in naive[0]  # a step without fine-tuning does not gain one
    qat = CompressConfig(recipe="robust-int8", task="run").step_dicts(run_task)
    assert qat[1]["task"] == "trades" and qat[1]["task_args"] == {"beta": 3.0}
    with pytest.raises(ConfigError, match="compress.task"):
        CompressConfig(task="pgd_at")


def test_run_task_fine_tunes_at_the_full_threat_without_warm_up() -> None:
    """``task: run`` keeps the run's task arguments except its training-only warm-up ramps and monitor
    (an eps ramp would restart a short fine-tuning at eps 0), and its threat follows compress.threat."""
    schedule = [{"name": "eps-ramp", "warmup": 0.4}, {"name": "steps-ramp", "min_steps": 1, "until": 0.6}]
    run_args = {"threat": "linf:0.3", "steps": 5, "schedule": schedule, "monitor": {"n": 256, "steps": 10}}
    steps = CompressConfig(recipe="robust-int8-quick", task="run", threat="linf:0.2").step_dicts(("pgd_at", run_args))
    assert steps[0]["finetune_task"] == "pgd_at"
    assert steps[0]["finetune_args"] == {"threat": "linf:0.2", "steps": 5}
    assert run_args["schedule"] == schedule and "monitor" in run_args  # the run's config is not modified
    qat = CompressConfig(recipe="robust-int8", task="run").step_dicts(("pgd_at", run_args))
    assert qat[1]["task_args"] == {"threat": "linf:0.3", "steps": 5}


def test_stage_figures_are_those_of_the_artefact(trained: torch.nn.Module, tmp_path: Path) -> None:
    from fortify.compress import load

    before = fingerprint(trained)
    sec = {"steps": [{"transform": "magnitude_prune", "sparsity": 0.8, "scope": "global"}], "n_robust": 40,
           "repeats": 2, "pgd_steps": 5}
    ctx = _ctx(tmp_path, trained, "compress", sec)
    CompressStage().run(ctx)
    assert fingerprint(trained) == before and ctx.model is trained
    m = ctx.metrics["compress"]
    art = Path(ctx.artefacts["compressed_model"])
    assert art == tmp_path / "compress" / "model.safetensors"
    assert m["bytes[compressed]"] == art.stat().st_size < m["bytes[original]"]
    assert m["size_ratio"] == pytest.approx(m["bytes[original]"] / m["bytes[compressed]"])
    total = sum(p.numel() for p in trained.parameters())
    assert m["params_total[original]"] == total
    assert m["params_nonzero[compressed]"] <= 0.25 * total  # 80% of the weights pruned (biases kept)
    xt, yt = ctx.data("test")
    reloaded = load(str(art)).eval()
    assert m["clean_acc[compressed]"] == pytest.approx(_acc(reloaded, xt, yt))
    assert m["clean_acc[original]"] == pytest.approx(_acc(trained, xt, yt))
    assert 0 <= m["robust_acc[compressed]"] <= m["clean_acc[compressed]"]
    assert Path(ctx.artefacts["pareto"]).is_file() and Path(ctx.artefacts["compress_json"]).is_file()
    (section,) = ctx.sections
    assert section.title == "Compression" and section.figures == ["compress/pareto.png"]
    assert section.tables[0].rows[1][1] == art.stat().st_size


def test_export_stage_int8_agrees_and_is_written(trained: torch.nn.Module, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    dest = tmp_path / "m.onnx"
    ctx = _ctx(tmp_path, trained, "export", {"path": str(dest), "int8": "dynamic", "n_check": 100})
    ExportStage().run(ctx)
    m = ctx.metrics["export"]
    assert m["onnx_bytes"] == dest.stat().st_size
    x, _ = ctx.data("test")
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x[:100].numpy().astype(np.float32)})[0]
    with torch.no_grad():
        ref = trained(x[:100]).numpy()
    assert float((got.argmax(1) == ref.argmax(1)).mean()) == pytest.approx(m["agreement"])
    assert m["agreement"] >= 0.99


def test_compress_tasks_visible_without_importing_compress() -> None:
    code = ("import sys; from fortify.train.tasks import TASKS; assert 'fortify.compress' not in sys.modules; "
            "assert 'standard' in TASKS and 'fortify.compress' not in sys.modules; "
            "print(sorted({'kd', 'ard', 'jacobian_kd', 'targeted_dropout'} & set(TASKS.names())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['ard', 'jacobian_kd', 'kd', 'targeted_dropout']"
