"""Config: recipes, dotted overrides (YAML-typed), validation messages naming keys and allowed values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from fortify.config import (apply_overrides, build_section, check_value, find_recipe, list_recipes, load_config,
                            read_recipe, recipes_dir, resolve)
from fortify.errors import ConfigError, UnknownNameError


def test_default_recipe_resolves_to_its_file_values() -> None:
    raw = yaml.safe_load((recipes_dir() / "default.yaml").read_text())
    cfg = load_config()
    assert "default" in list_recipes() and find_recipe("default").name == "default.yaml"
    assert cfg.data.name == raw["data"]["name"] == "mnist-5k"
    assert cfg.model.name == "small-cnn" and cfg.model.normalize is True
    assert cfg.stages == raw["stages"] == ["train", "accuracy", "robustness", "certify", "compress", "explain", "audit",
                                           "save", "report"]
    assert cfg.task.name == "pgd_at"  # the main job trains robustly by default (fortify's efficient recipe)
    assert cfg.train.epochs == raw["train"]["epochs"] and cfg.seed == raw["train"]["seed"]
    d = cfg.to_dict()
    assert set(d) >= {"data", "model", "task", "train", "stages", "output", "accuracy", "save", "report"}
    assert d["train"]["lr"] == pytest.approx(raw["train"]["lr"])


def test_overrides_are_yaml_typed_and_nested() -> None:
    cfg = load_config("standard-mnist-5k", overrides=["train.epochs=3", "train.lr=1e-3", "model.args.hidden=64", "data.test_limit=null",
                                 "stages=[train, save]", "output.dir='my runs'", "model.normalize=false",
                                 "task.args={label_smoothing: 0.1}"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string: converted for float fields
    assert cfg.model.args == {"hidden": 64} and cfg.model.normalize is False
    assert cfg.data.test_limit is None and cfg.stages == ["train", "save"]
    assert cfg.output.dir == "my runs" and cfg.task.args == {"label_smoothing": 0.1}
    assert "accuracy" in cfg.sections  # given in the recipe: validated and kept even when not listed
    assert set(resolve({"stages": ["train", "save"]}).sections) == {"save"}  # only listed/given stages
    raw = apply_overrides({"a": {"b": 1}}, ["a.c.d=2", "a.b=x=y"])
    assert raw == {"a": {"b": "x=y", "c": {"d": 2}}}


def test_unknown_key_names_key_and_allowed_keys() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.epoch=3"])
    msg = str(e.value)
    assert "'train.epoch'" in msg and "epochs" in msg and "batch_size" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"unknown config key 'accuracy\.bs'.*batch_size"):
        load_config(overrides=["accuracy.bs=3"])
    with pytest.raises(ConfigError, match=r"unknown config section 'trian'.*train"):
        load_config(overrides=["trian.epochs=3"])


def test_bad_values_name_allowed_values() -> None:
    with pytest.raises(ConfigError, match="sgd, adam"):
        load_config(overrides=["train.optimizer=rmsprop"])
    with pytest.raises(UnknownNameError, match=r"data\.name: unknown dataset 'nope'; allowed: .*mnist-5k"):
        load_config(overrides=["data.name=nope"])
    with pytest.raises(UnknownNameError, match=r"model\.name: .*small-cnn"):
        load_config(overrides=["model.name=nope"])
    with pytest.raises(UnknownNameError, match=r"stages: unknown stage 'bogus'; allowed: .*train"):
        load_config(overrides=["stages=[train, bogus]"])
    with pytest.raises(ConfigError, match=r"bad value 'abc' for 'data.train_limit'; expected an integer or null"):
        load_config(overrides=["data.train_limit=abc"])
    with pytest.raises(ConfigError, match=r"accuracy.batch_size must be an integer >= 1"):
        load_config(overrides=["accuracy.batch_size=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model.args.foo'; allowed keys in 'model.args': "
                                          r"channels, hidden"):
        load_config(overrides=["model.args.foo=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'task.args.eps'; allowed keys in 'task.args': "
                                          r"label_smoothing"):
        load_config("standard-mnist-5k", overrides=["task.args.eps=1"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(overrides=["train.epochs.x=1"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(overrides=["train.epochs"])


@dataclass
class _Demo:
    mode: Literal["fast", "exact"] = "fast"
    flag: bool = True
    n: Optional[int] = None
    xs: list[float] | None = None


def test_build_section_against_annotations() -> None:
    d = build_section(_Demo, {"mode": "exact", "n": 3, "xs": [1, 2.5]}, "demo")
    assert (d.mode, d.flag, d.n, d.xs) == ("exact", True, 3, [1.0, 2.5])
    with pytest.raises(ConfigError, match=r"bad value 'slow' for 'demo.mode'; allowed values: fast, exact"):
        build_section(_Demo, {"mode": "slow"}, "demo")
    with pytest.raises(ConfigError, match="'demo.flag'; expected true/false"):
        build_section(_Demo, {"flag": 1}, "demo")  # no silent int -> bool
    with pytest.raises(ConfigError, match=r"'demo.xs\[1\]'"):
        build_section(_Demo, {"xs": [1, "a"]}, "demo")
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_section(_Demo, [1], "demo")
    assert check_value(int, 3, "k") == 3
    with pytest.raises(ConfigError):
        check_value(int, True, "k")


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  name: mnist-5k\ntrain:\n  epochs: [1,\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        read_recipe(bad)
    msg = str(e.value)
    assert msg.startswith(f"malformed YAML in {bad}") and "\n" not in msg
    line = int(msg.split("at line ")[1].split(":")[0])
    assert 4 <= line <= 6  # the unclosed list starting on line 4
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("train:\n\tepochs: 3\n")
    with pytest.raises(ConfigError, match="at line 2"):
        read_recipe(tabs)
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        (tmp_path / "list.yaml").write_text("- a\n- b\n")
        read_recipe(tmp_path / "list.yaml")


def test_recipe_by_path_and_unknown_name(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("data: {name: digits}\ntrain: {epochs: 2}\nstages: [train]\n")
    cfg = load_config(str(p))
    assert cfg.data.name == "digits" and cfg.train.epochs == 2 and cfg.stages == ["train"]
    assert cfg.model.name == "small-cnn"  # defaults fill what the recipe leaves out
    with pytest.raises(UnknownNameError, match="unknown recipe 'nope'; allowed: default"):
        find_recipe("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        find_recipe(str(tmp_path / "missing.yaml"))
    assert resolve({}).stages == ["train", "accuracy", "save", "report"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_recipe_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"recipe '{p}' is empty"):
        read_recipe(p)
    p.write_text("{}\n")  # the explicit way to ask for every default
    assert read_recipe(p) == {}


@pytest.mark.parametrize("override, names", [
    ("task.args.threat=linf:-1", ["task.args.threat=linf:-1", "eps"]),
    ("task.args.threat=l7:0.1", ["task.args.threat=l7:0.1", "unknown norm 'l7'"]),
    ("task.args.threat=linf:abc", ["task.args.threat=linf:abc", "not a number"]),
    ("task.args.steps=0", ["task.args.steps=0", "steps must be an integer >= 1"]),
])
def test_bad_task_argument_values_name_their_key(override: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config("default", [override])
    assert all(n in str(e.value) for n in names), str(e.value)
    # a task that is not trained is not built: an evaluate-only config with the same value passes
    assert load_config("default", [override, "stages=[accuracy]"]).task.args


def _warnings(overrides: list[str]) -> list[str]:
    from fortify.pipeline.checks import eps_box_warnings

    return eps_box_warnings(load_config("default", overrides))


def test_eps_covering_the_input_box_warns_once_per_threat() -> None:
    assert _warnings([]) == []  # the default recipe's threats are far inside the box
    d = 28 * 28  # mnist-5k inputs, diameter: linf 1, l2 28, l1 784
    (w,) = _warnings(["robustness.threats=[linf:5, 'l2:2']"])
    assert w.startswith("robustness.threats[0] linf:5: eps 5 >= 1, the linf diameter") and "[0, 1]^784" in w
    assert _warnings(["robustness.threats=[linf:1]"])  # at the diameter: already every input
    assert not _warnings(["robustness.threats=[linf:0.999]"])
    assert _warnings(["robustness.threats=[l2:28]"]) and not _warnings(["robustness.threats=[l2:27.9]"])
    assert _warnings([f"robustness.threats=[l1:{d}]"]) and not _warnings([f"robustness.threats=[l1:{d - 1}]"])
    keys = [w.split(" ", 1)[0] for w in _warnings(["task.args.threat=linf:2", "certify.threat=linf:1.5",
                                                   "compress.threat=linf:3"])]
    assert keys == ["task.args.threat", "certify.threat", "compress.threat"]
    assert not _warnings(["task.args.threat=linf:2", "stages=[accuracy]"])  # no training: task unused


# -- issue 12: config imports no pillar, threats are objects, the renamed stage keeps its old name --------------
def test_config_parses_the_default_recipe_without_any_pillar_or_the_pipeline() -> None:
    import subprocess
    import sys

    code = ("import sys, fortify.config as c\n"
            "cfg = c.parse_config(c.apply_overrides(c.read_recipe('default'), ['train.epochs=2']))\n"
            "assert cfg.data.name == 'mnist-5k' and cfg.stages[1] == 'accuracy' and not cfg.complete\n"
            "assert cfg.seed == 0 and cfg.sections['robustness']['threats'] == ['linf:0.3']\n"
            "print(sorted(m for m in sys.modules if m.startswith(('fortify.attacks', 'fortify.certify', 'fortify.compress', 'fortify.train', 'fortify.evaluate', "
            "'fortify.pipeline', 'fortify.data', 'fortify.models', 'fortify.report', 'fortify.cli'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    import fortify.config as config_module

    source = Path(config_module.__file__).read_text()
    for pillar in ("attacks", "certify", "compress", "train", "evaluate", "pipeline", "data", "models"):
        assert f"from fortify.{pillar}" not in source and f"import fortify.{pillar}" not in source, pillar


def test_threats_are_threat_models_and_round_trip_through_the_stored_config() -> None:
    from fortify.threat import ThreatModel

    cfg = load_config(overrides=["robustness.threats=[linf:0.3, 'l2:1.5']", "certify.threat=linf:0.0313725490196",
                                 "compress.threat=linf:0.1"])
    assert cfg.section("robustness").threats == [ThreatModel("linf", 0.3), ThreatModel("l2", 1.5)]
    assert cfg.section("certify").threat == ThreatModel("linf", 0.0313725490196)  # every digit kept
    assert cfg.section("compress").threat == ThreatModel("linf", 0.1)
    d = cfg.to_dict()
    assert d["robustness"]["threats"] == ["linf:0.3", "l2:1.5"] and d["certify"]["threat"] == "linf:0.0313725490196"
    assert resolve(d).to_dict() == d  # a recorded run's config reads back the same (resume)
    assert load_config(overrides=["robustness.threats=linf:0.2"]).section("robustness").threats == [
        ThreatModel("linf", 0.2)]  # one threat where a list is expected
    with pytest.raises(ConfigError, match=r"certify.threat: .*eps"):
        load_config(overrides=["certify.threat=linf:-1"])


def test_old_stage_name_evaluate_works_with_one_deprecation_warning() -> None:
    from fortify.config import DeprecatedNameWarning

    with pytest.warns(DeprecatedNameWarning) as rec:
        cfg = resolve({"stages": ["train", "evaluate", "save"], "evaluate": {"batch_size": 7}})
    assert len(rec) == 1 and "'evaluate' is now called 'accuracy'" in str(rec[0].message)
    assert cfg.stages == ["train", "accuracy", "save"] and cfg.section("accuracy").batch_size == 7
    with pytest.warns(DeprecatedNameWarning):  # an old-name override on a new recipe wins over its section
        assert load_config(overrides=["evaluate.batch_size=9"]).section("accuracy").batch_size == 9
    with pytest.raises(ConfigError, match="the same stage"):
        resolve({"stages": ["evaluate", "accuracy"]})


def test_method_options_are_checked_against_the_constructor_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"compress.steps\[0\]: .*'rnk'.*did you mean 'rank'"):
        load_config(overrides=["compress.steps=[{transform: low_rank, rnk: 2}]"])
    with pytest.raises(ConfigError, match=r"compress.steps\[1\]: .*'sparsty'"):
        load_config(overrides=["compress.steps=[{transform: low_rank}, {transform: magnitude_prune, sparsty: 0.5}]"])
    assert load_config(overrides=["certify.method=smoothing", "certify.threat=l2:0.5"]).section("certify").method


def test_threats_with_other_bounds_or_per_feature_fields_round_trip_through_plain_data() -> None:
    import torch

    from fortify.config import plain
    from fortify.threat import ThreatModel

    per_feature = ThreatModel("linf", 0.1, (torch.zeros(3), torch.full((3,), 0.5)), torch.tensor([True, False, True]))
    for t in (per_feature, ThreatModel("linf", 8.0, (0.0, 255.0)), ThreatModel("l2", 0.5)):
        assert ThreatModel.coerce(plain(t)) == t
    assert plain(ThreatModel("l2", 0.5)) == "l2:0.5"
