"""Measurement of compressed models: artefact bytes, parameters, MACs, CPU latency, accuracies.

Every figure comes from the real artefact and the real run:

* ``bytes`` -- size of the saved file: the ``.onnx`` bytes of an :class:`OnnxModule`, otherwise the
  file :func:`save_compressed` writes (``encoding="auto"``: sparse when smaller; ``"codebook"`` for
  weight-shared models), or the size of a file you pass in ``artefacts``.
* ``params_total`` / ``params_nonzero``; ``macs`` (multiply-accumulates of one input: Conv2d
  ``H_out W_out C_out C_in k_h k_w``, Linear ``I O``) and ``macs_nonzero`` (zero weights skipped).
* ``latency_b1_ms`` / ``latency_b256_ms``: wall-clock medians with ``threads`` intra-op threads (PyTorch
  and ONNX Runtime alike), the latency a caller waits; ``latency_b1_cpu_ms`` / ``latency_b256_cpu_ms``:
  CPU-time medians on **one** thread, the compute a forward pass costs. Both come from
  :func:`fortify.timing.interleave`: the models are timed *interleaved* (one sample each per round,
  the order rotated every round, so drift in machine load hits all of them alike), at least
  ``repeats`` rounds, more until every speed-up's interval is narrow or the time budget is spent.
  ``speedups[batch]`` of every model after the first is a :class:`fortify.timing.SpeedUp` against
  the first: headline CPU time on one thread (robust to other jobs on the machine) with its
  bootstrap 95% interval and noisy flag, and the wall-clock ratio with ``threads`` threads beside
  it, marked ``contention`` (no ratio printed) when that run was over 1.5x slower than one thread --
  on an oversubscribed CPU, PyTorch's OpenMP pool waits for its threads and spins meanwhile, which
  turned a 2x compression speed-up into "528x" (issue 11). Print with ``.text()``: a speed-up only
  when its interval excludes 1. ONNX Runtime sessions do not busy-wait; for clean multi-thread
  figures set ``OMP_WAIT_POLICY=PASSIVE`` before importing torch (``benchmarks/compress.py`` does).
* ``clean_acc`` and ``robust_acc``: for PyTorch models, PGD (``robust="pgd"``) or fortify's
  cascade (``robust="fast"``: :func:`fortify.evaluate.robust_accuracy` with the ``fast`` preset);
  for an ONNX model, the attack runs on the quantized model itself (black-box Square, score-based)
  and as a transfer attack (PGD on its float twin, evaluated on the int8 model); a point is robust
  only if it survives both. ``robust="strong"`` (:func:`robust_masks`) is the equal-footing
  comparison of a float model with its int8 export: a PyTorch model must survive the white-box
  ``fast`` cascade *and* the same Square attack the int8 model gets; an ONNX model must survive
  Square on itself, transfer PGD and transfer of the ``fast`` cascade's examples from its float twin.
"""
from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import count_params
from fortify.compress.quantize.runtime import OnnxModule
from fortify.errors import ConfigError
from fortify.metrics import clean_accuracy, correct_mask
from fortify.models.state import eval_mode
from fortify.threat import ThreatModel
from fortify.timing import CPU, WALL, Interleaved, SpeedUp, TimingPolicy, fixed_rounds, interleave

ROBUST_MODES = ("pgd", "fast", "strong", "none")


@dataclass
class Measurement:
    """One model's measured figures (``None`` where not measured)."""

    name: str
    bytes: int
    params_total: int | None = None
    params_nonzero: int | None = None
    macs: int | None = None
    macs_nonzero: int | None = None
    latency_b1_ms: float | None = None
    latency_b256_ms: float | None = None
    latency_b1_cpu_ms: float | None = None
    latency_b256_cpu_ms: float | None = None
    speedups: dict[int, SpeedUp] = field(default_factory=dict)
    clean_acc: float | None = None
    robust_acc: float | None = None
    robust_method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``dict`` of the fields."""
        return asdict(self)


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """``(macs, macs_nonzero)`` of one input ``example_inputs[:1]`` for every Conv1d/Conv2d/Linear of ``model``.

    One forward pass in eval mode (every module's flag restored afterwards).
    """
    totals = [0, 0]

    def hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        """Forward hook adding one layer's MACs."""
        weight = m.weight
        assert isinstance(weight, torch.Tensor)  # hooks are only on Conv1d / Conv2d / Linear
        positions = out[0].numel() // out.shape[1] if isinstance(m, (nn.Conv1d, nn.Conv2d)) else 1
        totals[0] += positions * out.shape[1] * weight[0].numel()
        totals[1] += positions * int((weight != 0).sum())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example_inputs[:1])
    finally:
        for h in handles:
            h.remove()
    return totals[0], totals[1]


