"""Large-batch robust training: clean and robust accuracy per batch size and optimiser (run by hand).

Same model, data, threat, task and number of epochs for every cell; only the batch size and the
optimiser change. Learning rates follow each optimiser's scaling rule from a base tuned at
``--base-batch`` (``TrainConfig.lr_scaling``): SGD linear (Goyal et al. 2017), Adam sqrt, LARS sqrt
on its trust-ratio-scaled step (linear diverged at batch 1k in a trial; You et al. 2017), LAMB sqrt (You et al. 2020); every run warms
up linearly over ``--warmup`` of its steps and then decays (cosine). The task is PGD adversarial training with
fortify's ramps (eps 0 -> eps over the first 40% of steps, PGD steps 1 -> ``--steps`` by 60%), on
small-cnn with the dataset's normalisation inside the model. Robust accuracy is PGD-20
(step 2.5 eps / 20, one random start) on the first ``--test-limit`` test images; clean accuracy on the
same images. Results are appended as JSON lines to ``--out`` and printed as a markdown table.

    # the issue's scale (full MNIST, linf 0.3, PGD-AT; a GPU is advisable):
    .venv/bin/python benchmarks/large_batch.py --dataset mnist --epochs 20 --task pgd_at --steps 10
    # the full-MNIST table of benchmarks/README.md (12 epochs, PGD-3 AT, lr tuned on the val split at 4k):
    nice -n 10 .venv/bin/python benchmarks/large_batch.py --dataset mnist --epochs 12 --task pgd_at --steps 3 \\
        --test-limit 1000 --val-limit 1000 --out benchmarks/results/large_batch_full.jsonl \\
        --optimizers lamb --batches 4096 --peak-lr 0.06 --warmup 0.25 --tag sweep4k
    # the earlier reduced-scale table (shared 2-core CPU):
    nice -n 10 .venv/bin/python benchmarks/large_batch.py --dataset mnist --train-limit 20000 --epochs 4 \\
        --test-limit 1000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fortify import data as fdata
from fortify import models
from fortify.threat import ThreatModel
from fortify.attacks import create as create_attack
from fortify.errors import ConfigError
from fortify.train import Trainer, tasks

#: base learning rate at ``--base-batch`` and the scaling rule of every optimiser
OPTIMISERS: dict[str, tuple[float, str]] = {"sgd": (0.05, "linear"), "adam": (1e-3, "sqrt"),
                                            "lars": (5.0, "sqrt"), "lamb": (5e-3, "sqrt"),
                                            "lars-const": (5.0, "none")}  # LARS, rate not scaled with the batch


def robust_and_clean(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                     steps: int = 20) -> tuple[float, float]:
    """``(clean accuracy, PGD-steps robust accuracy)`` of ``model`` on ``x (N, 1, 28, 28)``, ``y (N,)``."""
    from fortify.models.state import eval_mode

    attack = create_attack("pgd", steps=steps)
    with eval_mode(model), torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    res = attack(model, x, y, ThreatModel.parse(f"linf:{eps}"), generator=torch.Generator().manual_seed(0))
    with eval_mode(model), torch.no_grad():
        robust = float((model(res.x_adv).argmax(1) == y).float().mean())
    return clean, robust


def cell_lr(opt: str, batch: int, args: argparse.Namespace) -> tuple[float, str]:
    """``(lr, scaling rule)`` of a cell: ``--peak-lr`` (unscaled) when given, else the table's base and rule."""
    if args.peak_lr is not None:
        return float(args.peak_lr), "none"
    return OPTIMISERS[opt]


def cell_key(opt: str, batch: int, args: argparse.Namespace, n_train: int) -> tuple[Any, ...]:
    """What makes a row the same measurement (used to skip rows already in ``--out`` on a rerun)."""
    lr, rule = cell_lr(opt, batch, args)
    return (opt, batch, round(lr, 12), rule, args.warmup, args.epochs, args.task, args.dataset, n_train,
            args.eps_ramp, args.tag, args.seed)


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """:func:`cell_key` of a stored row (older rows lack some fields: their defaults are filled in)."""
    return (r["optimizer"], r["batch"], round(r.get("lr", r["peak_lr"]), 12), r.get("lr_scaling", "?"),
            r.get("warmup", 0.1), r["epochs"], r["task"], r["dataset"], r["n_train"], r.get("eps_ramp", 0.4),
            r.get("tag", ""), r.get("seed", 0))


