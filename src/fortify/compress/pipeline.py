"""``compress(model, recipe_or_steps, data, ...)``: run transforms in sequence, save and measure.

A step is ``{"transform": <name in TRANSFORMS>, **hyper-parameters}`` or a :class:`Transform`
instance; a recipe is a registered list of steps (:data:`RECIPES`). The pipeline keeps the float
twin of a quantized model (for transfer attacks and MAC counts), writes the final artefact
(``model.onnx`` for an int8 ONNX model, ``model.safetensors`` in the compressed format otherwise:
``codebook`` after Deep Compression, ``auto`` = sparse-if-smaller else dense), measures the model
before and after on ``test`` and draws the Pareto plot.

>>> from fortify.compress import compress                                  # doctest: +SKIP
>>> res = compress(model, "robust-int8", (x, y), test=(xt, yt), threat="linf:0.3", out_dir="run/")
>>> res.measurements[-1].bytes, res.artefact                               # doctest: +SKIP
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fortify import progress
from fortify.compress.base import TRANSFORMS, Data, Transform, check_data, sequential_of
from fortify.compress.measure import Measurement, measure
from fortify.compress.quantize.runtime import OnnxModule
from fortify.errors import ConfigError, OutputError, UnknownNameError, UnsupportedLayerError
from fortify.registry import Registry

Step = Mapping[str, Any] | Transform
RECIPES: Registry[list[dict[str, Any]]] = Registry("compression recipe")

_ADV = {"threat": "linf:0.3", "steps": 10}
RECIPES.register("robust-int8", [
    {"transform": "channel_prune", "amount": 0.5, "finetune_task": "pgd_at", "finetune_args": _ADV,
     "finetune_config": {"epochs": 5, "lr": 0.01, "schedule": "cosine"}},
    {"transform": "qat_int8", "epochs": 2, "task": "pgd_at", "task_args": _ADV, "config": {"lr": 0.002}},
], help="structured pruning with adversarial fine-tuning, then adversarial QAT and int8 export")
# robust-int8-quick on the main job (robust small-cnn, mnist-5k, linf 0.3, 200 images, 3 attack seeds):
# 1 epoch of fine-tuning at lr 0.01 lost 11 pp of robust accuracy (15 pp with the run's eps ramp), 3 epochs
# 2.5-6 pp, 5 epochs at lr 0.01 1.5-3.5 pp, 5 epochs at lr 0.02 1.5 pp (~7 s on one thread), 13.2x smaller.
RECIPES.register("robust-int8-quick", [
    {"transform": "channel_prune", "amount": 0.5, "finetune_task": "pgd_at",
     "finetune_args": {"threat": "linf:0.3", "steps": 5}, "finetune_config": {"epochs": 5, "lr": 0.02}},
    {"transform": "int8_static"},
], help="cheap robust-int8 (the pipeline's default): structured pruning, 5 epochs of adversarial fine-tuning "
        "(PGD-5 at the full eps), int8 static quantization")
RECIPES.register("hydra", [
    {"transform": "hydra", "sparsity": 0.9, "score_epochs": 2, "finetune_epochs": 1, "task_args": _ADV},
], help="HYDRA: adversarial importance scores at 90% sparsity + adversarial fine-tuning, sparse file")
RECIPES.register("naive-int8", [
    {"transform": "channel_prune", "amount": 0.5},
    {"transform": "int8_static"},
], help="robustness-blind baseline: structured magnitude pruning + int8 static quantization, no fine-tuning")
RECIPES.register("sparse", [
    {"transform": "magnitude_prune", "sparsity": 0.9, "scope": "global", "finetune_task": "pgd_at",
     "finetune_args": _ADV},
], help="90% global magnitude pruning with adversarial fine-tuning, saved in the sparse format")
RECIPES.register("deep-compression", [
    {"transform": "deep_compression", "sparsity": 0.92, "bits": 5, "prune_epochs": 2, "share_epochs": 1},
], help="Han et al. 2016: prune, k-means weight sharing, entropy-coded file")
RECIPES.register("graph-prune", [{"transform": "graph_channel_prune", "sparsity": 0.5}],
                 help="structured channel pruning of any traceable model (ResNet, DenseNet: coupled residual/concat "
                      "channels, DepGraph groups), half the channels of every group, no fine-tuning")
RECIPES.register("int8-dynamic", [{"transform": "int8_dynamic"}], help="int8 dynamic quantization only")
RECIPES.register("int8-static", [{"transform": "int8_static"}], help="int8 static quantization only")


@dataclass
class CompressionResult:
    """What :func:`compress` produced: the final model, per-step reports, measurements, files."""

    model: nn.Module
    reports: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    artefact: Path | None = None
    pareto: Path | None = None
    float_twin: nn.Module | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``dict`` of the fields."""
        return {"reports": self.reports, "measurements": [m.to_dict() for m in self.measurements],
                "artefact": str(self.artefact) if self.artefact else None,
                "pareto": str(self.pareto) if self.pareto else None}