def artefact_bytes(model: nn.Module, encoding: str = "auto") -> int:
    """Bytes of ``model``'s saved artefact (``.onnx`` for OnnxModule, :func:`save_compressed` for a
    Sequential stack, :func:`fortify.compress.prune.graph_io.save_graph_model` for a graph model)."""
    if isinstance(model, OnnxModule):
        return len(model.blob)
    from fortify.compress.base import sequential_of
    from fortify.compress.formats import save_compressed
    from fortify.errors import UnsupportedLayerError

    with tempfile.TemporaryDirectory(prefix="fortify-m-") as tmp:
        try:
            sequential_of(model)
        except UnsupportedLayerError as not_a_stack:  # a registry graph model: its own safetensors format
            from fortify.compress.prune.graph_io import save_graph_model

            try:
                return save_graph_model(model, Path(tmp, "m.safetensors")).stat().st_size
            except ConfigError:  # not built by models.create: the stack's own message says what is wrong
                raise not_a_stack from None
        return save_compressed(model, Path(tmp, "m.safetensors"), encoding=encoding).stat().st_size


CLOCKS = ("wall", "cpu")

#: the measurement's timing rules: >= ``repeats`` rounds, then until every interval is <= 10% wide
#: (relative) or 2 s per batch size and thread count have passed
LATENCY_POLICY = TimingPolicy(min_rounds=7, max_rounds=100, budget_s=2.0, warmup=3, min_sample_s=0.002)
#: a run with several threads this much slower (wall) than one thread is contended: its ratio is not shown
CONTENDED = 1.5


