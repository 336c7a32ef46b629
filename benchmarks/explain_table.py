"""Robust vs standard explanations (issue 14 items 6b and the closing note; run by hand, never in the
test suite): the metric x method table on a standard and an adversarially trained small-cnn
(mnist-5k) and the measured faithfulness gap.

Models: fortify's own recipes and library -- ``standard-mnist-5k`` (SGD, one-cycle) and
``robust-mnist-5k``'s task (PGD-AT, Madry et al. 2018, linf ``--eps`` with the eps ramp), both
small-cnn normalised inside the model, trained by :class:`fortify.train.Trainer` for ``--epochs``
epochs (seed 0), cached under ``benchmarks/.cache/explain/`` (safetensors, fortify's format; reused
when present, ``--retrain`` to redo). Each model's clean accuracy on the whole test split and its
PGD-20 robust accuracy on the explained images are printed.

Explanations: the first ``--n`` mnist-5k test images, target = the label (the same class for both
models, so every image is a pair), each method of ``--methods`` scored by each metric of
``--metrics`` (:mod:`fortify.explain`); cells are means over the images. The faithfulness gap is
robust minus standard per image, averaged, with a percentile bootstrap 95% interval over images
(``--boot`` resamples, seed 0); in each metric's direction ("better" when the interval excludes 0
on the good side). Infidelity is computed with ``normalize=True`` (the optimal scale of the map) and
``road-gap`` = road-lerf - road-morf per image is added: the raw probabilities and errors depend on
the model's confidence and logit scale, which adversarial training changes. Written to ``benchmarks/results/explain_table.md`` (and ``.json``).

    nice -n 10 .venv/bin/python benchmarks/explain_table.py --n 150 --threads 1
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fortify import data as fdata
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from recipe_models import recipe_model  # benchmarks/recipe_models.py (scripts run with benchmarks/ on sys.path)

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "explain"
RESULTS = ROOT / "results"
METHODS = "saliency,gradient-x-input,integrated-gradients,smoothgrad,gradcam,fullgrad,deeplift,occlusion"
METRICS = ("deletion,insertion,road-morf,road-lerf,infidelity,max-sensitivity,sparseness,randomisation,"
           "random-logit")
ROAR_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
FAITHFULNESS = ("deletion", "insertion", "road-morf", "road-lerf", "infidelity")
OPTIONS: dict[str, dict[str, Any]] = {"integrated-gradients": {"steps": 16}, "smoothgrad": {"samples": 16},
                                      "occlusion": {"window": 4, "stride": 2}, "max-sensitivity": {"samples": 5},
                                      "infidelity": {"normalize": True},  # scale-free: robust logits are smaller
                                      "road-morf": {"fractions": (0.1, 0.3, 0.5, 0.7, 0.9)},
                                      "road-lerf": {"fractions": (0.1, 0.3, 0.5, 0.7, 0.9)}}


def train_model(kind: str, a: argparse.Namespace) -> torch.nn.Module:
    """small-cnn from fortify's recipe (``standard``: standard-mnist-5k; ``robust``: PGD-AT of
    robust-mnist-5k at ``--eps``), trained for ``--epochs``; cached."""
    return recipe_model(kind, a.epochs, a.eps, CACHE, retrain=a.retrain)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, float]:
    """Clean accuracy on ``x`` and PGD-20 (linf ``eps``) robust accuracy on the same images."""
    from fortify.attacks import ATTACKS

    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    from fortify.threat import ThreatModel

    adv = ATTACKS.create("pgd", steps=20)(model, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0))
    return clean, float(adv.robust.float().mean())


def explain(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, methods: list[str],
            metrics: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {metric: {"values": [...], "higher_is_better": bool, "seconds": float}}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in methods:
        attr = ATTRIBUTIONS.create(m, **OPTIONS.get(m, {}))(model, x, y)
        out[m] = {}
        for k in metrics:
            kw = dict(OPTIONS.get(k, {}))
            if k in ("max-sensitivity", "randomisation", "random-logit"):
                kw.update(attribution=m, attribution_args=OPTIONS.get(m, {}))
            t0 = time.perf_counter()
            res = ATTRIBUTION_METRICS.create(k, **kw)(model, x, attr, y)
            out[m][k] = {"values": [float(v) for v in res.values], "higher_is_better": res.higher_is_better,
                         "seconds": time.perf_counter() - t0}
        print(f"  {m} done", flush=True)
    return out


def roar(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, methods: list[str],
         a: argparse.Namespace) -> dict[str, Any]:
    """ROAR (remove and retrain) on mnist-5k: per method, accuracy on the first ``--roar-n`` test images
    (ranked by the method on ``model``; ``x``, ``y`` are not used) of a fresh small-cnn (same
    architecture, re-initialised) retrained for ``--roar-epochs`` on the training split with each
    fraction of top-attributed pixels replaced by the mean; once with a random ranking (the baseline)."""
    from fortify.explain.metrics.roar import RetrainConfig

    train = fdata.load("mnist-5k", "train")
    x, y = fdata.load("mnist-5k", "test", limit=a.roar_n)
    retrain = RetrainConfig(epochs=a.roar_epochs, lr=1e-3, batch=64)
    out: dict[str, Any] = {}
    for i, m in enumerate(methods):
        t0 = time.perf_counter()
        attr = ATTRIBUTIONS.create(m, **OPTIONS.get(m, {}))(model, x, y)
        metric = ATTRIBUTION_METRICS.create("roar", train=train, attribution=m, attribution_args=OPTIONS.get(m, {}),
                                            fractions=ROAR_FRACTIONS, retrain=retrain, random_baseline=i == 0)
        res = metric(model, x, attr, y)
        out[m] = [float(v) for v in res.extra["accuracy"]]
        if i == 0:
            out["random"] = [float(v) for v in res.extra["random_accuracy"]]
        print(f"  roar {m} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def render_roar(res: dict[str, Any]) -> str:
    head = ["method", *(f"{f:.0%} removed" for f in ROAR_FRACTIONS)]
    lines = ["\n**ROAR** (test accuracy of a fresh small-cnn retrained without the top-ranked pixels; standard / "
             "robust model's rankings; lower is better, compare with random)\n",
             "| " + " | ".join(head) + " |", "|---|" + "---|" * len(ROAR_FRACTIONS)]
    for m in res["standard_roar"]:
        cells = [f"{s:.3f} / {r:.3f}" for s, r in zip(res["standard_roar"][m], res["robust_roar"][m])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bootstrap(diff: torch.Tensor, boot: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of ``diff (N,)`` (resampled images, seed 0)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, diff.numel(), (boot, diff.numel()), generator=g)
    means = diff[idx].mean(dim=1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def add_road_gap(block: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Per method, ``road-gap`` = road-lerf - road-morf per image (higher is better): ROAD's summary, free
    of the model's overall confidence (a less confident robust model lowers both curves)."""
    for row in block.values():
        if "road-lerf" in row and "road-morf" in row:
            row["road-gap"] = {"values": [a - b for a, b in zip(row["road-lerf"]["values"], row["road-morf"]["values"])],
                               "higher_is_better": True, "seconds": 0.0}


