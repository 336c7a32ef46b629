"""``load`` stage: read a saved model (``fortify.models.load``) instead of training one.

Device: the model fortify rebuilds from the file is placed on the run's device (``ctx.device``, like
``torch.load(map_location=...)``). An ONNX file runs on ONNX Runtime's CPU provider, so the whole run
uses the CPU (a note; an explicit non-CPU ``train.device`` / ``--device`` is a ConfigError instead)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fortify.errors import ConfigError
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import LoadResult


@dataclass
class LoadConfig:
    """``load`` section: the model file and, for plain ``.pt``/``.pth`` state dicts, its architecture.

    ``path``: a ``.safetensors`` file written by ``fortify.models.save`` (architecture, shapes and
    normalisation are read from its metadata) or a ``.pt``/``.pth`` tensor state dict (read with
    ``torch.load(weights_only=True)``; anything else is refused). ``architecture``: a model
    registry name, required for ``.pt``/``.pth``.
    """

    path: str | None = None
    architecture: str | None = None
    #: allow a file saved from a ``model.factory`` model: rebuilding it imports and runs that user code
    trust_factory: bool = False


@register_stage
class LoadStage:
    """Load a saved model (safetensors + JSON metadata, or a plain .pt state dict) from load.path."""

    name: ClassVar[str] = "load"
    config_class: ClassVar[type | None] = LoadConfig

    def run(self, ctx: RunContext) -> LoadResult:
        """Set ``ctx.model`` and ``ctx.model_meta`` (in_shape, num_classes, dataset, training) from the file."""
        from fortify import models

        sec: LoadConfig | None = ctx.config.section(self.name)
        if sec is None or not sec.path:
            raise ConfigError("load.path is required: the saved model file to load")
        if Path(sec.path).suffix.lower() == ".onnx":  # a black-box target: ONNX Runtime, no gradients
            from fortify.compress.quantize.runtime import OnnxModule

            onnx = OnnxModule.load(sec.path)
            object.__setattr__(onnx, "source", str(sec.path))  # named by the attacks' refusal of white-box attacks
            self._cpu_for_onnx(ctx, sec.path)
            ctx.model = onnx
            meta = {}
        elif Path(sec.path).suffix.lower() in (".pt", ".pth"):
            ctx.model = models.load(sec.path, architecture=sec.architecture, device=ctx.device)
            meta = dict(models.architecture(ctx.model) or {})
        else:
            meta = dict(models.read_meta(sec.path))
            ctx.model = models.load(sec.path, trust_factory=sec.trust_factory, device=ctx.device)
        kept: dict[str, Any] = {k: meta[k] for k in ("in_shape", "num_classes", "dataset", "training", "architecture",
                                     "normalization") if k in meta}
        ctx.model_meta.update(kept)
        return LoadResult(path=ctx.add_artefact("input_model", sec.path, kind="input"), meta=kept)

    @staticmethod
    def _cpu_for_onnx(ctx: RunContext, path: str) -> None:
        """An ONNX Runtime model computes on the CPU: the run's device becomes the CPU (ConfigError when
        another device was asked for explicitly)."""
        import torch

        if ctx.device.type == "cpu":
            return
        asked = getattr(ctx.config.train, "device", None)
        if asked not in (None, "auto"):
            raise ConfigError(f"{path} is an ONNX model, which runs on ONNX Runtime's CPU provider, but the requested "
                              f"device is {ctx.device}; pass --device cpu (train.device=cpu)")
        ctx.print(f"note: {path} is an ONNX model (ONNX Runtime, CPU): this run uses the CPU, not {ctx.device}")
        ctx.use_device(torch.device("cpu"))