def _batches(example_inputs: torch.Tensor, batch_sizes: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """``example_inputs[:1]`` repeated to each batch size."""
    rest = [1] * (example_inputs.dim() - 1)
    return {b: example_inputs[:1].repeat(b, *rest).contiguous() for b in batch_sizes}


def latency_runs(models: Mapping[str, nn.Module], example_inputs: torch.Tensor, *,
                 batch_sizes: tuple[int, ...] = (1, 256), policy: TimingPolicy = LATENCY_POLICY,
                 threads: int = 2) -> dict[int, Interleaved]:
    """Interleaved forward-pass timings ``{batch: Interleaved}`` of ``models`` (see :mod:`fortify.timing`).

    Inputs are ``example_inputs[:1]`` repeated to each batch size; the first model is the baseline
    of the stopping rule. Timed on the CPU: a model on another device is timed as a CPU copy fortify makes
    (:func:`fortify.compress.export.cpu_copy`; the model itself is never moved). PyTorch uses ``threads`` intra-op threads during the timing (restored after).
    The models run in eval mode; every module's flag is restored afterwards.
    """
    if not models:
        raise ConfigError("latency: no models to time")
    from fortify.compress.export import cpu_copy

    models = {n: cpu_copy(m) for n, m in models.items()}  # CPU latency: CPU copies of models on another device
    example_inputs = example_inputs.cpu()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = _batches(example_inputs, batch_sizes)
        runs = {}
        with torch.no_grad(), ExitStack() as stack:
            for m in models.values():
                stack.enter_context(eval_mode(m))
            for b in batch_sizes:
                fns = {n: (lambda m=m, x=inputs[b]: m(x)) for n, m in models.items()}
                runs[b] = interleave(fns, policy)
    finally:
        torch.set_num_threads(old)
    return runs


def latencies(models: Mapping[str, nn.Module], example_inputs: torch.Tensor, *, batch_sizes: tuple[int, ...] = (1, 256),
              repeats: int = 15, warmup: int = 3, threads: int = 2, clock: str = "wall") -> dict[str, dict[int, float]]:
    """Median forward latency in ms ``{name: {batch: ms}}`` over exactly ``repeats`` interleaved rounds.

    ``clock="wall"``: elapsed time (``time.perf_counter``), the latency a caller sees. ``clock="cpu"``:
    CPU time of the whole process summed over its threads (``time.process_time``), i.e. the compute a
    forward pass costs; on a CPU shared with other jobs it does not count the time the threads wait to be
    scheduled, so its ratios are far more stable than wall-clock ratios. For ratios with intervals use
    :func:`latency_runs` (or :func:`measure`'s ``speedups``). ``repeats`` below 3 count as 3.
    """
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    policy = fixed_rounds(replace(LATENCY_POLICY, warmup=warmup), max(3, repeats))
    runs = latency_runs(models, example_inputs, batch_sizes=batch_sizes, policy=policy, threads=threads)
    key = WALL if clock == "wall" else CPU
    return {n: {b: run.median(n, key) * 1000.0 for b, run in runs.items()} for n in models}


def robust_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 float_twin: nn.Module | None = None, pgd_steps: int = 40, square_queries: int = 1000,
                 seed: int = 0, with_fast: bool = True) -> dict[str, torch.Tensor]:
    """Per-attack, per-sample robustness ``{attack: (N,) bool}`` plus ``"all"`` (robust to every one).

    PyTorch model (white-box): ``"fast"`` -- fortify's ``fast`` cascade (APGD-CE, APGD-T; Croce &
    Hein 2020) -- and ``"square"`` (Andriushchenko et al. 2020, score-based, ``square_queries``).
    :class:`OnnxModule` (not differentiable): ``"square"`` on the model itself and, with
    ``float_twin``, ``"transfer_pgd"`` (PGD-``pgd_steps`` on the twin) and ``"transfer_fast"`` (the
    ``fast`` cascade's adversarial examples on the twin), each scored on the ONNX model. A point that
    is misclassified clean is never robust. ``with_fast=False`` skips the ``fast`` cascade (white-box
    and transfer). ``x (N, C, H, W)`` in the threat's bounds, ``y (N,)``.
    """
    from fortify.attacks import create as create_attack
    from fortify.evaluate import robust_accuracy

    def square(m: nn.Module) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return ~create_attack("square", queries=square_queries)(m, x, y, threat, generator=gen).success

    clean = correct_mask(model, x, y, 512)
    masks: dict[str, torch.Tensor] = {}
    if isinstance(model, OnnxModule):
        masks["square"] = square(model)
        if float_twin is not None:
            gen = torch.Generator().manual_seed(seed)
            x_pgd = create_attack("pgd", steps=pgd_steps)(float_twin, x, y, threat, generator=gen).x_adv
            masks["transfer_pgd"] = correct_mask(model, x_pgd, y, 512)
            if with_fast:
                rep = robust_accuracy(float_twin, x, y, threat, preset="fast", seed=seed, sanity=False)
                masks["transfer_fast"] = correct_mask(model, rep.threats[0].x_adv, y, 512)
    else:
        if with_fast:
            rep = robust_accuracy(model, x, y, threat, preset="fast", seed=seed, sanity=False)
            masks["fast"] = rep.threats[0].robust.cpu()
        masks["square"] = square(model)
    masks = {k: v.cpu().bool() & clean.cpu() for k, v in masks.items()}
    every = clean.cpu().clone()
    for v in masks.values():
        every &= v
    masks["all"] = every
    return masks


def robust_accuracy_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                       mode: str = "pgd", float_twin: nn.Module | None = None, pgd_steps: int = 40,
                       square_queries: int = 1000, seed: int = 0) -> tuple[float, str, dict[str, float]]:
    """Robust accuracy, the method used and per-attack figures (see module doc)."""
    from fortify.attacks import create as create_attack

    if mode == "strong":
        masks = robust_masks(model, x, y, threat, float_twin=float_twin, pgd_steps=pgd_steps,
                             square_queries=square_queries, seed=seed)
        method = "+".join(k for k in masks if k != "all")
        return float(masks["all"].float().mean()), method, {f"robust_{k}": float(v.float().mean())
                                                           for k, v in masks.items() if k != "all"}
    if isinstance(model, OnnxModule):  # black-box Square on the int8 model + transfer PGD from its twin
        masks = robust_masks(model, x, y, threat, float_twin=float_twin, pgd_steps=pgd_steps,
                             square_queries=square_queries, seed=seed, with_fast=False)
        extra = {"robust_square": float(masks["square"].float().mean())}
        method = f"square({square_queries})"
        if "transfer_pgd" in masks:
            extra["robust_transfer"] = float(masks["transfer_pgd"].float().mean())
            method += f"+transfer-pgd({pgd_steps})"
        return float(masks["all"].float().mean()), method, extra
    if mode == "fast":
        from fortify.evaluate import robust_accuracy

        rep = robust_accuracy(model, x, y, threat, preset="fast", seed=seed, sanity=False)
        return rep.threats[0].robust_accuracy, "cascade-fast", {}
    res = create_attack("pgd", steps=pgd_steps)(model, x, y, threat, generator=torch.Generator().manual_seed(seed))
    return float((~res.success).float().mean()), f"pgd({pgd_steps})", {}


