"""Corruption table and fooling rates for a standard and a robust small-cnn (issue 15 items 6 and 7; run by
hand, never in the test suite).

Models: fortify's own recipes and library -- ``standard-mnist-5k`` (SGD) and ``robust-mnist-5k``'s task
(PGD-AT, Madry et al. 2018, linf ``--eps`` with the eps ramp), small-cnn normalised inside the model, trained
by :class:`fortify.train.Trainer` for ``--epochs`` epochs (seed 0), cached under
``benchmarks/.cache/corruptions/`` (safetensors; reused when present, ``--retrain`` to redo).

Corruptions: the 15 MNIST-C corruptions (Mu & Gilmer 2019) at MNIST-C's fixed severities on the first
``--n`` mnist-5k test images (seed 0), accuracy per corruption with a Wilson 95% interval, the mean accuracy
and the mCE (mean error, and normalised by the standard model as baseline: Hendrycks & Dietterich 2019).
Fooling (Nguyen et al. 2015): ``--per-class`` images per class from uniform noise by gradient ascent and by
the evolution (direct and CPPN encodings), fooling rate per class at confidence ``--confidence``.

    nice -n 10 .venv/bin/python benchmarks/corruptions.py --n 1000 --epochs 4 --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from fortify import data as fdata
from fortify.audit.corruptions import CorruptionReport, corruption_table
from fortify.audit.fooling import FoolingOptions, fooling_images
from recipe_models import recipe_model  # benchmarks/recipe_models.py (scripts run with benchmarks/ on sys.path)

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "corruptions"


def train_model(kind: str, a: argparse.Namespace) -> torch.nn.Module:
    """small-cnn from fortify's recipe (standard-mnist-5k, or PGD-AT of robust-mnist-5k at ``--eps``); cached."""
    return recipe_model(kind, a.epochs, a.eps, CACHE, retrain=a.retrain)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion ``p`` measured on ``n`` trials."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def corruption_markdown(reports: dict[str, CorruptionReport], n: int) -> str:
    std, rob = reports["standard"], reports["robust"]

    def cell(acc: float) -> str:
        lo, hi = wilson(acc, n)
        return f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = ["| corruption (MNIST-C severity) | standard acc. | robust acc. |", "|---|---|---|",
             f"| clean | {cell(std.clean_accuracy)} | {cell(rob.clean_accuracy)} |"]
    for a, b in zip(std.rows, rob.rows):
        lines.append(f"| {a.corruption} ({a.severity}) | {cell(a.accuracy)} | {cell(b.accuracy)} |")
    lines.append(f"| **mean over {len(std.names)}** | {std.mean_accuracy:.3f} | {rob.mean_accuracy:.3f} |")
    lines.append(f"| mCE (mean error) | {std.mce:.3f} | {reports['robust_plain'].mce:.3f} |")
    lines.append(f"| mCE / relative mCE vs standard | 1.000 / 1.000 | {rob.mce:.3f} / {rob.relative_mce:.3f} |")
    return "\n".join(lines)


def fooling_markdown(results: dict[str, dict[str, object]]) -> str:
    lines = ["| model / method | rate | per class 0..9 | mean conf. | evaluations | time (s) |",
             "|---|---|---|---|---|---|"]
    for key, r in results.items():
        per = " ".join(f"{v:.2f}" for v in r["rate_per_class"])  # type: ignore[attr-defined]
        lines.append(f"| {key} | {r['rate']:.3f} | {per} | {r['mean_confidence']:.4f} | {r['evaluations']} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="test images for the corruption table")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--per-class", type=int, default=10, help="fooling images per class")
    p.add_argument("--confidence", type=float, default=0.99)
    p.add_argument("--grad-steps", type=int, default=100)
    p.add_argument("--evo-steps", type=int, default=200)
    p.add_argument("--methods", default="gradient,evolution,cppn",
                   help="fooling searches: gradient, evolution (direct encoding), cppn (evolution, CPPN encoding)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write the tables and figures as JSON here")
    a = p.parse_args()
    a.methods = {m.strip() for m in a.methods.split(",")}
    torch.set_num_threads(a.threads)
    models = {kind: train_model(kind, a) for kind in ("standard", "robust")}
    x, y = fdata.load("mnist-5k", "test", limit=a.n)
    t0 = time.perf_counter()
    reports: dict[str, CorruptionReport] = {
        "standard": corruption_table(models["standard"], x, y, seed=0),
        "robust": corruption_table(models["robust"], x, y, seed=0, baseline=models["standard"]),
        "robust_plain": corruption_table(models["robust"], x, y, seed=0),
    }
    print(f"corruption tables in {time.perf_counter() - t0:.0f} s (n={a.n})\n")
    print(corruption_markdown(reports, a.n) + "\n", flush=True)
    fooling: dict[str, dict[str, object]] = {}
    for kind, model in models.items():
        for key, label, method, encoding, steps in (
                ("gradient", "gradient", "gradient", "direct", a.grad_steps),
                ("evolution", "evolution (direct)", "evolution", "direct", a.evo_steps),
                ("cppn", "evolution (CPPN)", "evolution", "cppn", a.evo_steps)):
            if key not in a.methods:
                continue
            t1 = time.perf_counter()
            r = fooling_images(model, a.per_class, method=method, confidence=a.confidence, steps=steps, seed=0,
                               options=FoolingOptions(encoding=encoding))
            fooling[f"{kind} / {label}"] = {"rate": r.rate, "rate_per_class": r.rate_per_class.tolist(),
                                             "mean_confidence": float(r.confidences.mean()),
                                             "evaluations": r.evaluations, "seconds": time.perf_counter() - t1}
    print(f"fooling images ({a.per_class} per class, confidence >= {a.confidence}, gradient {a.grad_steps} steps, "
          f"evolution {a.evo_steps} generations x 16 children)\n")
    print(fooling_markdown(fooling))
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {a.threads}, epochs {a.epochs}, eps {a.eps}")
    if a.out is not None:
        payload = {"n": a.n, "epochs": a.epochs, "eps": a.eps,
                   "corruptions": {k: {"rows": v.to_rows(), "summary": v.summary()} for k, v in reports.items()},
                   "fooling": fooling}
        a.out.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
