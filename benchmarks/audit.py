"""Audit benchmark (run by hand; never part of the test suite): OOD and adversarial-input detection on MNIST.

1. **OOD**: every detector of ``fortify.audit.detect.DETECTORS`` fitted on ``--n-fit`` mnist-5k training images,
   in = the first ``--n-in`` mnist-5k test images, out = ``--n-out`` images of each OOD set (Fashion-MNIST, letters
   rendered from installed fonts, Gaussian and uniform noise; :mod:`fortify.audit.ood_sets`): AUROC and FPR@95TPR
   with bootstrap intervals, for a standard and a robust small-cnn.
2. **Static vs adaptive** at linf ``--eps`` (0.1): detection AUROC of clean test images vs successful PGD examples
   (static: against the classifier only) and vs the adaptive attack that knows the detector
   (:class:`fortify.audit.adversarial.AdaptiveDetectorAttack`, orthogonal PGD, ``--adaptive-steps``).
3. **Speed** per 1k images vs pytorch-ood (``pip install --no-deps pytorch-ood``). Its package ``__init__`` imports
   torchvision (not installed here), so the detector modules are imported one by one with the package
   ``__init__`` skipped (namespace stubs for ``pytorch_ood`` and ``pytorch_ood.detector`` in ``sys.modules``): what
   needs torchvision (its model zoo, datasets, benchmarks) is not measured. Same model, same 1k images, same
   settings (Mahalanobis: penultimate layer, no shrinkage; ViM: same subspace dimension; KNN k = 50, both normalised;
   ReAct: 90th percentile), scoring only (fitting excluded), interleaved rounds (:func:`fortify.timing.interleave`),
   CPU time, ratio = pytorch-ood / fortify (> 1: fortify is faster) with a bootstrap 95% interval; the scores of the
   two libraries are compared once (max abs diff).

Models: ``--standard`` / ``--robust`` saved models, else trained once with fortify's recipes (``standard-mnist-5k``;
``robust-mnist-5k`` with ``--robust-epochs``) and cached under ``benchmarks/.cache/audit/``. Results:
``benchmarks/results/audit.json`` and markdown tables on stdout.

    nice -n 10 .venv/bin/python benchmarks/audit.py --n-in 500 --n-out 500 --n-fit 2000 --n-adv 200
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fortify import data as fdata
from fortify import models as fmodels
from fortify.audit.adversarial import adversarial_detection
from fortify.audit.detect import DETECTORS
from fortify.audit.detect.metrics import detection_score
from fortify.timing import CPU, TimingPolicy, fixed_rounds, interleave

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "audit"
SETS = ("fashion-mnist", "font-letters", "gaussian-noise", "uniform-noise")


def cached_model(kind: str, epochs: int) -> Path:
    """The cached standard / robust small-cnn, trained with fortify's recipe the first time."""
    dest = CACHE / f"{kind}.safetensors"
    if dest.is_file():
        return dest
    from fortify.cli import main

    CACHE.mkdir(parents=True, exist_ok=True)
    recipe = "standard-mnist-5k" if kind == "standard" else "robust-mnist-5k"
    runs = CACHE / "runs"
    argv = ["train", "--recipe", recipe, "--out", str(runs), "--threads", "1", "-q"]
    if kind == "robust":
        argv.append(f"train.epochs={epochs}")
    if main(argv) != 0:
        raise SystemExit(f"training the {kind} model failed")
    newest = max(runs.glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    shutil.copy(newest, dest)
    return dest


def ood_table(label: str, model: nn.Module, fitted: dict[str, Any], x_in: torch.Tensor, sets: dict[str, torch.Tensor],
              resamples: int) -> list[dict[str, Any]]:
    rows = []
    for det, fd in fitted.items():
        s_in = fd.score(x_in)
        for name, xo in sets.items():
            r = detection_score(s_in, fd.score(xo), resamples=resamples)
            rows.append({"model": label, "detector": det, "set": name, **r.to_dict()})
    return rows


def pood_modules() -> dict[str, Any] | str:
    """pytorch-ood's detector classes, imported without its package ``__init__`` (which needs torchvision)."""
    spec = importlib.util.find_spec("pytorch_ood")
    if spec is None or spec.origin is None:
        return "pytorch-ood is not installed (pip install --no-deps pytorch-ood)"
    root = Path(spec.origin).parent
    for name, path in (("pytorch_ood", root), ("pytorch_ood.detector", root / "detector")):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [str(path)]  # type: ignore[attr-defined]
            sys.modules[name] = m
    out = {}
    for mod, cls in (("softmax", "MaxSoftmax"), ("maxlogit", "MaxLogit"), ("energy", "EnergyBased"),
                     ("odin", "ODIN"), ("mahalanobis", "Mahalanobis"), ("knn", "KNN"), ("react", "ReAct"),
                     ("vim", "ViM")):
        out[cls] = getattr(importlib.import_module(f"pytorch_ood.detector.{mod}"), cls)
    return out


def split(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(backbone, head)`` of a Normalized small-cnn: everything before the last Linear, and that Linear."""
    inner = model.inner  # type: ignore[attr-defined]
    norm = lambda x: (x - model.mean) / model.std  # noqa: E731
    body = nn.Sequential(*list(inner)[:-1])
    return (lambda x: body(norm(x))), list(inner)[-1]  # type: ignore[return-value]


def speed(model: nn.Module, x_fit: torch.Tensor, y_fit: torch.Tensor, x: torch.Tensor, rounds: int) -> list[str]:
    """Per-1k-image scoring time, fortify vs pytorch-ood, same settings; markdown rows."""
    P = pood_modules()
    if isinstance(P, str):
        return [f"| - | - | - | not measured: {P} | - |"]
    backbone, head = split(model)
    with torch.no_grad():
        feats = backbone(x_fit)
    d = int(feats.shape[1])
    vim_dim = DETECTORS.create("vim").fit(model, x_fit, y_fit).state["ns"].shape[1]
    pairs: dict[str, tuple[Any, Callable[[], torch.Tensor]]] = {}
    theirs = {
        "msp": P["MaxSoftmax"](model), "max-logit": P["MaxLogit"](model), "energy": P["EnergyBased"](model),
        "odin": P["ODIN"](model, eps=0.0014, temperature=1000.0),
        "mahalanobis": P["Mahalanobis"](backbone).fit_features(feats, y_fit),
        "knn": P["KNN"](backbone, k=50).fit_features(feats, y_fit),
        "react": P["ReAct"](lambda t: backbone(t), head, percentile=0.9),
        "vim": P["ViM"](backbone, d=d - vim_dim, w=head.weight, b=head.bias).fit_features(feats, y_fit),
    }
    theirs["react"].fit([(x_fit, y_fit)])
    ours = {"msp": {}, "max-logit": {}, "energy": {}, "odin": {}, "mahalanobis": {"layers": 0, "shrinkage": 0.0},
            "knn": {"k": 50, "bank": x_fit.shape[0]}, "react": {}, "vim": {"dim": d - vim_dim}}
    for name, opts in ours.items():
        fd = DETECTORS.create(name, batch_size=x.shape[0], **opts).fit(model, x_fit, y_fit)
        pairs[name] = (theirs[name], (lambda fd=fd: fd.score(x)))
    policy = fixed_rounds(TimingPolicy(warmup=1, min_sample_s=0.0, min_rounds=3), rounds)
    rows = []
    for name, (det, ours_fn) in pairs.items():
        def theirs_fn(det: Any = det) -> torch.Tensor:
            return det.predict(x) if name in ("odin",) else _no_grad(det.predict, x)
        o, t = ours_fn().double(), theirs_fn().double()
        if name == "vim":  # fortify: log p(virtual) = -softplus(-s_pytorch_ood), a monotone map of the same score
            t = -torch.nn.functional.softplus(-t)
        if name == "mahalanobis":  # an affine map (pytorch-ood: 0.5 d^2 / N; fortify: d^2 standardised on train)
            agree = f"corr {float(torch.corrcoef(torch.stack([o, t]))[0, 1]):.6f}"
        else:
            agree = f"{float((o - t).abs().max()):.2g}"
        run = interleave({"pytorch-ood": theirs_fn, "fortify": ours_fn}, policy)
        sp = run.speedup("pytorch-ood", "fortify", CPU)
        k = 1000 / x.shape[0]
        rows.append(f"| {name} | {run.median('fortify', CPU) * k * 1e3:.1f} | {run.median('pytorch-ood', CPU) * k * 1e3:.1f}"
                    f" | {sp.ratio:.2f} ({sp.ci_low:.2f}-{sp.ci_high:.2f}){' noisy' if sp.noisy else ''} | {agree} |")
        print(f"  speed {name} done", flush=True)
    return rows


def _no_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fn(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-in", type=int, default=1000)
    p.add_argument("--n-out", type=int, default=1000)
    p.add_argument("--n-fit", type=int, default=4000)
    p.add_argument("--n-adv", type=int, default=300)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--adaptive-steps", type=int, default=40)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--robust-epochs", type=int, default=8)
    p.add_argument("--standard", default=None, help="a saved standard small-cnn (default: train and cache)")
    p.add_argument("--robust", default=None, help="a saved robust small-cnn (default: train and cache)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--out", default=str(ROOT / "results" / "audit.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    paths = {"standard": a.standard or cached_model("standard", a.robust_epochs),
             "robust": a.robust or cached_model("robust", a.robust_epochs)}
    x_fit, y_fit = fdata.load("mnist-5k", "train", limit=a.n_fit)
    x_in, y_in = fdata.load("mnist-5k", "test", limit=a.n_in)
    from fortify.audit.ood_sets import load_ood

    sets, notices = {}, []
    for name in SETS:
        try:
            sets[name] = load_ood(name, a.n_out, (1, 28, 28), seed=0)
        except Exception as e:  # a missing optional source: say so, measure the rest
            notices.append(f"{name}: {e}")
    doc: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                                       "torch": torch.__version__, "threads": a.threads},
                           "args": vars(a), "notices": notices, "ood": [], "adversarial": [], "speed": []}
    for label, path in paths.items():
        model = fmodels.load(path)
        acc = float((model(x_in).argmax(1) == y_in).float().mean())
        fitted = {n: DETECTORS.create(n).fit(model, x_fit, y_fit) for n in DETECTORS.names()}
        doc["ood"] += ood_table(label, model, fitted, x_in, sets, a.bootstrap)
        print(f"[{label}] clean accuracy {acc:.4f}; OOD done ({time.perf_counter() - t0:.0f}s)", flush=True)
        rep = adversarial_detection(model, fitted, x_in[: a.n_adv], y_in[: a.n_adv], attacks={"pgd": {"steps": a.pgd_steps}},
                                    eps=(a.eps,), adaptive={"steps": a.adaptive_steps}, x_clean=x_in)
        doc["adversarial"] += [{"model": label, "clean_accuracy": acc, **r.to_dict()} for r in rep.rows]
        doc.setdefault("adversarial_ece", {})[label] = {k: v.to_dict() for k, v in rep.calibration.items()}
        print(f"[{label}] adversarial done ({time.perf_counter() - t0:.0f}s)", flush=True)
        if label == "standard" and not a.skip_speed:
            doc["speed"] = speed(model, x_fit, y_fit, x_in[:1000], a.rounds)  # 1k images when --n-in >= 1000
    doc["seconds"] = time.perf_counter() - t0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print_tables(doc)


def print_tables(doc: dict[str, Any]) -> None:
    print("\n| model | detector | " + " | ".join(f"{s} AUROC / FPR95" for s in SETS) + " |")
    print("|---|---|" + "---|" * len(SETS))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in doc["ood"]:
        cells.setdefault((r["model"], r["detector"]), {})[r["set"]] = f"{r['auroc']:.3f} / {r['fpr95']:.3f}"
    for (m, d), row in cells.items():
        print(f"| {m} | {d} | " + " | ".join(row.get(s, "-") for s in SETS) + " |")
    print("\n| model | detector | static PGD AUROC / FPR95 (successes) | adaptive AUROC / FPR95 (successes) | adaptive "
          "evasion | verdict |")
    print("|---|---|---|---|---|---|")
    adv = {(r["model"], r["detector"], r["kind"]): r for r in doc["adversarial"]}
    for (m, d, k), r in adv.items():
        if k != "static":
            continue
        ad = adv.get((m, d, "adaptive"))
        f = lambda q: ("-" if q["auroc"] is None else f"{q['auroc']:.3f} / {q['fpr95']:.3f}") + f" ({q['n_success']}/{q['n']})"  # noqa: E731,E501
        print(f"| {m} | {d} | {f(r)} | {f(ad) if ad else '-'} | {ad['evasion_rate']:.3f} | "
              f"{'collapsed' if ad and ad['collapsed'] else ''} |")
    if doc["speed"]:
        print("\n| detector | fortify ms / 1k | pytorch-ood ms / 1k | pytorch-ood / fortify (95% CI) | max abs diff |")
        print("|---|---|---|---|---|")
        print("\n".join(doc["speed"]))
    print(f"\nnotices: {doc['notices']}; total {doc['seconds']:.0f}s")


if __name__ == "__main__":
    main()
