"""``explain`` pipeline stage: attribution maps and how faithful they are.

On the first ``n`` test images (model in eval mode through the library, never mutated) every method
of :data:`fortify.explain.ATTRIBUTIONS` named in ``methods`` (saliency: Simonyan et al. 2014;
gradient x input: Shrikumar et al. 2016; integrated gradients: Sundararajan et al. 2017; Grad-CAM:
Selvaraju et al. 2017; ...) explains the chosen class, and every metric of
:data:`fortify.explain.ATTRIBUTION_METRICS` named in ``metrics`` scores it (deletion / insertion:
Samek et al. 2017, Petsiuk et al. 2018; randomisation: Adebayo et al. 2018; ...). Each cell of the
metric x method table is the mean over the ``n`` images with a 95% Student-t interval. The same
metrics score a uniform random attribution of the same shape (drawn from a ``torch.Generator``
seeded with the stage's seed, never the global RNG) as the baseline a method must beat; the one-line
verdict per method compares them image by image (paired t interval of the difference): "faithful"
when the method beats the random attribution on every faithfulness metric computed (deletion,
insertion, ROAD MoRF / LeRF, infidelity), "no better than a random attribution" when it does not,
"fails the randomisation check" when its map barely changes as the model's weights are destroyed and
"fails the random-logit check" when the map of another class is nearly the same. Those are findings
about the model and method, not errors.

Writes ``explain/explain.json`` and ``explain/attributions.png`` (rows: up to 6 images; columns:
the input and each method's ``|attribution|`` summed over channels), logs ``explain/<method>/<metric>``
(and ``explain/random/<metric>``) in the run store and adds a report section.

Recipe section ``explain`` (:class:`ExplainConfig`)::

    explain:
      methods: [saliency, gradient-x-input, integrated-gradients]
      metrics: [deletion, insertion]
      n: 16
      target: predicted         # predicted | label | a class index
      target_layer: null        # Grad-CAM's layer (null: the last convolution)
      options: {integrated-gradients: {steps: 16}}   # constructor options per method / metric
      compare: null             # a second model file (e.g. the standard twin of a robust model): side by side
      compare_label: compare    # its name in the figure and tables

With ``compare`` (a fortify model file of the same input shape, e.g. a standard model next to this
run's adversarially trained one), the same methods and metrics run on it: the grid shows both models'
maps side by side (``<method> (run)``, ``<method> (<label>)``), the section adds its table and
verdicts and the gap (run minus compare per image, paired 95% t interval; Etmann et al. 2019 and
Ilyas et al. 2019 report more interpretable gradients for robust models: here it is measured). The
report card gets ``explain.faithful`` (methods beating the random map), ``explain.sanity`` (methods
passing the randomisation check, when it ran) and, with ``compare``, ``explain.gap.<metric>``.
Metric ``roar`` is given the run's training split unless ``options.roar.train`` is set.
"""
from __future__ import annotations

import inspect
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fortify import progress
from fortify.errors import ConfigError
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import ExplainResult, MetricSummary
from fortify.pipeline.stages._explain_parts import (ExplainStageResult, Scored, check_compare, compare_models,
                                                    comparison_doc, comparison_tables, findings, load_compare, score)
from fortify.report.sections import Section, Table

#: the metrics a verdict compares with the random attribution (faithfulness to the model's output)
FAITHFULNESS = ("deletion", "insertion", "road-morf", "road-lerf", "infidelity")
#: mean rank correlation with the randomised models at or above which a method fails Adebayo's check
RANDOMISATION_THRESHOLD = 0.5
#: images drawn in the figure
FIGURE_ROWS = 6
TARGETS = ("predicted", "label")


def _registries() -> tuple[Any, Any]:
    from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS

    return ATTRIBUTIONS, ATTRIBUTION_METRICS


