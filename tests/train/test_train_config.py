"""TrainConfig validation: every bad value raises ConfigError naming the field and its allowed values."""
from __future__ import annotations

import pytest
import torch

from fortify.errors import ConfigError
from fortify.train import TrainConfig, train


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("epochs", 0, ">= 1"),
        ("epochs", 2.5, ">= 1"),
        ("epochs", True, ">= 1"),
        ("batch_size", 0, ">= 1"),
        ("optimizer", "rmsprop", "sgd, adam"),
        ("lr", 0.0, "> 0"),
        ("lr", float("nan"), "> 0"),
        ("momentum", 1.0, "[0, 1)"),
        ("momentum", -0.1, "[0, 1)"),
        ("weight_decay", -1e-4, ">= 0"),
        ("schedule", "multistep", "constant, cosine, onecycle, step"),
        ("warmup", 1.0, "[0, 1)"),
        ("seed", -1, ">= 0"),
        ("seed", "0", ">= 0"),
        ("grad_clip", 0.0, "> 0"),
    ],
)
def test_bad_value_names_field_and_range(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert f"TrainConfig.{field}" in str(e.value)
    assert allowed in str(e.value)


def test_good_values_are_kept_and_normalised() -> None:
    c = TrainConfig(epochs=3, batch_size=8, optimizer="adam", lr=1, momentum=0, weight_decay=0,
                    schedule="onecycle", warmup=None, seed=7, grad_clip=5)
    assert isinstance(c.lr, float) and c.lr == 1.0 and c.grad_clip == 5.0
    assert c.warmup_fraction == 0.3
    assert TrainConfig(schedule="cosine").warmup_fraction == 0.0
    assert TrainConfig(schedule="cosine", warmup=0.2).warmup_fraction == 0.2
    with pytest.raises(Exception):
        c.lr = 2.0  # frozen


def test_from_dict_round_trip_unknown_keys_and_numeric_strings() -> None:
    c = TrainConfig(epochs=2, lr=0.01, schedule="constant")
    assert TrainConfig.from_dict(c.to_dict()) == c
    # YAML 1.1 reads 1e-3 as a string: accepted for float fields
    assert TrainConfig.from_dict({"lr": "1e-3"}).lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 0.1})
    msg = str(e.value)
    assert "learning_rate" in msg and "allowed" in msg
    for name in TrainConfig.field_names():
        assert name in msg
    with pytest.raises(ConfigError, match="TrainConfig.lr"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_dict([("lr", 0.1)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="allowed"):
        c.replace(nope=1)
    assert c.replace(lr=0.5).lr == 0.5


def test_train_convenience_rejects_bad_fields() -> None:
    model = torch.nn.Linear(2, 2)
    data = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="allowed"):
        train(model, data, epochs=1, epoch=2, progress=False)
    with pytest.raises(ConfigError, match="TrainConfig.batch_size"):
        train(model, data, batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="unknown task"):
        train(model, data, task="no-such-task", progress=False)
