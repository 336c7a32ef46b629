"""Attack benchmark (run by hand; never part of the test suite).

(a) PGD-linf-40 (eps 0.3, step 0.01, random start) wall time on the same model and images:
    a plain PyTorch loop, fortify, torchattacks, foolbox and ART, run interleaved, medians.
(b) fortify's ``standard`` preset (sanity checks on) vs AutoAttack-standard (pyautoattack) on a
    standard, a fast-AT and a PGD-AT model: robust accuracy and wall time, interleaved rounds.

Peers live in an optional extra: ``pip install --no-deps torchattacks foolbox eagerpy pyautoattack
adversarial-robustness-toolbox GitPython gitdb smmap`` plus ``tqdm six requests``.

    .venv/bin/python benchmarks/attacks.py --n 1024 --threads 1            # everything
    .venv/bin/python benchmarks/attacks.py --n 256 --part a                # only timings
    .venv/bin/python benchmarks/attacks.py --part b --n-b 256 --models-b PGD-AT

Models (small-cnn, full MNIST) are trained once and cached as safetensors under
benchmarks/.cache/: standard (2 epochs), fast-AT (the fast-at-mnist recipe: FGSM-RS 1.25 eps, eps
ramp, catastrophic-overfitting guard; 6 epochs) and PGD-AT (PGD-5, step 0.5 eps, eps ramp; 3
epochs). Results and tables: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import fortify
from fortify import ThreatModel
from fortify import data as fdata
from fortify import models as fmodels

CACHE = Path(__file__).parent / ".cache"
EPS, STEP, STEPS = 0.3, 0.01, 40


# ----------------------------------------------------------------------------- models
def get_model(kind: str, dataset: str, epochs: int) -> torch.nn.Module:
    """Train (or load from the cache) a Normalized small-cnn: ``standard`` or ``robust`` (fast AT)."""
    from fortify.train import TrainConfig, Trainer
    from fortify.train.tasks import create as create_task

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{dataset}-{kind}-small-cnn-e{epochs}.safetensors"
    if path.exists():
        return fmodels.load(path)
    spec = fdata.info(dataset)
    x, y = fdata.load(dataset, split="train")
    torch.manual_seed(0)
    model = fmodels.Normalized(
        fmodels.create("small-cnn", in_shape=spec.input_shape, num_classes=spec.num_classes), spec.mean, spec.std
    )
    if kind == "standard":
        task = create_task("standard")
        cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=1e-3, schedule="onecycle", seed=0)
    elif kind == "robust":  # the fast-at-mnist recipe: eps ramp over 40% of training, CO guard, batch 64, lr 2e-3
        task = create_task("fast_at", threat=ThreatModel("linf", EPS), step_ratio=1.25,
                           schedule=[{"name": "eps-ramp", "warmup": 0.4}], co_guard={"max_drop": 0.2, "action": "auto"})
        cfg = TrainConfig(epochs=epochs, batch_size=64, optimizer="adam", lr=2e-3, schedule="onecycle", seed=0)
    elif kind == "trades":  # TRADES (beta 6), KL maximised by PGD-5 (step 0.5 eps), eps ramp over 30%
        task = create_task("trades", threat=ThreatModel("linf", EPS), steps=5, step_ratio=0.5, beta=6.0,
                           schedule=[{"name": "eps-ramp", "warmup": 0.3}])
        cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=2e-3, schedule="onecycle", seed=0)
    else:  # "pgd": PGD-5 adversarial training (step 0.5 eps), eps ramp over 30% of training
        task = create_task("pgd_at", threat=ThreatModel("linf", EPS), steps=5, step_ratio=0.5,
                           schedule=[{"name": "eps-ramp", "warmup": 0.3}])
        cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=2e-3, schedule="onecycle", seed=0)
    Trainer(model, task, cfg, progress=True).fit(train=(x, y))
    fmodels.save(model, path, {"dataset": dataset, "training": kind})
    return fmodels.load(path)


# ----------------------------------------------------------------------------- PGD implementations
def plain_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The textbook loop most papers ship: loss.backward() on the input, sign step, clamp."""
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(STEPS):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        x_adv = x_adv + STEP * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    return x_adv.detach()


