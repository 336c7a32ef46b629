"""Distributed-training benchmark: PGD adversarial training with 1 process vs 2 (sync and async).

Run by hand (never part of the test suite)::

    .venv/bin/python benchmarks/distributed.py                       # defaults below
    .venv/bin/python benchmarks/distributed.py --train-limit 2000 --epochs 2 --rounds 3

Every configuration trains the same seeded small-cnn (inputs normalised inside the model) on the
first ``--train-limit`` mnist-5k training images with PGD-AT (Madry et al. 2018; ``--steps``-step
PGD at linf ``--eps`` with an eps ramp over the first 30% of training), Adam + one-cycle:

* ``1 proc``   - the ordinary in-process :class:`fortify.train.Trainer`;
* ``sync x2``  - :func:`fortify.train.distributed.fit` with 2 data-parallel workers (same global
  batch, gradients all-reduced: the same algorithm, half the PGD work per process);
* ``async x2`` - 2 gradient workers and a parameter server (Downpour SGD, ``--max-staleness``).

Throughput is training examples per second of wall time of the whole ``fit`` call (process start,
rendezvous and result transfer included; the forkserver is warmed once before timing). Runs are
interleaved (the order rotates every round) and the median over ``--rounds`` is reported with the
range, with the CPU seconds all its processes used (``time.process_time`` of the trainer process
or of every worker / server) per 1,000 training examples: unlike wall time this does not depend on
how busy the machine is, and ``1 / (CPU ratio)`` x ``processes`` bounds the speed-up on free cores.
After each run the final model is scored on the first ``--test-limit`` test images: clean
accuracy and PGD-10 robust accuracy (fortify's registered PGD attack, one seeded random start), so
a speed-up bought with a worse model is visible. The machine load (``os.getloadavg``) is printed
before and after: on a shared, loaded machine the 2-process speed-up is bounded by the free cores.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fortify import data as fdata  # noqa: E402
from fortify import models  # noqa: E402
from fortify.threat import ThreatModel  # noqa: E402
from fortify.train import Trainer, create_task  # noqa: E402
from fortify.train.adversarial.monitor import robust_accuracy  # noqa: E402
from fortify.train.distributed import fit  # noqa: E402

CONFIGS = ("1 proc", "sync x2", "async x2")


def build_model(seed: int) -> torch.nn.Module:
    """Seeded small-cnn wrapped in Normalized (mnist-5k statistics)."""
    spec = fdata.info("mnist-5k")
    torch.manual_seed(seed)
    net = models.create("small-cnn", in_shape=tuple(spec.input_shape), num_classes=spec.num_classes)
    return models.Normalized(net, spec.mean, spec.std)


def run_one(name: str, args: argparse.Namespace, train: Any) -> tuple[torch.nn.Module, float, float, dict[str, Any]]:
    """Train one configuration; return (model, wall seconds, CPU seconds of all its processes, stats)."""
    task = create_task("pgd_at", threat=f"linf:{args.eps}", steps=args.steps,
                       schedule=[{"name": "eps-ramp", "warmup": 0.3}], monitor=False)
    cfg = dict(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=2e-3, weight_decay=0.0,
               schedule="onecycle", seed=args.seed)
    net = build_model(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "1 proc":
        Trainer(net, task, cfg, progress=False).fit(train)
        stats: dict[str, Any] = {"cpu_s": [time.process_time() - c0]}
    else:
        mode = "sync" if name.startswith("sync") else "async"
        res = fit(net, train, task=task, world_size=2, mode=mode, max_staleness=args.max_staleness, **cfg)
        net, stats = res.model, res.stats
    return net, time.perf_counter() - t0, sum(stats["cpu_s"]), stats


def main() -> None:
    """Parse options, warm up, run the interleaved rounds and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=7, help="PGD steps of the training attack")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--max-staleness", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    train = fdata.load("mnist-5k", "train", limit=args.train_limit)
    xt, yt = fdata.load("mnist-5k", "test", limit=args.test_limit)
    threat = ThreatModel("linf", args.eps)
    load0 = os.getloadavg()
    print(f"# {platform.node()} {os.cpu_count()} cores, torch {torch.__version__}, 1 torch thread per process; "
          f"load before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    # warm the forkserver (imports torch once) so the first timed distributed run is not penalised
    fit(build_model(0), (train[0][:64], train[1][:64]), world_size=2, epochs=1, batch_size=64)
    walls: dict[str, list[float]] = {c: [] for c in CONFIGS}
    cpus: dict[str, list[float]] = {c: [] for c in CONFIGS}
    accs: dict[str, list[tuple[float, float]]] = {c: [] for c in CONFIGS}
    extra: dict[str, list[str]] = {c: [] for c in CONFIGS}
    n = args.train_limit * args.epochs
    for r in range(args.rounds):
        order = CONFIGS[r % 3:] + CONFIGS[:r % 3]
        for name in order:
            net, wall, cpu, stats = run_one(name, args, train)
            clean, robust = robust_accuracy(net.eval(), xt, yt, threat, steps=10, seed=0)
            walls[name].append(wall)
            cpus[name].append(cpu)
            accs[name].append((clean, robust))
            if stats.get("mode") == "async":
                extra[name].append(f"{stats['applied']}/{stats['dropped']} stal {stats['staleness']}")
            print(f"round {r + 1} {name:9s} {wall:7.1f} s {n / wall:7.1f} ex/s cpu {cpu:6.1f} s clean {clean:.3f} "
                  f"pgd10 {robust:.3f} {extra[name][-1] if extra[name] else ''}", flush=True)
    load1 = os.getloadavg()
    base = statistics.median(n / w for w in walls["1 proc"])
    print(f"\nPGD-{args.steps} AT, small-cnn, mnist-5k {args.train_limit} train x {args.epochs} epochs, batch "
          f"{args.batch_size}; {args.rounds} interleaved rounds; eval on {args.test_limit} test images")
    print("| config   | ex/s median (min-max) | vs 1 proc | CPU s / 1k ex | clean (min-max) | PGD-10 (min-max) |")
    print("|----------|-----------------------|-----------|---------------|-----------------|------------------|")
    for name in CONFIGS:
        rates = [n / w for w in walls[name]]
        med = statistics.median(rates)
        cl = [a[0] for a in accs[name]]
        ro = [a[1] for a in accs[name]]
        cpu_k = statistics.median(cpus[name]) * 1000 / n
        print(f"| {name:8s} | {med:6.1f} ({min(rates):.1f}-{max(rates):.1f}) | {med / base:8.2f}x | {cpu_k:13.2f} | "
              f"{statistics.median(cl):.3f} ({min(cl):.3f}-{max(cl):.3f}) | "
              f"{statistics.median(ro):.3f} ({min(ro):.3f}-{max(ro):.3f}) |")
    for name in CONFIGS:
        if extra[name]:
            print(f"{name}: applied/dropped and staleness histogram per round: {'; '.join(extra[name])}")
    print(f"load after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