def render(res: dict[str, Any], methods: list[str], metrics: list[str], boot: int) -> str:
    """Markdown: the metric x method table (cells ``standard / robust`` means) and the gap table."""
    if "road-lerf" in metrics and "road-morf" in metrics:
        metrics = [*metrics, "road-gap"]
    lines = ["\n**Metric x method** (mean over images, standard / robust)\n",
             "| metric (direction) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for k in metrics:
        hib = res["standard"][methods[0]][k]["higher_is_better"]
        cells = [f"{float(torch.tensor(res['standard'][m][k]['values']).mean()):.3g} / "
                 f"{float(torch.tensor(res['robust'][m][k]['values']).mean()):.3g}" for m in methods]
        lines.append(f"| {k} ({'higher' if hib else 'lower'} is better) | " + " | ".join(cells) + " |")
    lines += ["\n**Faithfulness gap** (robust - standard, mean over images [bootstrap 95% interval]; verdict in "
              "the metric's direction)\n", "| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for k in (f for f in (*FAITHFULNESS, "road-gap") if f in metrics):
        cells = []
        for m in methods:
            d = torch.tensor(res["robust"][m][k]["values"]) - torch.tensor(res["standard"][m][k]["values"])
            lo, hi = bootstrap(d, boot)
            hib = res["standard"][m][k]["higher_is_better"]
            good, bad = (lo > 0, hi < 0) if hib else (hi < 0, lo > 0)
            word = "robust better" if good else "robust worse" if bad else "no difference"
            cells.append(f"{float(d.mean()):+.3g} [{lo:+.3g}, {hi:+.3g}] {word}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=150, help="mnist-5k test images explained")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.3, help="PGD-AT linf radius (and of the PGD-20 check)")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--metrics", default=METRICS)
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--roar", default="", help="methods also scored by ROAR (expensive: 5 retrainings each, 5 more "
                                              "for the random baseline), e.g. saliency,integrated-gradients")
    p.add_argument("--roar-epochs", type=int, default=2)
    p.add_argument("--roar-n", type=int, default=1000, help="test images whose accuracy ROAR measures")
    p.add_argument("--skip-table", action="store_true", help="ROAR only (no metric x method table)")
    p.add_argument("--out", default=str(RESULTS / "explain_table"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    methods, metrics = a.methods.split(","), a.metrics.split(",")
    x, y = fdata.load("mnist-5k", "test", limit=a.n)
    xt_all, yt_all = fdata.load("mnist-5k", "test")
    res: dict[str, Any] = {"n": int(x.shape[0]), "epochs": a.epochs, "eps": a.eps, "options": OPTIONS,
                           "torch": torch.__version__, "machine": platform.machine(), "threads": a.threads}
    header = [f"torch {torch.__version__}, {platform.machine()}, {a.threads} thread(s); n={len(x)} mnist-5k test "
              f"images (target = label); small-cnn, {a.epochs} epochs; robust = PGD-AT linf {a.eps}"]
    for kind in ("standard", "robust"):
        model = train_model(kind, a)
        with torch.no_grad():
            clean_all = float((model(xt_all).argmax(1) == yt_all).float().mean())
        _, rob = accuracy(model, x, y, a.eps)
        header.append(f"{kind}: clean accuracy {clean_all:.2%} (test split), PGD-20 linf {a.eps} robust accuracy "
                      f"{rob:.2%} (the {len(x)} explained images)")
        print(header[-1], flush=True)
        t0 = time.perf_counter()
        if not a.skip_table:
            res[kind] = explain(model, x, y, methods, metrics)
            add_road_gap(res[kind])
        if a.roar:
            res[f"{kind}_roar"] = roar(model, x, y, a.roar.split(","), a)
        res[f"{kind}_seconds"] = time.perf_counter() - t0
        res[f"{kind}_accuracy"] = {"clean": clean_all, "robust": rob}
    text = "\n".join(header) + "\n" + ("" if a.skip_table else render(res, methods, metrics, a.boot))
    if a.roar:
        text += (f"\nROAR: accuracy on the first {a.roar_n} test images, {a.roar_epochs}-epoch retraining on the 4,000 "
                 "training images\n" + render_roar(res))
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwritten {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
