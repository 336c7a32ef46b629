"""``load`` stage: read a saved model (``fortify.models.load``) instead of training one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fortify.errors import ConfigError
from fortify.pipeline.base import RunContext, register_stage


@dataclass
class LoadConfig:
    """``load`` section: path of a model written by ``fortify.models.save`` (``.safetensors``)."""

    path: str | None = None


@register_stage
class LoadStage:
    """Load a saved model (safetensors + JSON metadata) given by load.path."""

    name: ClassVar[str] = "load"
    config_class: ClassVar[type | None] = LoadConfig

    def run(self, ctx: RunContext) -> None:
        from fortify import models

        sec: LoadConfig | None = ctx.config.section(self.name)
        if sec is None or not sec.path:
            raise ConfigError("load.path is required: the saved model file to load")
        meta = models.read_meta(sec.path)
        ctx.model = models.load(sec.path)
        ctx.model_meta.update(dict(meta) if isinstance(meta, dict) else {})
        ctx.add_artefact("input_model", sec.path, kind="input")
