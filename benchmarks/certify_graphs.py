"""CROWN on a residual graph: fortify's DAG driver against auto_LiRPA (run by hand; never a test).

``resnet-mnist`` (pre-activation ResNet, random weights of seed 0, BatchNorm in eval mode) on the
first ``--n`` mnist-5k test images, linf ``--eps``: the lower bounds of ``z_y - z_j`` (every
``j != y``) of fortify's ``crown`` (CROWN-Ada intermediate and final bounds, ``alpha_steps=0``,
``intersect_ibp=False``: the plain CROWN bound) and of auto_LiRPA's ``compute_bounds(method="CROWN")``
with the same specification matrix. Each run is a fresh spawned child with one thread; its CPU
time (``time.process_time``) and peak RSS (``ru_maxrss``) are reported, runs interleaved per
repetition (the order alternates: odd repetitions run auto_LiRPA first), medians over repetitions,
the per-repetition ratios (min-max) and the 1-minute load average before and after each run.
Tightness: fortify's bound minus auto_LiRPA's per image (min over the margin rows), max / mean /
min. ``--out FILE``: the figures as JSON (e.g. benchmarks/results/certify_graphs.json).

auto_LiRPA is not a dependency of fortify: pass the folder holding its package with
``--lirpa-path`` (e.g. a checkout of github.com/Verified-Intelligence/auto_LiRPA, which imports on
torch 2.13 when stub ``appdirs`` / ``tqdm`` / ``graphviz`` modules sit next to it; the PyPI 0.3
release needs torch < 1.13).

    .venv/bin/python benchmarks/certify_graphs.py --n 4 --reps 1 --lirpa-path /tmp/alirpa/new
    nice -n 10 .venv/bin/python benchmarks/certify_graphs.py --n 8 --reps 3 --lirpa-path /tmp/alirpa/new \
        --out benchmarks/results/certify_graphs.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from typing import Any


def _setup(n: int) -> tuple[Any, Any, Any]:
    import torch

    from fortify import data, models

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = models.create("resnet-mnist").eval()
    x, y = data.load("mnist-5k", "test", limit=n)
    return model, x, y


def _fortify(n: int, eps: float, lirpa_path: str) -> dict[str, Any]:
    import torch

    from fortify.certify import margin_lower_bound
    from fortify.threat import ThreatModel

    model, x, y = _setup(n)
    t = time.process_time()
    with torch.no_grad():
        low = margin_lower_bound(model, x, y, ThreatModel("linf", eps), "crown", keep_true_row=False,
                                 intersect_ibp=False, alpha_steps=0)
    return {"cpu": time.process_time() - t, "low": low.amin(1).tolist()}


def _lirpa(n: int, eps: float, lirpa_path: str) -> dict[str, Any]:
    sys.path.insert(0, lirpa_path)
    warnings.filterwarnings("ignore")
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    from fortify.certify.bounds import margin_spec

    model, x, y = _setup(n)
    c = margin_spec(y, 10)
    t = time.process_time()
    bm = BoundedModule(model, torch.zeros(1, 1, 28, 28), device="cpu")
    ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    with torch.no_grad():
        low, _ = bm.compute_bounds(x=(BoundedTensor(x, ptb),), method="CROWN", C=c, bound_upper=False)
    return {"cpu": time.process_time() - t, "low": low.amin(1).tolist()}


def _child(fn: str, n: int, eps: float, lirpa_path: str, q: Any) -> None:
    out = {"fortify": _fortify, "lirpa": _lirpa}[fn](n, eps, lirpa_path)
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--lirpa-path", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict[str, Any]]] = {"fortify": [], "lirpa": []}
    methods = ["fortify"] + (["lirpa"] if args.lirpa_path else [])
    loads: list[float] = []
    for rep in range(args.reps):
        for m in (methods if rep % 2 == 0 else methods[::-1]):
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(m, args.n, args.eps, args.lirpa_path, q))
            loads.append(os.getloadavg()[0])
            p.start()
            runs[m].append(q.get())
            p.join()
            loads.append(os.getloadavg()[0])
            print(f"rep {rep} {m:8s} cpu {runs[m][-1]['cpu']:7.1f} s  peak RSS {runs[m][-1]['rss_mb']:6.0f} MiB  "
                  f"load {loads[-2]:.1f} -> {loads[-1]:.1f}", flush=True)
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, 1 thread, "
          f"resnet-mnist seed 0, {args.n} mnist-5k test images, linf {args.eps}, {args.reps} rep(s), "
          f"load {min(loads):.1f}-{max(loads):.1f}")
    summary: dict[str, Any] = {"n": args.n, "eps": args.eps, "reps": args.reps, "load": [min(loads), max(loads)],
                               "machine": platform.processor() or platform.machine()}
    for m in methods:
        cpu = statistics.median(r["cpu"] for r in runs[m])
        rss = statistics.median(r["rss_mb"] for r in runs[m])
        summary[m] = {"cpu_s": [r["cpu"] for r in runs[m]], "rss_mib": [r["rss_mb"] for r in runs[m]]}
        print(f"{m:8s} cpu {cpu:8.1f} s ({cpu / args.n:6.2f} s/image)  peak RSS {rss:7.0f} MiB")
    if args.lirpa_path:
        diff = [a - b for a, b in zip(runs["fortify"][0]["low"], runs["lirpa"][0]["low"])]
        ratio = statistics.median(r["cpu"] for r in runs["lirpa"]) / statistics.median(r["cpu"] for r in runs["fortify"])
        per_rep = [b["cpu"] / a["cpu"] for a, b in zip(runs["fortify"], runs["lirpa"])]
        summary.update(ratio=ratio, ratio_per_rep=per_rep, diff_max=max(diff), diff_min=min(diff))
        print(f"fortify - auto_LiRPA lower margin: max {max(diff):+.2e} mean {statistics.mean(diff):+.2e} "
              f"min {min(diff):+.2e}; speed ratio (auto_LiRPA cpu / fortify cpu) {ratio:.2f}x "
              f"(per repetition {min(per_rep):.2f}-{max(per_rep):.2f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