def runners(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    threat = ThreatModel("linf", EPS)
    pgd = fortify.attacks.create("pgd", steps=STEPS, step_ratio=STEP / EPS, random_start=True, restarts=1)
    pgd_full = fortify.attacks.create("pgd", steps=STEPS, step_ratio=STEP / EPS, random_start=True, restarts=1,
                                      early_stop=False)
    out: dict[str, Callable] = {
        "plain loop": lambda x, y: plain_pgd(model, x, y),
        "fortify": lambda x, y: pgd(model, x, y, threat).x_adv,
        "fortify (no early stop)": lambda x, y: pgd_full(model, x, y, threat).x_adv,
    }
    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=True)
        out["torchattacks"] = lambda x, y: ta(x, y)
    except Exception as e:  # noqa: BLE001 - peers are optional
        print(f"torchattacks unavailable: {e}")
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        fpgd = fb.attacks.LinfPGD(rel_stepsize=STEP / EPS, steps=STEPS, random_start=True)
        out["foolbox"] = lambda x, y: fpgd(fmodel, x, y, epsilons=EPS)[1]
    except Exception as e:  # noqa: BLE001
        print(f"foolbox unavailable: {e}")
    try:
        import numpy as np
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                clip_values=(0.0, 1.0), device_type="cpu")
        apgd = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=EPS, eps_step=STEP, max_iter=STEPS,
                                               num_random_init=1, batch_size=1024, verbose=False)
        out["ART"] = lambda x, y: torch.from_numpy(apgd.generate(x.numpy(), y.numpy()))
    except Exception as e:  # noqa: BLE001
        print(f"ART unavailable: {e}")
    return out


