"""Pipeline: stages run in the listed order, metrics/artefacts are recorded, a failure marks the run
failed, keeps what was written, and the remaining stages do not run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from fortify.config import resolve
from fortify.errors import ConfigError, InputError
from fortify.pipeline import STAGES, RunContext, Stage, StageResult, StageResultError, register_stage, run_pipeline
from fortify.pipeline.results import AccuracyResult
from fortify.pipeline.stages.accuracy import clean_accuracy
from fortify.report.sections import Section
from fortify.store import RunStore


@dataclass
class _MarkConfig:
    label: str = "x"


@dataclass
class _MarkResult(StageResult):
    order: list[str]


class _Mark:
    """Test stage: returns the stage names run so far (the previous _Mark's result + its own), writes a file."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = _MarkConfig

    def run(self, ctx: RunContext) -> _MarkResult:
        before = [r for r in ctx.results.values() if isinstance(r, _MarkResult)]
        order = (before[-1].order if before else []) + [self.name]
        p = ctx.path(f"{self.name}.txt")
        p.write_text(self.name)
        ctx.add_artefact(self.name, p, kind="test")
        ctx.log_metrics({"value": len(order)})
        ctx.add_section(Section(self.name, text="hello"))
        return _MarkResult(order)


def _mk(name: str) -> type:
    return type(f"Stage_{name}", (_Mark,), {"name": name})


class _Boom:
    name: ClassVar[str] = "t-boom"
    config_class: ClassVar[type | None] = None

    def run(self, ctx: RunContext) -> None:
        raise InputError("boom: bad input\nsecond line")


for _cls in (_mk("t-a"), _mk("t-b"), _mk("t-c"), _Boom):
    if _cls.name not in STAGES:
        register_stage(_cls)


def _cfg(tmp_path: Path, stages: list[str], **sections: dict) -> object:
    return resolve({"stages": stages, "output": {"dir": str(tmp_path / "runs")}, **sections})


def test_stages_run_in_listed_order_and_are_recorded(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "fortify.db")
    cfg = _cfg(tmp_path, ["t-c", "t-a", "t-b"], **{"t-a": {"label": "y"}})
    assert cfg.section("t-a").label == "y" and cfg.section("t-c").label == "x"
    ctx = run_pipeline(cfg, verb="run", argv=["run"], store=store, quiet=True)
    assert ctx.result("t-b", _MarkResult).order == ["t-c", "t-a", "t-b"]
    assert list(ctx.results) == ["t-c", "t-a", "t-b"] and ctx.stages == ["t-c", "t-a", "t-b"]
    with pytest.raises(StageResultError, match="needs the result of the 'train' stage"):
        ctx.result("train", AccuracyResult)
    with pytest.raises(StageResultError, match="is a _MarkResult, not a AccuracyResult"):
        ctx.result("t-a", AccuracyResult)
    assert isinstance(_mk("zz")(), Stage)
    rec = store.get_run(ctx.run_id)
    assert rec.status == "ok" and rec.error is None and rec.run_dir == str(ctx.run_dir)
    assert rec.config["stages"] == ["t-c", "t-a", "t-b"] and rec.config["t-a"] == {"label": "y"}
    vals = {(m.stage, m.key): m.value for m in rec.metrics}
    assert vals[("t-c", "value")] == 1 and vals[("t-a", "value")] == 2 and vals[("t-b", "value")] == 3
    assert all(("t-" + s, "seconds") in vals for s in "abc") and ("run", "total_seconds") in vals
    assert [a.name for a in rec.artefacts] == ["config", "t-c", "t-a", "t-b"]
    assert json.loads((ctx.run_dir / "config.json").read_text())["stages"] == ["t-c", "t-a", "t-b"]
    assert [s.stage for s in ctx.sections] == ["t-c", "t-a", "t-b"]


def test_failure_marks_run_failed_and_keeps_files(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "fortify.db")
    cfg = _cfg(tmp_path, ["t-a", "t-boom", "t-b"])
    with pytest.raises(InputError, match="boom"):
        run_pipeline(cfg, store=store, quiet=True)
    (rec,) = store.list_runs()
    assert rec.status == "failed" and rec.error == "[t-boom] boom: bad input"
    run_dir = Path(rec.run_dir)
    assert (run_dir / "t-a.txt").read_text() == "t-a" and not (run_dir / "t-b.txt").exists()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "failed" and report["error"] == "[t-boom] boom: bad input"
    assert report["metrics"]["t-a"]["value"] == 1 and "t-b" not in report["metrics"]
    assert [a.name for a in store.get_run(rec.id).artefacts] == ["config", "t-a"]


def test_unwritable_output_creates_no_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    store = RunStore(tmp_path / "fortify.db")
    cfg = resolve({"stages": ["t-a"], "output": {"dir": str(blocker / "runs")}})
    from fortify.errors import OutputError

    with pytest.raises(OutputError, match="not writable"):
        run_pipeline(cfg, store=store, quiet=True)
    assert store.list_runs() == [] and blocker.read_text() == "keep me"


def test_accuracy_stage_matches_independent_count(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(50, 1, 4, 4), torch.randint(0, 3, (50,))
    with torch.no_grad():
        expected = float((model(x).argmax(1) == y).float().mean())
    model.train()
    assert clean_accuracy(model, x, y, batch_size=7) == pytest.approx(expected)
    assert model.training  # flags restored
    cfg = _cfg(tmp_path, ["accuracy"], accuracy={"batch_size": 8})
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", model=model, quiet=True)
    ctx.set_data("test", x, y)
    res = STAGES.get("accuracy")().run(ctx)
    assert res == AccuracyResult(clean_accuracy=pytest.approx(expected), n=50)
    assert ctx.metrics[""]["clean_accuracy"] == pytest.approx(expected) and model.training
    ctx.model_meta["in_shape"] = [1, 28, 28]
    with pytest.raises(InputError, match=r"inputs of shape \(1, 4, 4\) but the model expects \(1, 28, 28\)"):
        STAGES.get("accuracy")().run(ctx)
    ctx.set_data("test", x * 2, y)  # out of [0, 1]
    with pytest.raises(InputError, match=r"values must lie in \[0, 1\]"):
        STAGES.get("accuracy")().run(ctx)
    ctx.model = None
    with pytest.raises(ConfigError, match="needs a model"):
        STAGES.get("accuracy")().run(ctx)


class _FlakyOnce:
    """Fails while run_dir/flaky.flag is absent; creates it on the first call."""

    name: ClassVar[str] = "t-flaky"
    config_class: ClassVar[type | None] = None

    def run(self, ctx: RunContext) -> None:
        flag = ctx.run_dir / "flaky.flag"
        if not flag.exists():
            flag.write_text("1")
            raise KeyboardInterrupt  # like Ctrl-C after training finished


if "t-flaky" not in STAGES:
    register_stage(_FlakyOnce)


def test_resume_continues_the_same_run_from_its_checkpoint(tmp_path: Path) -> None:
    from fortify import models

    store = RunStore(tmp_path / "fortify.db")
    cfg = resolve({"stages": ["train", "t-flaky", "accuracy"], "output": {"dir": str(tmp_path / "runs")},
                   "data": {"train_limit": 64, "test_limit": 32}, "train": {"epochs": 2, "batch_size": 32},
                   "model": {"name": "mlp", "args": {"hidden": [8]}, "normalize": False}})
    net = models.create("mlp", in_shape=(1, 28, 28), num_classes=10, hidden=[8])  # what the stage builds
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, store=store, quiet=True, model=net)
    (rec,) = store.list_runs()
    assert rec.status == "failed" and rec.error == "[t-flaky] interrupted"
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = run_pipeline(resolve(rec.config), store=store, quiet=True, resume=rec.id[:10])
    assert ctx.run_id == rec.id and ctx.run_dir == Path(rec.run_dir)
    after = store.get_run(rec.id)
    assert after.status == "ok" and after.error is None and len(store.list_runs()) == 1
    assert len(ctx.history) == 2  # no epoch re-run: the checkpoint of epoch 2 was complete
    state = ctx.model.state_dict()
    for k, v in trained.items():  # resumed weights == the interrupted run's final weights
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    assert [a.name for a in after.artefacts].count("config") == 1
    assert 0.0 <= ctx.metrics["accuracy"]["clean_accuracy"] <= 1.0
    assert ctx.result("accuracy", AccuracyResult).clean_accuracy == ctx.metrics["accuracy"]["clean_accuracy"]


def test_every_stage_module_registers_and_a_new_stage_is_found(tmp_path: Path) -> None:
    import pkgutil

    from fortify.pipeline import stages as stage_pkg

    modules = {m.name for m in pkgutil.iter_modules(stage_pkg.__path__)}
    assert {"robustness", "certify", "compress", "train", "accuracy", "report"} <= modules
    assert {"robustness", "certify", "compress", "export"} <= set(STAGES.names())

    @dataclass
    class AlphaConfig:
        eps: float = 0.3

    @register_stage
    class Alpha:
        """alpha stage"""

        name = "t-alpha"
        config_class = AlphaConfig

        def run(self, ctx: Any) -> None:
            ctx.log_metrics({"eps": ctx.config.section("t-alpha").eps})

    assert "t-alpha" in STAGES and STAGES.help("t-alpha") == "alpha stage"
    cfg = _cfg(tmp_path, ["t-alpha"], **{"t-alpha": {"eps": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown config key 't-alpha.norm'; allowed keys in 't-alpha': eps"):
        _cfg(tmp_path, ["t-alpha"], **{"t-alpha": {"norm": "linf"}})
    assert run_pipeline(cfg, quiet=True).metrics["t-alpha"]["eps"] == pytest.approx(0.1)


def test_context_helpers_keep_the_callers_model_flags_and_write_strict_json(tmp_path: Path) -> None:
    from fortify.models.state import fingerprint

    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # mixed flags, as a caller may hand them over
    before = fingerprint(model)
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    cfg = _cfg(tmp_path, ["accuracy"])
    ctx = RunContext(config=cfg, run_dir=tmp_path, run_id="r", model=model, quiet=True, stage="accuracy")
    ctx.set_data("test", x, y)
    xs, ys = ctx.test_inputs(7)
    assert torch.equal(xs, x[:7]) and torch.equal(ys, y[:7])
    res = STAGES.get("accuracy")().run(ctx)
    with torch.no_grad():
        model.eval()
        expected = float((model(x).argmax(1) == y).float().mean())
        model.train()
        model[2].eval()
    assert res.clean_accuracy == pytest.approx(expected) and fingerprint(model) == before
    y_bad = y.clone()
    y_bad[0] = 5
    ctx.set_data("test", x, y_bad)
    with pytest.raises(InputError, match="label 5 but the model has 3 classes"):
        ctx.test_inputs(None)
    assert ctx.out_dir("out") == tmp_path / "out"
    path = ctx.write_json("out/doc.json", {"a": float("nan"), "t": torch.tensor(0.5), "xs": (1, 2)})
    assert path == tmp_path / "out" / "doc.json"
    assert json.loads(path.read_text()) == {"a": None, "t": 0.5, "xs": [1, 2]}


class _Quiet:
    """A stage written before typed results: returns None."""

    name: ClassVar[str] = "t-quiet"
    config_class: ClassVar[type | None] = None

    def run(self, ctx: RunContext) -> None:
        ctx.log_metrics({"x": 1})


if "t-quiet" not in STAGES:
    register_stage(_Quiet)


def test_a_stage_returning_nothing_gets_the_base_result(tmp_path: Path) -> None:
    ctx = run_pipeline(_cfg(tmp_path, ["t-quiet"]), quiet=True)
    assert type(ctx.results["t-quiet"]) is StageResult and ctx.history == []
