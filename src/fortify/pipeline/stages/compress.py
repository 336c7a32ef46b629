"""``compress`` pipeline stage: compress the run's model with a recipe and measure it for real.

Runs a compression recipe (:data:`fortify.compress.RECIPES`, or explicit ``steps``) on the run's
model (trained by ``train`` or read by ``load``; ``ctx.model`` itself is left unchanged, so a later
``save`` still writes the uncompressed model), writes the artefact (``compress/model.onnx`` for an
int8 model, ``compress/model.safetensors`` in the sparse/codebook format otherwise), then measures
the model before and after with :func:`fortify.compress.measure` -- bytes of the files on disk,
parameters, MACs, CPU latency at batch 1 and 256 (interleaved medians), clean accuracy on
``n_test`` test images and robust accuracy on the first ``n_robust`` (PGD for PyTorch models; an
int8 ONNX model is attacked itself with Square plus a transfer PGD from its float twin). Writes
``compress/compress.json`` and ``compress/pareto.png`` (size vs robust accuracy), logs the figures
in the run store (``bytes[original]``, ``bytes[compressed]``, ``size_ratio``, ``speedup_b256`` with
``speedup_b256_ci_low`` / ``_ci_high`` / ``_noisy`` / ``_rounds`` and ``speedup_b256_wall*``, ...)
and adds a report section.

Device (docs/devices.md): the steps and the accuracy measurements run on the run's device (``ctx.device``);
the int8 / ONNX export, the int8 model itself (ONNX Runtime) and the CPU latency timings work on CPU copies
fortify makes (:func:`fortify.compress.export.cpu_copy`), never on the run's model.

Recipe section ``compress`` (:class:`CompressConfig`)::

    compress:
      recipe: robust-int8-quick  # a name in fortify.compress.RECIPES
      steps: null                # or an explicit list of steps: [{transform: magnitude_prune, sparsity: 0.8}]
      args: {}                   # hyper-parameters set in every step that takes them, e.g. {sparsity: 0.8}
      threat: linf:0.3           # measured robustness and the steps' adversarial fine-tuning
      task: null                 # run: fine-tune with the run's training task (task.name/args) instead
      robust: pgd                # pgd | fast (attack cascade) | strong (fast + Square; int8: Square + transfer) | none
      n_robust: 200              # first N test images attacked (before and after)
      n_test: 1000               # test images for clean accuracy (null: the whole split)
      n_train: null              # training / calibration images (null: the whole split)
      latency: true              # time the models at batch 1 and 256
      repeats: 7                 # min. interleaved timing rounds (more until the 95% interval is narrow)
      threads: 2                 # CPU threads of the timings
      pgd_steps: 40
      square_queries: 1000
      seed: null                 # null: train.seed
      drift_methods: [saliency, occlusion]  # explanation drift: rank correlation of the maps, compressed vs original
                                 # (occlusion is forward-only: it explains an int8 ONNX model itself)
      n_drift: 64                # first N test images explained by both models ([]: no drift column)
"""
from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from fortify import progress
from fortify.config import threat_text
from fortify.errors import ConfigError, OutputError
from fortify.io import write_atomic
from fortify.models.state import eval_mode
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import CompressResult, ExportResult
from fortify.report.sections import Section, Table
from fortify.threat import ThreatModel

#: transforms whose result is an int8 ONNX model (nothing can follow them)
_QUANTIZERS = ("int8_dynamic", "int8_static", "qat_int8")
#: keys of a step holding an adversarial task's arguments (their ``threat`` follows ``compress.threat``)
_TASK_ARG_KEYS = ("finetune_args", "task_args")
#: arguments of the run's training task that are dropped for fine-tuning (see :func:`finetune_task_args`)
_TRAINING_ONLY_TASK_ARGS = ("schedule", "monitor")