def robust_acc(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def part_a(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> list[dict]:
    run = runners(model)
    times: dict[str, list[float]] = {k: [] for k in run}
    accs: dict[str, float] = {}
    for r in range(repeats):  # interleaved: every implementation once per round
        for name, fn in run.items():
            torch.manual_seed(r)
            t0 = time.perf_counter()
            x_adv = fn(x, y)
            times[name].append(time.perf_counter() - t0)
            assert (x_adv - x).abs().max() <= EPS + 1e-5, name
            accs[name] = robust_acc(model, x_adv, y)
    base = statistics.median(times["plain loop"])
    rows = []
    for name in run:
        med = statistics.median(times[name])
        rows.append({"impl": name, "median_s": med, "speed_vs_plain": base / med, "robust_acc": accs[name]})
    return rows


def part_b(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, label: str, repeats: int,
           with_full: bool = False, save: Path | None = None, reuse_aa: Path | None = None,
           tag: str = "") -> list[dict]:
    """fortify ``standard`` (sanity checks on, as a user runs it) vs AutoAttack-standard, interleaved.

    ``reuse_aa``: a folder of earlier ``--save`` results; AutoAttack's per-image mask and times for
    this model are read from there instead of running it again (same images, same seed)."""
    from fortify.evaluate import robust_accuracy

    from fortify.evaluate.presets import AttackSpec

    # the pre-shortcut `standard`: AutoAttack's suite at its budgets, every attack on every survivor
    full = [AttackSpec("apgd-ce", "apgd", {"loss": "ce", "steps": 100}),
            AttackSpec("apgd-t", "apgd-t", {"steps": 100, "n_target_classes": 9}),
            AttackSpec("fab-t", "fab", {"steps": 100, "n_target_classes": 9}),
            AttackSpec("square", "square", {"queries": 5000})]
    presets = {"fortify standard": "standard"}
    if with_full:
        presets["fortify, no shortcuts"] = full
    times: dict[str, list[float]] = {k: [] for k in presets} | {"AutoAttack standard": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # process CPU time: robust to a contended machine
    accs: dict[str, float] = {}
    extra: dict[str, str] = {}
    robust: dict[str, torch.Tensor] = {}  # per-image robust mask of the last round
    for r in range(repeats):
        for name, preset in presets.items():
            t0, c0 = time.perf_counter(), time.process_time()
            rep = robust_accuracy(model, x, y, ThreatModel("linf", EPS), preset=preset, seed=r)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            accs[name] = rep.robust_accuracy
            robust[name] = rep.threats[0].robust.bool().cpu()
            extra[name] = ", ".join(f"{row.label} -{row.broken}" for row in rep.threats[0].rows) + (
                f"; fired: {','.join(rep.fired) or '-'}")
        old = reuse_aa / f"part_b-{label}.json" if reuse_aa is not None else None
        if old is not None and old.exists():
            import json

            prev = json.loads(old.read_text())
            if prev["n"] != len(x):
                raise SystemExit(f"{old}: n={prev['n']} but this run has n={len(x)}")
            mask = torch.zeros(len(x), dtype=torch.bool)
            mask[prev["robust"]["AutoAttack standard"]] = True
            robust["AutoAttack standard"] = mask
            accs["AutoAttack standard"] = float(mask.float().mean())
            times["AutoAttack standard"].append(prev["median_s"]["AutoAttack standard"])
            cpu["AutoAttack standard"].append(prev["median_cpu_s"]["AutoAttack standard"])
            extra["AutoAttack standard"] = f"apgd-ce, apgd-t(9), fab-t(9), square(5000) (run earlier: {old.name})"
            continue
        try:
            from pyautoattack import AutoAttack
        except ImportError as e:
            print(f"AutoAttack unavailable: {e}")
            times.pop("AutoAttack standard", None)
            continue
        aa = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=r)
        t0, c0 = time.perf_counter(), time.process_time()
        out = aa.run_standard_evaluation(x, y, batch_size=len(x))
        times["AutoAttack standard"].append(time.perf_counter() - t0)
        cpu["AutoAttack standard"].append(time.process_time() - c0)
        x_adv = out[0] if isinstance(out, tuple) else out
        assert (x_adv - x).abs().max() <= EPS + 1e-5
        accs["AutoAttack standard"] = robust_acc(model, x_adv, y)
        with torch.no_grad():
            robust["AutoAttack standard"] = (model(x_adv).argmax(1) == y).cpu()
        extra["AutoAttack standard"] = "apgd-ce, apgd-t(9), fab-t(9), square(5000)"
    ref = statistics.median(times["AutoAttack standard"]) if "AutoAttack standard" in times else float("nan")
    ref_cpu = statistics.median(cpu["AutoAttack standard"]) if cpu.get("AutoAttack standard") else float("nan")
    aa_mask = robust.get("AutoAttack standard")
    # images fortify calls robust that AutoAttack breaks: the per-image "weaker than AutoAttack" count
    weaker = {k: ("-" if aa_mask is None else int((m & ~aa_mask).sum())) for k, m in robust.items()}
    if save is not None:  # per-image masks, so the table can be recomputed and missed images re-attacked
        import json

        save.mkdir(parents=True, exist_ok=True)
        doc = {"model": label, "n": len(x), "eps": EPS, "torch": torch.__version__, "machine": platform.processor(),
               "robust": {k: [int(i) for i in m.nonzero().flatten()] for k, m in robust.items()},
               "weaker_than_AA": {k: ([] if aa_mask is None else [int(i) for i in (m & ~aa_mask).nonzero().flatten()])
                                  for k, m in robust.items()},
               "median_s": {k: statistics.median(v) for k, v in times.items()},
               "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items() if v}, "stages": extra}
        (save / f"part_b-{label}{tag}.json").write_text(json.dumps(doc, indent=1))
    return [{"model": label, "impl": k, "robust_acc": accs[k], "weaker_than_AA": weaker.get(k, "-"),
             "median_s": statistics.median(v),
             "time_vs_AA": statistics.median(v) / ref,
             "cpu_s": statistics.median(cpu[k]), "cpu_vs_AA": statistics.median(cpu[k]) / ref_cpu, "rounds_s": " ".join(f"{t:.1f}" for t in v),
             "stages (points broken)": extra[k]} for k, v in times.items()]


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the standard model")
    ap.add_argument("--robust-epochs", type=int, default=6, help="epochs of fast adversarial training")
    ap.add_argument("--pgd-epochs", type=int, default=3, help="epochs of PGD-5 adversarial training")
    ap.add_argument("--part", choices=["a", "b", "ab"], default="ab")
    ap.add_argument("--n-b", type=int, default=1024, help="images for part (b) (the first n-b of --n)")
    ap.add_argument("--repeats-b", type=int, default=1)
    ap.add_argument("--models-b", default="standard,fast-AT,PGD-AT,TRADES",
                    help="comma-separated: standard, fast-AT, PGD-AT, TRADES, or a LABEL given by --model-file")
    ap.add_argument("--trades-epochs", type=int, default=3, help="epochs of TRADES (PGD-5) training")
    ap.add_argument("--model-file", action="append", default=[], metavar="LABEL=PATH[@DATASET]",
                    help="a saved model to compare too (e.g. main=fortify-runs/ID/model.safetensors@mnist-5k); "
                         "its images come from DATASET's test split (default --dataset)")
    ap.add_argument("--save", type=Path, default=None, help="folder for per-image robust masks (JSON per model)")
    ap.add_argument("--reuse-aa", type=Path, default=None, metavar="DIR",
                    help="read AutoAttack's masks and times from an earlier --save folder instead of rerunning it")
    ap.add_argument("--tag", default="", help="suffix of the saved JSON names (part_b-LABEL{TAG}.json)")
    ap.add_argument("--no-shortcuts", action="store_true",
                    help="part (b) also runs the pre-shortcut standard suite (every attack on every survivor)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, n={args.n}, dataset={args.dataset}")
    x, y = fdata.load(args.dataset, split="test", limit=args.n)
    # one-off process costs must not be charged to whichever attack runs first: creating the first
    # torch optimizer imports torch._dynamo (~6 s here; the cascade's surrogate uses Adam)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    recipes = {"standard": ("standard", args.epochs), "fast-AT": ("robust", args.robust_epochs),
               "PGD-AT": ("pgd", args.pgd_epochs), "TRADES": ("trades", args.trades_epochs)}
    files: dict[str, tuple[str, str]] = {}
    for item in args.model_file:
        label, _, rest = item.partition("=")
        path, _, dataset = rest.partition("@")
        files[label] = (path, dataset or args.dataset)
    cache: dict[str, torch.nn.Module] = {}

    def model_of(label: str) -> torch.nn.Module:  # trained (or read from the cache) only when used
        if label not in cache:
            if label in files:
                cache[label] = fmodels.load(files[label][0]).eval()
            else:
                cache[label] = get_model(recipes[label][0], args.dataset, recipes[label][1]).eval()
        return cache[label]

    def images_of(label: str) -> tuple[torch.Tensor, torch.Tensor]:
        if label in files and files[label][1] != args.dataset:
            return fdata.load(files[label][1], split="test", limit=args.n_b)
        return x[: args.n_b], y[: args.n_b]
    if "a" in args.part:
        for label in ("standard", "fast-AT"):
            print(f"\n(a) PGD-linf-40 eps={EPS} on the {label} model, {args.repeats} interleaved rounds")
            print(table(part_a(model_of(label), x, y, args.repeats)), flush=True)
    if "b" in args.part:
        for label in args.models_b.split(","):
            xb, yb = images_of(label)
            print(f"\n(b) standard preset vs AutoAttack-standard, {label} model, n={len(xb)}, "
                  f"{args.repeats_b} interleaved round(s)")
            print(table(part_b(model_of(label), xb, yb, label, args.repeats_b, args.no_shortcuts, args.save,
                               args.reuse_aa, args.tag)), flush=True)

if __name__ == "__main__":
    main()