@dataclass(frozen=True)
class MeasureOptions:
    """What :func:`measure` measures and how (every field optional).

    Attributes:
        threat: the threat model (``None`` or ``robust="none"`` skips robustness).
        robust: one of :data:`ROBUST_MODES` (see the module doc).
        n_robust: robust accuracy on the first ``n_robust`` test points.
        float_twins: ``{name: float model}`` for ONNX models (transfer attack and MAC count).
        artefacts: ``{name: path}`` of files already written (their size is reported).
        encodings: ``{name: encoding}`` used when the artefact is written here (default ``auto``).
        latency, threads, repeats: time the models over at least ``repeats`` interleaved rounds, on
            one thread and on ``threads`` (:func:`latency_speedups`).
        pgd_steps, square_queries, seed: budgets and seed of the robustness attacks.
    """

    threat: ThreatModel | str | None = "linf:0.3"
    robust: str = "pgd"
    n_robust: int = 200
    float_twins: Mapping[str, nn.Module] | None = None
    artefacts: Mapping[str, str | Path] | None = None
    encodings: Mapping[str, str] | None = None
    latency: bool = True
    threads: int = 2
    repeats: int = 15
    pgd_steps: int = 40
    square_queries: int = 1000
    seed: int = 0

    @classmethod
    def build(cls, options: "MeasureOptions | None" = None, **changes: Any) -> "MeasureOptions":
        """``options`` (default: the defaults) with ``changes`` applied; ConfigError naming the allowed
        fields for an unknown one, or for a ``robust`` mode not in :data:`ROBUST_MODES`."""
        allowed = [f.name for f in fields(cls)]
        bad = sorted(set(changes) - set(allowed))
        if bad:
            raise ConfigError(f"measure: unknown option(s) {', '.join(map(repr, bad))}; allowed: {', '.join(allowed)}")
        opts = replace(options if options is not None else cls(), **changes)
        if opts.robust not in ROBUST_MODES:
            raise ConfigError(f"robust must be one of {', '.join(ROBUST_MODES)}; got {opts.robust!r}")
        return opts


def measure(models: Mapping[str, nn.Module] | nn.Module, x: torch.Tensor, y: torch.Tensor,
            options: MeasureOptions | None = None, **changes: Any) -> list[Measurement]:
    """Measure every model of ``models`` (``{name: module}``, or one module named ``"model"``).

    Args:
        x, y: test images ``(N, C, H, W)`` in [0, 1] and labels ``(N,)``; clean accuracy on all of them,
            robust accuracy on the first ``options.n_robust``.
        options: a :class:`MeasureOptions`; ``changes`` (its field names as keywords, e.g.
            ``robust="none", threads=1``) are applied on top of it.
    Returns: one :class:`Measurement` per model, in order. Every model is run in eval mode and left
    with the flags it had.
    """
    if isinstance(models, nn.Module):
        models = {"model": models}
    o = MeasureOptions.build(options, **changes)
    t = ThreatModel.parse(o.threat) if isinstance(o.threat, str) else o.threat
    twins, files, encs = dict(o.float_twins or {}), dict(o.artefacts or {}), dict(o.encodings or {})
    speed = latency_speedups(models, x, threads=o.threads, repeats=o.repeats) if o.latency else None
    rows = []
    for name, m in models.items():
        with eval_mode(m):
            size = Path(files[name]).stat().st_size if name in files else artefact_bytes(m, encs.get(name, "auto"))
            ref = twins.get(name) if isinstance(m, OnnxModule) else m
            row = Measurement(name=name, bytes=size)
            if ref is not None:
                row.params_nonzero, row.params_total = count_params(ref)
                row.macs, row.macs_nonzero = count_macs(ref, x)
            if speed is not None:
                speed.fill(row)
            row.clean_acc = clean_accuracy(m, x, y, 512)
            if t is not None and o.robust != "none":
                row.robust_acc, row.robust_method, row.extra = robust_accuracy_of(
                    m, x[:o.n_robust], y[:o.n_robust], t, mode=o.robust, float_twin=twins.get(name),
                    pgd_steps=o.pgd_steps, square_queries=o.square_queries, seed=o.seed)
        rows.append(row)
    return rows


