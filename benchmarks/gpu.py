"""Throughput on one device: PGD-AT, CROWN certification and certified (CROWN-IBP) training (run by hand).

A short, prepared script for a lent GPU (``--device cuda``); it runs on ``--device cpu`` as well (small
``--n`` there) and exits 0 with a ``skip`` line when the requested device is absent. For each workload it
times ``--repeats`` runs after one warm-up (CUDA synchronised before reading the clock) and prints
examples per second (median, min-max) plus the device, torch version and peak GPU memory, as markdown
rows and one JSON line per workload (``--out``).

* ``pgd-at``: one epoch of PGD-10 adversarial training (linf 0.3) of small-cnn on ``--n`` MNIST-shaped
  inputs, batch ``--batch``, Adam; with ``--amp`` the training forward runs under bfloat16 autocast.
* ``crown``: CROWN lower margins (linf 0.1) for ``--n`` inputs of the same model, batch ``--batch``.
* ``crown-ibp-train``: one epoch of CROWN-IBP certified training (Zhang et al. 2020) at linf 0.1.

    .venv/bin/python benchmarks/gpu.py --device cuda --n 8192 --batch 256
    .venv/bin/python benchmarks/gpu.py --device cpu --n 256 --batch 64     # what runs anywhere
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

from fortify import models
from fortify.certify import CERTIFIERS
from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train import Trainer, tasks
from fortify.train import device as fdevice


def _sync(dev: torch.device) -> None:
    """Wait for queued kernels so the clock measures them."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], None], dev: torch.device, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t0)
    return out


def model_on(dev: torch.device) -> torch.nn.Module:
    """Seeded small-cnn for 1x28x28 inputs, 10 classes, built on ``dev``."""
    torch.manual_seed(0)
    return models.create("small-cnn", in_shape=(1, 28, 28), num_classes=10).to(dev)


def workloads(args: argparse.Namespace, dev: torch.device) -> dict[str, Callable[[], None]]:
    """The three timed workloads (closures over data already on ``dev``)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(0, 10, (args.n,), generator=g).to(dev)
    cfg = dict(epochs=1, batch_size=args.batch, optimizer="adam", lr=1e-3, schedule="constant",
               device=str(dev), amp=bool(args.amp))

    def pgd_at() -> None:
        task = tasks.create("pgd_at", threat="linf:0.3", steps=10, monitor=False)
        Trainer(model_on(dev), task, cfg, progress=False).fit((x, y))

    cert_model = model_on(dev)
    crown = CERTIFIERS.get("crown")()
    threat = ThreatModel.parse("linf:0.1")

    def certify() -> None:
        for i in range(0, args.n, args.batch):
            crown(cert_model, x[i:i + args.batch], y[i:i + args.batch], threat)

    def crown_ibp_train() -> None:
        task = tasks.create("crown_ibp", threat="linf:0.1")
        Trainer(model_on(dev), task, dict(cfg, amp=False), progress=False).fit((x, y))

    return {"pgd-at": pgd_at, "crown": certify, "crown-ibp-train": crown_ibp_train}


def main() -> int:
    """Parse flags, time the workloads, print rows; 0 (with a skip line) when the device is absent."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: cuda when available)")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast in PGD-AT training (CUDA only)")
    p.add_argument("--only", default="pgd-at,crown,crown-ibp-train")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append JSON lines here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        dev = fdevice.resolve(args.device)
    except ConfigError as e:
        print(f"skip: {e}")
        return 0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(f"# device {dev} ({name}), torch {torch.__version__}, python {sys.version.split()[0]}, n={args.n}, "
          f"batch={args.batch}, amp={args.amp}")
    print("| workload | examples/s (median) | min-max | peak GPU MiB |")
    print("|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    for wname, fn in workloads(args, dev).items():
        if wname not in args.only.split(","):
            continue
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        secs = timed(fn, dev, args.repeats)
        rates = [args.n / s for s in secs]
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else 0.0
        row = {"workload": wname, "device": str(dev), "device_name": name, "n": args.n, "batch": args.batch,
               "amp": bool(args.amp), "examples_per_s": statistics.median(rates), "min": min(rates),
               "max": max(rates), "peak_mib": peak, "torch": torch.__version__}
        rows.append(row)
        print(f"| {wname} | {row['examples_per_s']:.1f} | {row['min']:.1f}-{row['max']:.1f} | {peak:.0f} |", flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