def _positive_int(value: object, key: str, *, none_ok: bool = False) -> None:
    """ConfigError unless ``value`` is an int >= 1 (or None with ``none_ok``)."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"compress.{key} must be an integer >= 1{' or null' if none_ok else ''}, got {value!r}")


@dataclass
class CompressConfig:
    """``compress`` section: the recipe (or steps), hyper-parameter overrides and measurement options.

    ``args`` sets a hyper-parameter in every step whose transform accepts it (a key no step takes is
    an error). The ``threat`` inside a step's ``finetune_args`` / ``task_args`` is replaced by
    ``threat``, so the adversarial fine-tuning and the measurement use the same threat model.
    ``task: run`` replaces the fine-tuning task of every step that fine-tunes (``finetune_task`` or
    ``task`` set) by the run's training task and its arguments (``task.name``, ``task.args``), so a
    model is compressed with the objective it was trained with (standard or adversarial), minus the
    training-only ``schedule`` (eps/steps warm-up ramps) and ``monitor`` (:func:`finetune_task_args`);
    its ``threat`` then follows ``threat`` like any other step's. All
    steps are built (so their hyper-parameters validated) when the config is resolved, before any
    run folder exists.
    """

    recipe: str = "robust-int8-quick"
    steps: list[dict[str, Any]] | None = None
    args: dict[str, Any] = field(default_factory=dict)
    threat: ThreatModel = field(default_factory=lambda: ThreatModel("linf", 0.3))
    task: str | None = None
    robust: str = "pgd"
    n_robust: int = 200
    n_test: int | None = 1000
    n_train: int | None = None
    latency: bool = True
    repeats: int = 7
    threads: int = 2
    pgd_steps: int = 40
    square_queries: int = 1000
    seed: int | None = None
    drift_methods: list[str] = field(default_factory=lambda: ["saliency", "occlusion"])
    n_drift: int = 64

    def __post_init__(self) -> None:
        from fortify.compress.measure import ROBUST_MODES
        from fortify.pipeline.stages.explain import check_drift_config

        check_drift_config(self.drift_methods, self.n_drift, "compress")
        from fortify.pipeline.stages.robustness import parse_threats

        (self.threat,) = parse_threats([self.threat], "compress.threat")
        if self.robust not in ROBUST_MODES:
            raise ConfigError(f"compress.robust must be one of {', '.join(ROBUST_MODES)}; got {self.robust!r}")
        if self.task not in (None, "run"):
            raise ConfigError(f"compress.task must be null (the recipe's tasks) or run (the run's task), got "
                              f"{self.task!r}")
        if not isinstance(self.args, Mapping):
            raise ConfigError(f"compress.args must be a mapping of hyper-parameters, got {self.args!r}")
        for key in ("n_robust", "repeats", "threads", "pgd_steps", "square_queries"):
            _positive_int(getattr(self, key), key)
        _positive_int(self.n_test, "n_test", none_ok=True)
        _positive_int(self.n_train, "n_train", none_ok=True)
        self.build()  # unknown recipe / transform, bad hyper-parameters: ConfigError now

    def step_dicts(self, run_task: tuple[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The steps as dicts: ``steps`` or the recipe's, with ``args``, ``threat`` and (``task: run``)
        ``run_task = (name, args)`` applied."""
        from fortify.compress import RECIPES, TRANSFORMS

        raw = self.steps if self.steps is not None else RECIPES.get(self.recipe)
        if not isinstance(raw, list) or not raw:
            raise ConfigError("compress.steps must be a non-empty list of steps ({transform: NAME, ...})")
        steps: list[dict[str, Any]] = []
        for k, s in enumerate(raw):
            if not isinstance(s, Mapping) or not isinstance(s.get("transform"), str):
                raise ConfigError(f"compress.steps[{k}] must be a mapping with a 'transform' name, got {s!r}")
            steps.append(copy.deepcopy(dict(s)))
        used: set[str] = set()
        for s in steps:
            params = _params(TRANSFORMS.get(s["transform"]))  # UnknownNameError lists the transforms
            for key, value in self.args.items():
                if key in params:
                    s[key] = copy.deepcopy(value)
                    used.add(key)
            if self.task == "run" and run_task is not None:
                for task_key, args_key in (("finetune_task", "finetune_args"), ("task", "task_args")):
                    if task_key in params and s.get(task_key) is not None:
                        s[task_key], s[args_key] = run_task[0], finetune_task_args(run_task[1])
            for key in _TASK_ARG_KEYS:
                if isinstance(s.get(key), Mapping) and "threat" in s[key]:
                    s[key] = {**s[key], "threat": threat_text(self.threat)}
        unused = sorted(set(self.args) - used)
        if unused:
            raise ConfigError(f"compress.args: no step of {self.describe()} takes {', '.join(map(repr, unused))}")
        return steps

    def build(self, run_task: tuple[str, Mapping[str, Any]] | None = None) -> list[Any]:
        """The steps as :class:`fortify.compress.Transform` objects: each step's options checked against
        its transform's constructor (a ConfigError naming the step), then built (values validated)."""
        from fortify.compress import TRANSFORMS
        from fortify.compress.pipeline import resolve_steps

        steps = self.step_dicts(run_task)
        for k, s in enumerate(steps):
            if s["transform"] in _QUANTIZERS and k < len(steps) - 1:
                raise ConfigError(f"compress: step {k} ({s['transform']}) quantizes the model to int8 ONNX; "
                                  "quantization must be the last step")
            where = f"compress.steps[{k}]" if self.steps is not None else f"compress: {self.describe()} step {k}"
            try:
                TRANSFORMS.check_kwargs(s["transform"], {key: v for key, v in s.items() if key != "transform"})
            except ConfigError as e:
                raise type(e)(f"{where}: {e}") from None
        return resolve_steps(steps)

    def describe(self) -> str:
        """``recipe 'NAME'`` or ``the explicit steps``."""
        return "the explicit steps" if self.steps is not None else f"recipe {self.recipe!r}"