def run_cell(opt: str, batch: int, args: argparse.Namespace, train: Any, test: Any,
             val: Any = None) -> dict[str, Any]:
    """Train one model with ``opt`` at global batch ``batch``; return the row (``val`` scored too if given)."""
    lr, rule = cell_lr(opt, batch, args)
    name = opt.split("-")[0]
    torch.manual_seed(args.seed)
    spec = fdata.info(args.dataset)
    net = models.Normalized(models.create(args.model, in_shape=tuple(spec.input_shape), num_classes=spec.num_classes),
                            spec.mean, spec.std)
    # fortify's robust recipe: eps ramps 0 -> eps over 40% of training, PGD steps 1 -> K by 60%
    schedule: list[dict[str, Any]] = [{"name": "eps-ramp", "warmup": args.eps_ramp}]
    task_args: dict[str, Any] = {"threat": f"linf:{args.eps}", "monitor": False, "schedule": schedule}
    if args.task == "pgd_at":
        task_args["steps"] = args.steps
        schedule.append({"name": "steps-ramp", "min_steps": 1, "until": min(0.99, args.eps_ramp + 0.2)})
    else:
        task_args["co_guard"] = False
    task = tasks.create(args.task, **task_args)
    cfg = dict(epochs=args.epochs, batch_size=batch, optimizer=name, lr=lr, lr_scaling=rule,
               base_batch_size=args.base_batch, warmup=args.warmup, schedule="cosine", seed=args.seed,
               weight_decay=5e-4 if name in ("sgd", "lars") else 0.0, momentum=0.9, grad_clip=None)
    trainer = Trainer(net, task, cfg, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    diverged = None
    try:
        trainer.fit(train)
    except ConfigError as e:  # a NaN loss: recorded as a result (the cell's accuracy is 0 by definition)
        if "diverged" not in str(e):
            raise
        diverged = str(e).split(";")[0]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = os.getloadavg()[0]
    ev = args.eval_steps
    clean, robust = robust_and_clean(net, test[0], test[1], args.eps, ev) if diverged is None else (0.0, 0.0)
    row = {"optimizer": opt, "batch": batch, "lr": lr, "lr_scaling": rule, "peak_lr": trainer.config.peak_lr,
           "warmup": args.warmup, "eps_ramp": args.eps_ramp, "weight_decay": cfg["weight_decay"],
           "epochs": args.epochs, "steps": trainer.global_step, "clean": clean, "robust": robust,
           "eval": f"pgd-{ev}", "train_wall_s": wall, "train_cpu_s": cpu,
           "cpu_ms_per_example": 1e3 * cpu / (args.epochs * int(train[0].shape[0])), "load1": load,
           "diverged": diverged, "task": args.task, "pgd_steps": args.steps if args.task == "pgd_at" else 1,
           "dataset": args.dataset, "n_train": int(train[0].shape[0]), "n_test": int(test[0].shape[0]),
           "eps": args.eps, "model": args.model, "seed": args.seed, "tag": args.tag}
    if val is not None:
        row["val_clean"], row["val_robust"] = (robust_and_clean(net, val[0], val[1], args.eps, ev)
                                               if diverged is None else (0.0, 0.0))
        row["n_val"] = int(val[0].shape[0])
    return row


def main() -> None:
    """Parse flags, run the grid (resuming rows already in ``--out``), print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--task", choices=("fast_at", "pgd_at"), default="pgd_at")
    p.add_argument("--steps", type=int, default=3, help="PGD steps of pgd_at")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batches", default="64,1024,4096,8192")
    p.add_argument("--optimizers", default="sgd,adam,lars,lamb")
    p.add_argument("--base-batch", type=int, default=64)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps of linear lr warm-up")
    p.add_argument("--peak-lr", type=float, default=None,
                   help="peak lr of every cell of this call, not scaled (overrides the table's base and rule)")
    p.add_argument("--eps-ramp", type=float, default=0.4, help="fraction of the steps over which eps ramps up")
    p.add_argument("--eval-steps", type=int, default=20, help="PGD steps of the robust accuracy")
    p.add_argument("--val-limit", type=int, default=0,
                   help="also score the first N images of the dataset's val split (for tuning; 0: off)")
    p.add_argument("--tag", default="", help="label stored in every row (part of the resume key)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/large_batch.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train = fdata.load(args.dataset, "train", limit=args.train_limit)
    test = fdata.load(args.dataset, "test", limit=args.test_limit)
    val = fdata.load(args.dataset, "val", limit=args.val_limit) if args.val_limit else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            try:
                done.add(row_key(json.loads(line)))
            except (json.JSONDecodeError, KeyError):  # a row cut short by a killed run: measured again
                continue
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, load {os.getloadavg()}")
    for batch in [int(b) for b in args.batches.split(",")]:
        for opt in args.optimizers.split(","):
            if cell_key(opt, batch, args, int(train[0].shape[0])) in done:
                continue
            row = run_cell(opt, batch, args, train, test, val)
            with out.open("a") as f:  # one whole line per write, flushed to disk: a killed run loses only its cell
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            print(f"| {opt} | {batch} | {row['steps']} | {row['peak_lr']:.3g} | {100 * row['clean']:.1f}% | "
                  f"{100 * row['robust']:.1f}% | {row['train_wall_s']:.0f} s | {row['train_cpu_s']:.0f} cpu-s |"
                  + (f" val {100 * row['val_clean']:.1f}/{100 * row['val_robust']:.1f} |" if val is not None else "") + (" diverged" if row["diverged"] else ""),
                  flush=True)


if __name__ == "__main__":
    main()
