"""``save`` stage: write the model with :func:`fortify.models.save` (safetensors + JSON metadata)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fortify.errors import ConfigError
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import SaveResult


@dataclass
class SaveConfig:
    """``save`` section: the model file name inside the run folder."""

    filename: str = "model.safetensors"

    def __post_init__(self) -> None:
        if not self.filename or "/" in self.filename or "\\" in self.filename or not self.filename.endswith(
                ".safetensors"):
            raise ConfigError(f"save.filename must be a plain file name ending in .safetensors, got {self.filename!r}")


@register_stage
class SaveStage:
    """Save the model (weights + metadata) in the run folder."""

    name: ClassVar[str] = "save"
    config_class: ClassVar[type | None] = SaveConfig

    def run(self, ctx: RunContext) -> SaveResult:
        """Write ``run_dir/<save.filename>`` with the dataset, training and metrics as metadata."""
        from fortify import models

        model = ctx.require_model()
        sec: SaveConfig = ctx.config.section(self.name) or SaveConfig()
        meta = {"dataset": ctx.model_meta.get("dataset", ctx.config.data.name),
                "training": ctx.model_meta.get("training"),
                "metrics": {s: dict(kv) for s, kv in ctx.metrics.items()},
                "run_id": ctx.run_id}
        path = ctx.path(sec.filename)
        models.save(model, path, meta)
        return SaveResult(path=ctx.add_artefact("model", path, kind="model"))