def finetune_task_args(run_args: Mapping[str, Any]) -> dict[str, Any]:
    """The run's training-task arguments as fine-tuning arguments: without ``schedule`` and ``monitor``.

    A training recipe's curriculum (``eps-ramp``, ``steps-ramp``) is a warm-up from a random
    initialisation; inside a 1-5 epoch fine-tuning of an already robust model it would restart the
    perturbation at eps 0 and spend most of the fine-tuning below the threat (measured on the main
    job: robust accuracy 79.5% -> 64.5% with the ramps, 68.5% without, both after 1 epoch). The
    per-epoch PGD monitor only costs time here. Every other argument (threat, steps, beta, ...)
    is kept, so a model is fine-tuned with the full threat it was trained for.
    """
    return {k: copy.deepcopy(v) for k, v in dict(run_args).items() if k not in _TRAINING_ONLY_TASK_ARGS}


def _params(factory: Any) -> set[str]:
    """Keyword parameters of a transform class's constructor."""
    try:
        return {n for n in inspect.signature(factory).parameters if n != "self"}
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return set()


def _fmt(v: Any, spec: str) -> Any:
    """``format(v, spec)``, ``"-"`` for None."""
    return "-" if v is None else format(v, spec)


def compress_findings(sec: CompressConfig, rows: list[Any], metrics: dict[str, Any]) -> list[Any]:
    """The report card's compression figures (:mod:`fortify.report.findings`): size ratio of the files,
    the batch-256 CPU speed-up (only when its interval excludes 1) and the robust accuracy kept."""
    from fortify.report.findings import accuracy_finding, ratio_finding, speedup_finding, threat_label

    a, b = rows
    out = [ratio_finding("compress.size_ratio", "Compressed size", metrics.get("size_ratio"), unit="x smaller",
                         detail=f"{a.bytes:,} -> {b.bytes:,} bytes on disk ({sec.describe()})")]
    if 256 in b.speedups:
        out.append(speedup_finding("compress.speedup_b256", "Speed-up, batch 256 (CPU time, 1 thread)", b.speedups[256]))
    if b.robust_acc is not None:
        kept = f"; {100 * b.robust_acc / a.robust_acc:.1f}% of the original's" if a.robust_acc else ""
        out.append(accuracy_finding("compress.robust_accuracy", f"Robust accuracy after compression, "
                                    f"{threat_label(sec.threat)}", b.robust_acc, metrics.get("n_robust"),
                                    detail=f"original {_fmt(a.robust_acc, '.2%')}{kept}; {b.robust_method or sec.robust}"))
    return out