@dataclass
class LatencyRuns:
    """The two interleaved timings of :func:`latency_speedups`: ``compute`` on one thread, ``user`` on ``threads``."""

    compute: dict[int, Interleaved]
    user: dict[int, Interleaved]
    threads: int
    baseline: str

    def contention(self, batch: int) -> float:
        """Largest ``threads``-thread / one-thread wall-median ratio over the models (0 below :data:`CONTENDED`)."""
        if self.threads == 1:
            return 0.0
        c, u = self.compute[batch], self.user[batch]
        worst = max(u.median(n, WALL) / c.median(n, WALL) for n in c.samples if c.median(n, WALL) > 0)
        return worst if worst > CONTENDED else 0.0

    def speedup(self, name: str, batch: int) -> SpeedUp:
        """``name`` against the baseline: CPU time on one thread, wall clock on ``threads`` beside it."""
        wall = replace(self.user[batch].speedup(self.baseline, name, WALL), threads=self.threads,
                       contention=self.contention(batch))
        return replace(self.compute[batch].speedup(self.baseline, name, CPU), threads=1, wall=wall)

    def fill(self, row: Measurement) -> None:
        """Set ``row``'s latency medians (ms) and, unless it is the baseline, its speed-ups."""
        for b in self.compute:
            if b in (1, 256):
                setattr(row, f"latency_b{b}_ms", self.user[b].median(row.name, WALL) * 1000.0)
                setattr(row, f"latency_b{b}_cpu_ms", self.compute[b].median(row.name, CPU) * 1000.0)
            if row.name != self.baseline:
                row.speedups[b] = self.speedup(row.name, b)


def latency_speedups(models: Mapping[str, nn.Module], example_inputs: torch.Tensor, *, threads: int = 2,
                     repeats: int = 7, batch_sizes: tuple[int, ...] = (1, 256),
                     policy: TimingPolicy = LATENCY_POLICY) -> LatencyRuns:
    """Time ``models`` on one thread (CPU time: the headline) and, if ``threads > 1``, on ``threads`` (wall).

    At least ``max(3, repeats)`` rounds each; the first model is the baseline. Cost: up to twice
    ``policy.budget_s`` per batch size, plus warm-ups.
    """
    policy = replace(policy, min_rounds=max(3, repeats), max_rounds=max(policy.max_rounds, repeats))
    compute = latency_runs(models, example_inputs, batch_sizes=batch_sizes, policy=policy, threads=1)
    user = compute if threads == 1 else latency_runs(models, example_inputs, batch_sizes=batch_sizes,
                                                     policy=policy, threads=threads)
    return LatencyRuns(compute, user, threads, next(iter(models)))


def format_table(rows: list[Measurement], baseline: str | None = None) -> str:
    """A Markdown table of ``rows``; size ratios relative to ``baseline`` (default: the first row).

    The speed-up column is each row's measured ``speedups[256]`` (against the first row measured, CPU
    time on one thread, 95% interval; "no measurable difference" when the interval contains 1).
    """
    base = next((r for r in rows if r.name == baseline), rows[0]) if rows else None
    head = ("| model | bytes | x smaller | params (nz/total) | MACs | lat b1 ms | lat b256 ms "
            "| speed-up b256 (CPU time, 1 thread) | clean | robust |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ratio = base.bytes / r.bytes if base else 1.0
        speed = r.speedups[256].short() if 256 in r.speedups else None
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {r.name} | {r.bytes:,} | {ratio:.1f} | {fmt(r.params_nonzero, ',')}/{fmt(r.params_total, ',')} | "
            f"{fmt(r.macs, ',')} | {fmt(r.latency_b1_ms, '.3f')} | {fmt(r.latency_b256_ms, '.2f')} | "
            f"{speed or '-'} | {fmt(r.clean_acc, '.4f')} | {fmt(r.robust_acc, '.4f')} |")
    return "\n".join(lines)


__all__ = ["CLOCKS", "CONTENDED", "LATENCY_POLICY", "LatencyRuns", "MeasureOptions", "Measurement", "ROBUST_MODES",
           "artefact_bytes", "count_macs", "format_table", "latencies", "latency_runs", "latency_speedups", "measure",
           "robust_accuracy_of", "robust_masks"]
