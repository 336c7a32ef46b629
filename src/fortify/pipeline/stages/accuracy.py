"""``accuracy`` stage (called ``evaluate`` before; the old name works for one release): clean accuracy
of the model on the test split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fortify.errors import ConfigError, InputError
from fortify.metrics import clean_accuracy  # eval mode, no grad, the model's flags restored
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import AccuracyResult
from fortify.report.findings import accuracy_finding
from fortify.report.sections import Section, Table
from fortify.validation import check_images, check_labels


@dataclass
class AccuracyConfig:
    """``accuracy`` section: the batch size used for inference."""

    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"accuracy.batch_size must be an integer >= 1, got {self.batch_size!r}")


class AccuracyStage:
    """Clean test accuracy of the model on the configured dataset."""

    name: ClassVar[str] = "accuracy"
    config_class: ClassVar[type | None] = AccuracyConfig

    def run(self, ctx: RunContext) -> AccuracyResult:
        """Validate the test split against the model (shape, range, labels), then log ``clean_accuracy``."""
        model = ctx.require_model()
        sec: AccuracyConfig = ctx.config.section(self.name) or AccuracyConfig()
        x, y = ctx.data("test")
        check_images(x, name=f"{ctx.config.data.name} test inputs")
        expected = ctx.model_meta.get("in_shape")
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise InputError(f"dataset {ctx.config.data.name!r} has inputs of shape {tuple(x.shape[1:])} but the "
                             f"model expects {tuple(expected)}")
        num_classes = ctx.model_meta.get("num_classes")
        check_labels(y, x.shape[0], num_classes, name=f"{ctx.config.data.name} test labels")
        try:
            acc = clean_accuracy(model, x, y, sec.batch_size)
        except RuntimeError as e:
            if "shape" in str(e) or "size" in str(e):
                raise InputError(f"the model cannot take inputs of shape {tuple(x.shape[1:])} from dataset "
                                 f"{ctx.config.data.name!r}: {str(e).splitlines()[0]}") from None
            raise
        n = int(x.shape[0])
        ctx.log_metrics({"clean_accuracy": acc, "test_examples": n})
        ctx.add_section(Section("Clean accuracy", tables=[Table(
            ["dataset", "split", "images", "clean accuracy (%)"], [[ctx.config.data.name, "test", n, round(100 * acc, 2)]])],
            findings=[accuracy_finding("clean_accuracy", "Clean accuracy", acc, n,
                                       detail=f"{ctx.config.data.name} test split, {n} images")]))
        ctx.print(f"clean test accuracy: {acc:.2%} on {n} images")
        return AccuracyResult(clean_accuracy=acc, n=n)


register_stage(AccuracyStage, aliases=("evaluate",))