@register_stage
class CompressStage:
    """Compress the run's model with a recipe, save the artefact, measure before/after, Pareto plot."""

    name: ClassVar[str] = "compress"
    config_class: ClassVar[type | None] = CompressConfig

    def run(self, ctx: RunContext) -> CompressResult:
        """Compress ``ctx.model`` (left unchanged), measure both, log metrics, artefacts and a section."""
        from fortify.compress import measure, plot_pareto
        from fortify.compress.pipeline import save_artefact
        from fortify.compress.quantize.runtime import OnnxModule

        sec: CompressConfig = ctx.config.section(self.name) or CompressConfig()
        xt, yt = ctx.test_inputs(sec.n_test)
        original = ctx.require_model()
        x, y = ctx.data("train")
        if sec.n_train is not None:
            x, y = x[: sec.n_train], y[: sec.n_train]
        out = ctx.out_dir("compress")
        seed = ctx.config.seed if sec.seed is None else sec.seed
        run_task = (ctx.config.task.name, dict(ctx.config.task.args))
        steps = sec.step_dicts(run_task)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        current: torch.nn.Module = original
        twin: torch.nn.Module | None = None
        reports: list[dict[str, Any]] = []
        encoding = "auto"
        example = x[:8]
        built = sec.build(run_task)
        with progress.task("compress", total=len(built), unit="steps") as bar:  # fine-tuning epochs nest in it
            for tr in built:
                if isinstance(current, OnnxModule):
                    raise ConfigError(f"compress: step {tr.name!r} comes after quantization; "
                                      "quantization must be last")
                ctx.print(f"compress: {tr.name} ...")
                bar.update(info=tr.name)
                r = tr(current, example, data=(x, y))
                bar.advance()
                reports.append(r.report)
                twin = r.extras.get("float_twin", twin)
                current = r.model
                encoding = "codebook" if tr.name == "deep_compression" else "auto"
        compress_seconds = time.perf_counter() - t0
        artefact = save_artefact(current, out, encoding=encoding)
        ctx.add_artefact("compressed_model", artefact, kind="model")

        t1 = time.perf_counter()
        # one line, no live display: a refresh thread would perturb the latency timings
        progress.echo("compress: measuring size, latency and accuracy of both models ...")
        rows = measure({"original": original, "compressed": current}, xt, yt, threat=sec.threat, robust=sec.robust,
                       n_robust=sec.n_robust, float_twins={"compressed": twin} if twin is not None else {},
                       artefacts={"compressed": artefact}, encodings={"original": "dense", "compressed": encoding},
                       latency=sec.latency, threads=sec.threads, repeats=sec.repeats, pgd_steps=sec.pgd_steps,
                       square_queries=sec.square_queries, seed=seed)
        measure_seconds = time.perf_counter() - t1
        from fortify.pipeline.stages.explain import compress_drift

        drift = compress_drift(original, current, twin, xt, sec.drift_methods, sec.n_drift)
        figure = None
        if sec.robust != "none":
            figure = plot_pareto(rows, out / "pareto.png",
                                 title=f"size vs robust accuracy ({sec.threat}, {min(sec.n_robust, len(yt))} images)")
            ctx.add_artefact("pareto", figure, kind="figure")
        metrics = {**self.metrics(rows, compress_seconds, measure_seconds), "n_test": int(xt.shape[0]),
                   "n_robust": min(sec.n_robust, int(xt.shape[0])), **drift}
        doc = {"recipe": sec.recipe if sec.steps is None else None, "steps": steps, "threat": sec.threat,
               "task": sec.task,
               "robust": sec.robust, "n_test": int(xt.shape[0]), "n_robust": min(sec.n_robust, int(xt.shape[0])),
               "n_train": int(x.shape[0]), "artefact": str(artefact), "reports": reports,
               "measurements": [m.to_dict() for m in rows], "metrics": metrics}
        ctx.add_artefact("compress_json", ctx.write_json(out / "compress.json", doc), kind="report")
        ctx.log_metrics(metrics)
        ctx.add_section(self.section(sec, rows, reports, metrics, artefact, figure, ctx.run_dir))
        a, b = rows
        ctx.print(f"compressed ({sec.describe()}): {a.bytes:,} -> {b.bytes:,} bytes ({metrics['size_ratio']:.1f}x "
                  f"smaller), clean {_fmt(a.clean_acc, '.2%')} -> {_fmt(b.clean_acc, '.2%')}, robust "
                  f"{_fmt(a.robust_acc, '.2%')} -> {_fmt(b.robust_acc, '.2%')}")
        return CompressResult(rows=rows, model=current, float_twin=twin, artefact=artefact, reports=reports,
                              config=sec, pareto=figure, n_test=int(xt.shape[0]))

    @staticmethod
    def metrics(rows: list[Any], compress_seconds: float, measure_seconds: float) -> dict[str, Any]:
        """Per-model figures as ``key[model]`` plus ratios (size, b256 speed-up) and accuracy drops."""
        out: dict[str, Any] = {}
        for r in rows:
            for key in ("bytes", "params_total", "params_nonzero", "macs", "macs_nonzero", "latency_b1_ms",
                        "latency_b256_ms", "latency_b1_cpu_ms", "latency_b256_cpu_ms", "clean_acc", "robust_acc"):
                v = getattr(r, key)
                if v is not None:
                    out[f"{key}[{r.name}]"] = v
        a, b = rows
        out["size_ratio"] = a.bytes / b.bytes if b.bytes else math.nan
        for batch, speedup in sorted(b.speedups.items()):  # ratio + 95% CI + rounds + noisy, CPU and wall
            out.update(speedup.to_metrics(f"speedup_b{batch}"))
        if a.clean_acc is not None and b.clean_acc is not None:
            out["clean_acc_drop"] = a.clean_acc - b.clean_acc
        if a.robust_acc is not None and b.robust_acc is not None:
            out["robust_acc_drop"] = a.robust_acc - b.robust_acc
        out["compress_seconds"] = compress_seconds
        out["measure_seconds"] = measure_seconds
        return out

    @staticmethod
    def section(sec: CompressConfig, rows: list[Any], reports: list[dict[str, Any]], metrics: dict[str, Any],
                artefact: Path, figure: Path | None, run_dir: Path) -> Section:
        """The report section: measurement table, steps table, Pareto figure."""
        base = rows[0]
        lat = f"ms (wall {sec.threads} threads / CPU 1 thread)"
        head = ["model", "bytes", "x smaller", "params (nonzero/total)", "MACs", f"latency b1 {lat}",
                f"latency b256 {lat}", "speed-up b256 (CPU time, 1 thread)", "clean accuracy", "robust accuracy"]
        body = [[r.name, r.bytes, round(base.bytes / r.bytes, 2) if r.bytes else None,
                 f"{_fmt(r.params_nonzero, ',')}/{_fmt(r.params_total, ',')}", r.macs,
                 f"{_fmt(r.latency_b1_ms, '.3f')}/{_fmt(r.latency_b1_cpu_ms, '.3f')}",
                 f"{_fmt(r.latency_b256_ms, '.2f')}/{_fmt(r.latency_b256_cpu_ms, '.2f')}",
                 r.speedups[256].short() if 256 in r.speedups else "-", r.clean_acc, r.robust_acc]
                for r in rows]
        from fortify.pipeline.stages.explain import drift_columns

        drift_head, drift_cells = drift_columns(metrics, sec.drift_methods)
        head, body = head + drift_head, [row + cells for row, cells in zip(body, drift_cells)]
        tables = [Table(head, body, "measured before and after compression")]
        step_rows = [[i, rep.get("transform", ""), ", ".join(f"{k}={v}" for k, v in rep.items()
                                                                if k != "transform" and isinstance(v, (int, float, str)))]
                     for i, rep in enumerate(reports)]
        tables.append(Table(["step", "transform", "report"], step_rows, "compression steps"))
        b = rows[1]
        robust = (f" (method: {b.robust_method})" if b.robust_method else "")
        text = (f"Compression with {sec.describe()}: the artefact {artefact.name} has {b.bytes:,} bytes on disk, "
                f"{metrics['size_ratio']:.1f}x smaller than the dense float model"
                + (f"; batch 256: {b.speedups[256].text()}" if 256 in b.speedups else "")
                + (f"; batch 1: {b.speedups[1].text()}" if 1 in b.speedups else "")
                + (f"; clean accuracy {_fmt(base.clean_acc, '.2%')} -> {_fmt(b.clean_acc, '.2%')}"
                   if b.clean_acc is not None else "")
                + (f", robust accuracy under {sec.threat} {_fmt(base.robust_acc, '.2%')} -> "
                   f"{_fmt(b.robust_acc, '.2%')}{robust}" if b.robust_acc is not None else "")
                + ". Sizes are those of the files written; latencies are medians of interleaved runs, speed-ups "
                  "ratios of one-thread CPU-time medians with a paired bootstrap 95% interval (claimed only when "
                  "the interval excludes 1), the wall-clock ratio beside them.")
        figs = [str(figure.relative_to(run_dir))] if figure is not None and figure.is_relative_to(run_dir) else []
        return Section("Compression", text=text, tables=tables, figures=figs,
                       findings=compress_findings(sec, rows, metrics))


