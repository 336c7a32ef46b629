"""``evaluate`` stage: clean accuracy of the model on the test split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fortify.errors import ConfigError, InputError
from fortify.pipeline.base import RunContext, register_stage
from fortify.report.sections import Section, Table
from fortify.validation import check_images, check_labels


@dataclass
class EvaluateConfig:
    """``evaluate`` section: the batch size used for inference."""

    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"evaluate.batch_size must be an integer >= 1, got {self.batch_size!r}")


@torch.no_grad()
def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of ``x (N, C, H, W)`` classified as ``y (N,)``; the model's train/eval flags are restored."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size])
            correct += int((logits.argmax(dim=1) == y[i:i + batch_size]).sum())
    finally:
        for m, f in flags.items():
            m.training = f
    return correct / max(1, x.shape[0])


@register_stage
class EvaluateStage:
    """Clean test accuracy of the model on the configured dataset."""

    name: ClassVar[str] = "evaluate"
    config_class: ClassVar[type | None] = EvaluateConfig

    def run(self, ctx: RunContext) -> None:
        """Validate the test split against the model (shape, range, labels), then log ``clean_accuracy``."""
        if ctx.model is None:
            raise ConfigError("the evaluate stage needs a model: put 'train' or 'load' before it in 'stages'")
        sec: EvaluateConfig = ctx.config.section(self.name) or EvaluateConfig()
        x, y = ctx.data("test")
        check_images(x, name=f"{ctx.config.data.name} test inputs")
        expected = ctx.model_meta.get("in_shape")
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise InputError(f"dataset {ctx.config.data.name!r} has inputs of shape {tuple(x.shape[1:])} but the "
                             f"model expects {tuple(expected)}")
        num_classes = ctx.model_meta.get("num_classes")
        check_labels(y, x.shape[0], num_classes, name=f"{ctx.config.data.name} test labels")
        try:
            acc = clean_accuracy(ctx.model, x, y, sec.batch_size)
        except RuntimeError as e:
            if "shape" in str(e) or "size" in str(e):
                raise InputError(f"the model cannot take inputs of shape {tuple(x.shape[1:])} from dataset "
                                 f"{ctx.config.data.name!r}: {str(e).splitlines()[0]}") from None
            raise
        ctx.log_metrics({"clean_accuracy": acc, "test_examples": int(x.shape[0])})
        ctx.add_section(Section("Clean accuracy", tables=[Table(
            ["dataset", "split", "examples", "clean accuracy"], [[ctx.config.data.name, "test", int(x.shape[0]), acc]])]))
        ctx.print(f"clean test accuracy: {acc:.2%} on {x.shape[0]} images")
