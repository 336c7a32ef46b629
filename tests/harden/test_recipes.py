"""The harden recipes: every one validates and builds its task; bad values from the command line
give one clear line and exit status 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from fortify.config import list_recipes, load_config
from fortify.train import tasks

METHODS = ("pgd-at", "fast-at", "free-at", "trades", "mart", "multi-perturbation", "low-curvature", "rse",
           "importance", "robust")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", ["mnist-5k", "mnist"])
def test_recipe_validates_and_builds_its_task(method: str, dataset: str) -> None:
    name = f"{method}-{dataset}"
    assert name in list_recipes()
    cfg = load_config(name)
    assert cfg.data.name == dataset
    task = tasks.create(cfg.task.name, **cfg.task.args)
    if method != "rse":
        assert str(task.threat) == "linf:0.3"
        assert task.monitor_options is not None


@pytest.mark.parametrize(
    "override,needle",
    [("task.args.steps=0", "steps must be an integer >= 1"),
     ("task.args.threat=linf:-0.3", "eps must be a finite number >= 0"),
     ("task.name=pgd-at", "unknown task 'pgd-at'"),
     ("task.args.schedule=[warp]", "unknown schedule 'warp'")],
)
def test_bad_recipe_values_exit_2_with_one_line(override: str, needle: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.cli import main

    code = main(["train", "--recipe", "robust-mnist-5k", override, "--out", str(tmp_path), "-q",
                 "train.epochs=1", "data.train_limit=64", "data.test_limit=32"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err, err