INT8_MODES = ("dynamic", "static")


@dataclass
class ExportConfig:
    """``export`` section: ONNX export of the run's model, checked with ONNX Runtime.

    ``path``: the ``.onnx`` file (null: ``<run folder>/model.onnx``, or ``model.int8.onnx``); its
    folder must exist and be writable (checked before the run starts). ``int8``: null (float
    export), ``dynamic`` or ``static`` (ONNX Runtime quantization, static calibrated on
    ``calibration`` training images). ``n_check``: test images on which ONNX Runtime and PyTorch
    are compared; a float export must agree within ``atol`` on every logit, an int8 one must
    predict the same class on at least ``min_agreement`` of them.
    """

    path: str | None = None
    int8: str | None = None
    n_check: int = 256
    calibration: int = 256
    atol: float = 1e-4
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        import os

        if self.int8 is not None and self.int8 not in INT8_MODES:
            raise ConfigError(f"export.int8 must be null, dynamic or static; got {self.int8!r}")
        _positive_int(self.n_check, "n_check")
        _positive_int(self.calibration, "calibration")
        if not (isinstance(self.atol, (int, float)) and math.isfinite(self.atol) and self.atol > 0):
            raise ConfigError(f"export.atol must be a number > 0, got {self.atol!r}")
        if not (isinstance(self.min_agreement, (int, float)) and 0 <= self.min_agreement <= 1):
            raise ConfigError(f"export.min_agreement must be in [0, 1], got {self.min_agreement!r}")
        if self.path is not None:
            p = Path(self.path)
            if p.is_dir():
                raise OutputError(f"export path {self.path!r} is a folder; give a file name such as model.onnx")
            parent = p.parent if str(p.parent) else Path(".")
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise OutputError(f"cannot write {self.path!r}: folder {str(parent)!r} does not exist or is not "
                                  "writable")
            if p.exists() and not os.access(p, os.W_OK):
                raise OutputError(f"cannot write {self.path!r}: the file is not writable")