def resolve_steps(recipe_or_steps: str | Sequence[Step]) -> list[Transform]:
    """Turn a recipe name or a list of step dicts / Transform instances into Transform objects."""
    steps = RECIPES.get(recipe_or_steps) if isinstance(recipe_or_steps, str) else recipe_or_steps
    if not isinstance(steps, Sequence) or not steps:
        raise ConfigError("a compression recipe must be a non-empty list of steps")
    out: list[Transform] = []
    for k, step in enumerate(steps):
        if isinstance(step, Transform):
            out.append(step)
            continue
        if not isinstance(step, Mapping) or "transform" not in step:
            raise ConfigError(f"step {k} must be a Transform or a mapping with a 'transform' key, got {step!r}")
        kwargs = {key: v for key, v in step.items() if key != "transform"}
        try:
            out.append(TRANSFORMS.get(step["transform"])(**kwargs))
        except UnknownNameError:
            raise
        except TypeError as exc:
            raise ConfigError(f"step {k} ({step['transform']}): {exc}") from None
    return out


def save_artefact(model: nn.Module, out_dir: str | Path, *, encoding: str = "auto") -> Path:
    """Write the final artefact into ``out_dir`` (``model.onnx`` or ``model.safetensors``)."""
    from fortify.compress.formats import save_compressed

    d = Path(out_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {d}: {exc}") from None
    if isinstance(model, OnnxModule):
        return model.save(d / "model.onnx")
    if not is_sequential(model):  # a graph model (ResNet, DenseNet, ...): weights + its base architecture
        from fortify.compress.prune.graph_io import save_graph_model

        return save_graph_model(model, d / "model.safetensors")
    return save_compressed(model, d / "model.safetensors", encoding=encoding)


def is_sequential(model: nn.Module) -> bool:
    """Whether ``model`` is the Sequential family :func:`save_compressed` writes (else a graph model)."""
    try:
        sequential_of(model)
    except UnsupportedLayerError:
        return False
    return True


def compress(model: nn.Module, recipe_or_steps: str | Sequence[Step], data: Data | None = None, *,
             example_inputs: torch.Tensor | None = None, test: Data | None = None, threat: str | None = "linf:0.3",
             out_dir: str | Path | None = None, measure_args: Mapping[str, Any] | None = None) -> CompressionResult:
    """Run a compression recipe on ``model`` (never mutated) and return a :class:`CompressionResult`.

    Args:
        model: a fortify Sequential model, or a graph model from :func:`fortify.models.create` (ResNet,
            DenseNet, ...; only graph-aware steps such as ``graph_channel_prune`` accept it), optionally
            ``Normalized``. A graph model's artefact is written by
            :func:`fortify.compress.prune.graph_io.save_graph_model`.
        recipe_or_steps: a name in :data:`RECIPES` or a list of steps (see module doc).
        data: training/calibration data ``(x (N, C, H, W) in [0, 1], y (N,))``.
        example_inputs: ``(B, C, H, W)``; defaults to ``data[0][:8]`` or ``test[0][:8]``.
        test: evaluation data; when given, ``measurements`` holds the model before and after
            (:func:`fortify.compress.measure.measure` with ``measure_args``) and, with ``out_dir``,
            ``pareto.png`` and ``compress.json`` are written.
        threat: threat model of the robust accuracy (``None`` skips it).
        out_dir: folder for the artefact, the report and the plot.

    Inside :func:`fortify.progress.enabled` each step shows progress (and fine-tuning its epochs).
    """
    transforms = resolve_steps(recipe_or_steps)
    if data is not None:
        data = check_data(data)
    if test is not None:
        test = check_data(test, "test")
    if example_inputs is None:
        source = data if data is not None else test
        if source is None:
            raise ConfigError("compress needs example_inputs, data or test")
        example_inputs = source[0][:8]
    current, twin, reports = model, None, []
    encoding = "auto"
    with progress.task("compress", total=len(transforms), unit="steps") as bar:
        for tr in transforms:
            if isinstance(current, OnnxModule):
                raise ConfigError(f"step {tr.name!r} comes after quantization; quantization must be the last step")
            bar.update(info=tr.name)
            result = tr(current, example_inputs, data=data)
            bar.advance()
            reports.append(result.report)
            twin = result.extras.get("float_twin", twin)
            current = result.model
            encoding = "codebook" if tr.name == "deep_compression" else "auto"
    res = CompressionResult(model=current, reports=reports, float_twin=twin)
    if out_dir is not None:
        res.artefact = save_artefact(current, out_dir, encoding=encoding)
    if test is not None:
        margs = dict(measure_args or {})
        names = {"original": model, "compressed": current}
        margs.setdefault("float_twins", {"compressed": twin} if twin is not None else {})
        arts: dict[str, str | Path] = {"compressed": res.artefact} if res.artefact is not None else {}
        with tempfile.TemporaryDirectory(prefix="fortify-graph-") as tmp:
            if not is_sequential(model):  # measure's own writer handles Sequentials only: give it graph files
                from fortify.compress.prune.graph_io import save_graph_model

                arts["original"] = save_graph_model(model, Path(tmp, "original.safetensors"))
                arts.setdefault("compressed", save_graph_model(current, Path(tmp, "compressed.safetensors")))
            res.measurements = measure(names, test[0], test[1], threat=threat, artefacts=arts,
                                       encodings={"original": "dense", "compressed": encoding}, **margs)
        if out_dir is not None:
            from fortify.compress.pareto import plot_pareto

            res.pareto = plot_pareto(res.measurements, Path(out_dir) / "pareto.png")
    if out_dir is not None:
        (Path(out_dir) / "compress.json").write_text(json.dumps(res.to_dict(), indent=2, default=str))
    return res


__all__ = ["CompressionResult", "RECIPES", "compress", "resolve_steps", "save_artefact"]