def _accepts(cls: Any, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class ExplainConfig:
    """``explain`` section: method and metric names (registry names), images, target, Grad-CAM layer,
    batch size (rows per forward pass), seed (null: ``train.seed``) and ``options``: constructor
    keyword arguments per method or metric name, checked against the constructor here."""

    methods: list[str] = field(default_factory=lambda: ["saliency", "gradient-x-input", "integrated-gradients"])
    metrics: list[str] = field(default_factory=lambda: ["deletion", "insertion"])
    n: int = 16
    target: str | int = "predicted"
    target_layer: str | None = None
    batch_size: int = 256
    seed: int | None = None
    options: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"integrated-gradients": {"steps": 16}})
    compare: str | None = None
    compare_label: str = "compare"

    def __post_init__(self) -> None:
        methods_reg, metrics_reg = _registries()
        check_compare(self.compare)
        if not isinstance(self.compare_label, str) or self.compare_label in ("", "run"):
            raise ConfigError(f"explain.compare_label must be a non-empty name other than 'run', got "
                              f"{self.compare_label!r}")
        if not self.methods:
            raise ConfigError("explain.methods must name at least one attribution method; allowed: "
                              + ", ".join(methods_reg.names()))
        for m in self.methods:
            methods_reg.get(m)  # UnknownNameError listing the allowed methods
        for m in self.metrics:
            metrics_reg.get(m)
        if len(set(self.methods)) != len(self.methods) or len(set(self.metrics)) != len(self.metrics):
            raise ConfigError("explain.methods and explain.metrics must not repeat a name")
        if self.n < 1:
            raise ConfigError(f"explain.n must be an integer >= 1, got {self.n!r}")
        if self.batch_size < 1:
            raise ConfigError(f"explain.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if isinstance(self.target, str) and self.target not in TARGETS:
            raise ConfigError(f"explain.target must be predicted, label or a class index, got {self.target!r}")
        if isinstance(self.target, int) and self.target < 0:
            raise ConfigError(f"explain.target must be a class index >= 0, got {self.target!r}")
        if self.target_layer is not None and "gradcam" not in self.methods:
            raise ConfigError(f"explain.target_layer={self.target_layer!r} is Grad-CAM's layer; add gradcam to "
                              "explain.methods")
        for key, opts in self.options.items():  # options of a method not run now are checked, not used
            if key not in methods_reg and key not in metrics_reg:
                raise ConfigError(f"explain.options.{key}: {key!r} is no attribution method or metric; allowed: "
                                  f"{', '.join([*methods_reg.names(), *metrics_reg.names()])}")
            if not isinstance(opts, dict):
                raise ConfigError(f"explain.options.{key} must be a mapping of constructor options, got {opts!r}")
            if key not in self.methods and key not in self.metrics:
                try:
                    (methods_reg if key in methods_reg else metrics_reg).check_kwargs(key, opts)
                except ConfigError as e:
                    raise type(e)(f"explain.options.{key}: {e}") from None
        for m in self.methods:  # build each once: unknown keys and bad values fail before the run
            self._build(methods_reg, m, self.method_options(m))
        for m in self.metrics:
            self._build(metrics_reg, m, self.metric_options(m, self.methods[0]))

    @staticmethod
    def _build(reg: Any, name: str, kwargs: dict[str, Any]) -> Any:
        try:
            return reg.create(name, **kwargs)
        except ConfigError as e:
            raise type(e)(f"explain.options.{name}: {e}") from None

    def method_options(self, method: str, seed: int = 0) -> dict[str, Any]:
        """Constructor options of attribution ``method``: batch size, seed (stochastic methods), Grad-CAM's
        layer, then the user's ``options[method]``."""
        cls = _registries()[0].get(method)
        out: dict[str, Any] = {k: v for k, v in (("batch_size", self.batch_size), ("seed", seed)) if _accepts(cls, k)}
        if method == "gradcam" and self.target_layer is not None:
            out["layer"] = self.target_layer
        return {**out, **self.options.get(method, {})}

    def metric_options(self, metric: str, method: str, seed: int = 0) -> dict[str, Any]:
        """Constructor options of ``metric`` scoring ``method``: batch size, seed, and for the metrics that
        re-run the method (randomisation, max-sensitivity) the method with its options."""
        cls = _registries()[1].get(metric)
        out: dict[str, Any] = {k: v for k, v in (("batch_size", self.batch_size), ("seed", seed)) if _accepts(cls, k)}
        if _accepts(cls, "attribution"):
            out["attribution"], out["attribution_args"] = method, self.method_options(method, seed)
        return {**out, **self.options.get(metric, {})}


def summarize(values: torch.Tensor, higher_is_better: bool) -> MetricSummary:
    """Mean of the finite ``values (N,)`` and its 95% Student-t interval (None below two values)."""
    from scipy.stats import t as student_t

    v = values.detach().double().cpu().flatten()
    v = v[torch.isfinite(v)]
    k = int(v.numel())
    mean = float(v.mean()) if k else math.nan
    low = high = None
    if k >= 2:
        half = float(student_t.ppf(0.975, k - 1)) * float(v.std(unbiased=True)) / math.sqrt(k)
        low, high = mean - half, mean + half
    return MetricSummary(mean, low, high, higher_is_better, [float(a) for a in values.detach().double().cpu()])


def compare(method: MetricSummary, random: MetricSummary) -> str:
    """``better`` / ``worse`` / ``same``: the paired 95% t interval of ``method - random`` per image
    (in the metric's direction) excludes 0 on the good side / on the bad side / neither."""
    diff = torch.tensor(method.values, dtype=torch.float64) - torch.tensor(random.values, dtype=torch.float64)
    s = summarize(diff, method.higher_is_better)
    if s.low is None or s.high is None:
        return "same"
    good_low, good_high = (s.low, s.high) if method.higher_is_better else (-s.high, -s.low)
    return "better" if good_low > 0 else "worse" if good_high < 0 else "same"


def verdict(row: dict[str, MetricSummary], baseline: dict[str, MetricSummary]) -> str:
    """One line for a method from its metrics (see the module docstring)."""
    groups: dict[str, list[str]] = {"better": [], "worse": [], "same": []}
    for m in FAITHFULNESS:
        if m in row and m in baseline:
            groups[compare(row[m], baseline[m])].append(f"{m} {row[m].mean:.3g} vs {baseline[m].mean:.3g}")
    better, worse, same = groups["better"], groups["worse"], groups["same"]
    parts = []
    if worse:
        parts.append("worse than a random attribution on " + ", ".join(worse))
    elif better and not same:
        parts.append("faithful: better than a random attribution on " + ", ".join(better))
    elif better:
        parts.append(f"partly faithful: better than a random attribution on {', '.join(better)}; no better on "
                     + ", ".join(same))
    elif same:
        parts.append("no better than a random attribution (" + ", ".join(same) + ")")
    if "randomisation" in row:
        rho = row["randomisation"].mean
        word = "fails" if rho >= RANDOMISATION_THRESHOLD else "passes"
        parts.append(f"{word} the randomisation check (mean rank correlation {rho:.2f} with the randomised models)")
    if "random-logit" in row:
        rho = row["random-logit"].mean
        word = "fails" if rho >= RANDOMISATION_THRESHOLD else "passes"
        parts.append(f"{word} the random-logit check (mean similarity {rho:.2f} with the map of a random other class)")
    return "; ".join(parts) or ("no verdict: none of " + ", ".join([*FAITHFULNESS, "randomisation", "random-logit"])
                                + " was computed")


def attribution_grid(x: torch.Tensor, attributions: dict[str, torch.Tensor], path: Path, title: str) -> Path | None:
    """PNG grid: rows = the first (<= 6) images, columns = input + ``|attribution|`` summed over channels
    (each map scaled to [0, 1]). Images ``(N, C, H, W)`` with 1 or 3 channels only (None otherwise).
    Drawn on a bare :class:`matplotlib.figure.Figure` (Agg), written atomically, no timestamp."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return None
    from matplotlib.figure import Figure

    from fortify.io import write_atomic

    rows, cols = min(FIGURE_ROWS, x.shape[0]), 1 + len(attributions)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        img = x[i].detach().cpu().float()
        axes[i][0].imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0).clamp(0, 1)).numpy(),
                          cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        for j, (name, a) in enumerate(attributions.items(), start=1):
            m = a[i].detach().cpu().float().abs().sum(dim=0)
            top = float(m.max())
            axes[i][j].imshow((m / top if top > 0 else m).numpy(), cmap="inferno", vmin=0, vmax=1)
            if i == 0:
                axes[i][j].set_title(name, fontsize=8)
        if i == 0:
            axes[i][0].set_title("input", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return write_atomic(path, buf.getvalue(), what="figure")


def check_drift_config(methods: object, n: object, where: str) -> None:
    """``<where>.drift_methods``: a list of attribution names (UnknownNameError listing them);
    ``<where>.n_drift``: a positive int (ConfigError)."""
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise ConfigError(f"{where}.drift_methods must be a list of attribution method names, got {methods!r}")
    for m in methods:
        _registries()[0].get(m)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{where}.n_drift must be an integer >= 1, got {n!r}")


def compress_drift(original: nn.Module, compressed: nn.Module, twin: nn.Module | None, x: torch.Tensor,
                   methods: list[str], n: int) -> dict[str, Any]:
    """Explanation drift of a compressed model (:func:`fortify.explain.drift.explanation_drift` on the
    first ``n`` images, the original's predicted class) as run-store metrics:
    ``explain_drift[<method>]`` (mean rank correlation) with ``_ci_low`` / ``_ci_high`` and ``n_drift``.
    A gradient method on a model without gradients (int8 ONNX Runtime) explains its float twin
    (``explain_drift[<method>]_float_twin`` = 1, "(float twin)" in the table: quantisation itself is
    not reflected; a forward-only method such as occlusion runs on the int8 model itself); a method
    that cannot explain the compressed model at all is left out with one printed line; nothing is
    computed for an empty ``methods``."""
    if not methods:
        return {}
    from fortify.errors import FortifyError
    from fortify.explain.drift import explanation_drift

    out: dict[str, Any] = {"n_drift": int(min(n, x.shape[0]))}
    for m in methods:
        try:
            res = explanation_drift(original, compressed, x[:n], methods=[m], float_twin=twin)[m]
        except (FortifyError, RuntimeError) as e:
            progress.echo(f"compress: no {m} explanation drift ({str(e).splitlines()[0]})")
            continue
        out[f"explain_drift[{m}]"] = res.mean
        if res.model == "float twin":  # no gradient through the int8 model: its float twin was explained
            out[f"explain_drift[{m}]_float_twin"] = 1
        if res.interval is not None:
            out[f"explain_drift[{m}]_ci_low"], out[f"explain_drift[{m}]_ci_high"] = res.interval
    return out


def drift_columns(metrics: dict[str, Any], methods: list[str]) -> tuple[list[str], list[list[str]]]:
    """Compress-table columns, one per drift method: header and the cells of the original (the
    reference, 1 by definition) and compressed rows (mean [95% t interval])."""
    n = metrics.get("n_drift")
    head = [f"{m} drift (rank corr. with the original, {n} images)" for m in methods]
    cells = []
    for m in methods:
        v = metrics.get(f"explain_drift[{m}]")
        lo, hi = metrics.get(f"explain_drift[{m}]_ci_low"), metrics.get(f"explain_drift[{m}]_ci_high")
        cells.append("-" if v is None else f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
                     + (" (float twin)" if metrics.get(f"explain_drift[{m}]_float_twin") else ""))
    return head, [["1 (reference)"] * len(methods), cells]


def _fmt(s: MetricSummary) -> str:
    if s.low is None or s.high is None:
        return f"{s.mean:.4g}"
    return f"{s.mean:.4g} [{s.low:.4g}, {s.high:.4g}]"


@register_stage
class ExplainStage:
    """Attribution maps of the first n test images, their faithfulness metrics vs a random attribution, verdicts."""

    name: ClassVar[str] = "explain"
    config_class: ClassVar[type | None] = ExplainConfig

    def run(self, ctx: RunContext) -> ExplainResult:
        """Explain, score, compare with the random baseline (and the ``compare`` model); log, write the
        JSON, figure, section and report-card findings."""
        sec: ExplainConfig = ctx.config.section(self.name) or ExplainConfig()
        seed = ctx.config.seed if sec.seed is None else sec.seed
        x, y = ctx.test_inputs(sec.n)
        model = ctx.require_model()
        other = load_compare(sec.compare, ctx.device) if sec.compare is not None else None
        out = ctx.out_dir("explain")
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        random = torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)
        extra = {"train": ctx.data("train")} if "roar" in sec.metrics and "train" not in sec.options.get("roar", {}) \
            else {}
        models = [("run", model)] + ([(sec.compare_label, other)] if other is not None else [])
        per = len(sec.methods) * (1 + len(sec.metrics)) + len(sec.metrics)
        scored: dict[str, Scored] = {}
        with progress.task("explain", total=per * len(models), unit="steps") as bar:
            for label, net in models:
                scored[label] = score(net, x, self._target(net, x, y, sec), sec, seed, random, bar, label, extra)
        seconds = time.perf_counter() - t0
        attrs, table, baseline = scored["run"]
        verdicts = {m: verdict(table[m], baseline) for m in sec.methods}
        target_name = str(sec.target)
        grid = ({f"{m} ({lab})": scored[lab][0][m] for m in sec.methods for lab in scored} if other is not None
                else attrs)
        figure = attribution_grid(x, grid, out / "attributions.png",
                                  f"attributions of the {target_name} class "
                                  f"(first {min(FIGURE_ROWS, x.shape[0])} of {x.shape[0]} test images)")
        if figure is not None:
            ctx.add_artefact("attributions", figure, kind="figure")
        metrics: dict[str, Any] = {f"{m}/{k}": s.mean for m, row in table.items() for k, s in row.items()}
        metrics.update({f"random/{k}": s.mean for k, s in baseline.items()})
        comparison = None
        if other is not None:
            comparison = compare_models(scored["run"], scored[sec.compare_label], sec)
            metrics.update({f"{sec.compare_label}/{m}/{k}": s.mean for m, row in comparison["table"].items()
                            for k, s in row.items()})
        metrics.update({"n": int(x.shape[0]), "explain_seconds": seconds})
        ctx.log_metrics(metrics)
        doc = {"methods": sec.methods, "metrics": sec.metrics, "n": int(x.shape[0]), "target": target_name,
               "seed": seed, "options": {m: sec.method_options(m, seed) for m in sec.methods},
               "table": {m: {k: vars(s) for k, s in row.items()} for m, row in table.items()},
               "random_baseline": {k: vars(s) for k, s in baseline.items()}, "verdicts": verdicts,
               "seconds": seconds}
        if comparison is not None:
            doc["compare"] = comparison_doc(comparison, sec)
        doc_path = ctx.add_artefact("explain_json", ctx.write_json(out / "explain.json", doc), kind="report")
        section = self.section(sec, int(x.shape[0]), target_name, table, baseline, verdicts, figure, ctx.run_dir)
        if comparison is not None:
            section.tables.extend(comparison_tables(comparison, sec, int(x.shape[0])))
        section.findings.extend(findings(table, verdicts, int(x.shape[0]), comparison, sec))
        ctx.add_section(section)
        for m, v in verdicts.items():
            ctx.print(f"{m}: {v}")
        return ExplainStageResult(methods=list(sec.methods), metrics=list(sec.metrics), n=int(x.shape[0]),
                                  table=table, baseline=baseline, verdicts=verdicts, attributions=attrs,
                                  target=target_name, seed=seed, figure=figure, explain_json=doc_path,
                                  compare=comparison)

    @staticmethod
    def _target(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sec: ExplainConfig) -> torch.Tensor | int | None:
        """The explained class: the labels, a fixed class (range checked by the library: InputError), or
        the prediction computed once (``None`` would recompute it per call; the same tensor keeps every
        method and metric on one target)."""
        if sec.target == "label":
            return y
        if isinstance(sec.target, int):
            return sec.target
        from fortify.explain.ops import predict_logits
        from fortify.models.state import eval_mode

        with torch.no_grad(), eval_mode(model):
            return predict_logits(model, x, sec.batch_size).argmax(dim=1)

    @staticmethod
    def section(sec: ExplainConfig, n: int, target: str, table: dict[str, dict[str, MetricSummary]],
                baseline: dict[str, MetricSummary], verdicts: dict[str, str], figure: Path | None,
                run_dir: Path) -> Section:
        """The report section: metric x method table (mean [95% t interval]), verdicts, the grid."""
        headers = ["metric", "direction", *sec.methods, "random"]
        rows = [[k, "higher is better" if next(iter(table.values()))[k].higher_is_better else "lower is better",
                 *(_fmt(table[m][k]) for m in sec.methods), _fmt(baseline[k]) if k in baseline else "-"]
                for k in sec.metrics]
        tables = [Table(headers, rows, f"attribution metrics, mean [95% t interval] over {n} images"),
                  Table(["method", "verdict"], [[m, v] for m, v in verdicts.items()], "verdicts")]
        text = (f"Attributions of the {target} class on the first {n} test images with {', '.join(sec.methods)}, "
                f"scored by {', '.join(sec.metrics) or 'no metric'}; each cell is the mean over the {n} images with "
                "its 95% Student-t interval, 'random' a uniform random attribution of the same shape (the baseline "
                "a method must beat, compared image by image). A method no better than random, or one that fails "
                "the randomisation check, is a finding about the explanation, not an error.")
        figs = [str(figure.relative_to(run_dir))] if figure is not None and figure.is_relative_to(run_dir) else []
        return Section("Explanations", text=text, tables=tables, figures=figs)