@register_stage
class ExportStage:
    """Export the run's model to ONNX (float or int8), verify it with ONNX Runtime, record its size."""

    name: ClassVar[str] = "export"
    config_class: ClassVar[type | None] = ExportConfig

    def run(self, ctx: RunContext) -> ExportResult:
        """Export, compare ONNX Runtime with PyTorch on ``n_check`` test images, write the file atomically."""
        sec: ExportConfig = ctx.config.section(self.name) or ExportConfig()
        x, _ = ctx.test_inputs(sec.n_check)
        model = ctx.require_model()
        t0 = time.perf_counter()
        with eval_mode(model):  # the run's model may be the caller's: its flags are restored
            onnx = self._export(ctx, model, x, sec)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                ref = model(x)
            got = onnx(x)
            diff = float((ref - got).abs().max())
            agree = self._agreement(model, onnx, x)
        if sec.int8 is None and not torch.allclose(ref, got, atol=sec.atol, rtol=1e-3):
            raise ConfigError(f"ONNX Runtime disagrees with PyTorch on the exported model (max logit difference "
                              f"{diff:.3g} > atol {sec.atol:g})")
        if agree < sec.min_agreement:
            raise ConfigError(f"the int8 ONNX model predicts the PyTorch model's class on only {agree:.2%} of "
                              f"{x.shape[0]} test images (< {sec.min_agreement:.0%})")
        path = Path(sec.path) if sec.path else ctx.path("model.int8.onnx" if sec.int8 else "model.onnx")
        write_atomic(path, onnx.blob, what="ONNX model")
        size = path.stat().st_size
        ctx.add_artefact("onnx_model", path, kind="model")
        metrics = {"onnx_bytes": size, "max_abs_diff": diff, "agreement": agree, "n_check": int(x.shape[0]),
                   "export_seconds": seconds}
        ctx.log_metrics(metrics)
        kind = f"int8 ({sec.int8}, {onnx.int8_scheme})" if sec.int8 else "float"
        ctx.add_section(Section("ONNX export", text=(
            f"The model was exported to ONNX ({kind}) as {path.name}, {size:,} bytes. ONNX Runtime and PyTorch "
            f"agree on {agree:.2%} of the predicted classes of {x.shape[0]} test images; largest logit "
            f"difference {diff:.3g}."), tables=[Table(["file", "kind", "bytes", "agreement", "max logit diff"],
                                                      [[str(path), kind, size, agree, diff]], "ONNX export")]))
        ctx.print(f"exported {kind} ONNX: {path} ({size:,} bytes; agreement {agree:.2%}, max diff {diff:.3g})")
        return ExportResult(path=path, onnx_bytes=size, max_abs_diff=diff, agreement=agree, n_check=int(x.shape[0]),
                            export_seconds=seconds, int8=sec.int8, int8_scheme=onnx.int8_scheme)

    @staticmethod
    def _export(ctx: RunContext, model: torch.nn.Module, x: torch.Tensor, sec: ExportConfig) -> Any:
        """The model as an :class:`~fortify.compress.quantize.runtime.OnnxModule` (float, or int8 by ONNX Runtime)."""
        from fortify.compress import TRANSFORMS
        from fortify.compress.export import onnx_bytes
        from fortify.compress.quantize.runtime import OnnxModule

        if sec.int8 is None:
            return OnnxModule(onnx_bytes(model, x))
        xc, yc = ctx.data("train")
        options = {"calibration_size": sec.calibration} if sec.int8 == "static" else {}
        onnx = TRANSFORMS.get(f"int8_{sec.int8}")(**options)(model, x[:8], data=(xc, yc)).model
        if not isinstance(onnx, OnnxModule):  # pragma: no cover - the int8 transforms return ONNX models
            raise ConfigError(f"int8_{sec.int8} did not produce an ONNX model")
        return onnx

    @staticmethod
    def _agreement(model: torch.nn.Module, onnx: Any, x: torch.Tensor) -> float:
        """Fraction of ``x`` on which the two models predict the same class."""
        from fortify.compress.quantize.ptq import agreement

        return agreement(model, onnx, x)
