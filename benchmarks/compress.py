"""Compression benchmark (run by hand; never part of the test suite).

(a) A robust (PGD-AT) ``small-cnn``/``madry-cnn``: fortify's robustness-aware pipeline (structured
    pruning + adversarial fine-tuning, then quantization-aware adversarial fine-tuning and real int8
    export via ONNX Runtime) vs a naive baseline at equal size (the same structured magnitude pruning
    + int8 static quantization, no fine-tuning). Targets: >= 10x smaller file, >= 2x lower batch-256
    latency, <= 1 pp clean and <= 2 pp robust accuracy loss.
(b) LeNet-300-100 through Deep Compression (Han et al. 2016). Target: >= 40x smaller file at
    <= 0.2 pp accuracy loss.

All figures come from the artefacts on disk and CPU runs (2 threads, interleaved medians). Robust
accuracy: white-box PGD for PyTorch models; for int8 ONNX models Square (score-based, on the int8
model itself) and transfer PGD from the float twin (a point counts as robust only if it survives
both); the float twin's own white-box PGD figure is printed too.

    .venv/bin/python benchmarks/compress.py --quick            # reduced: MNIST 10k subset, eps 0.1
    .venv/bin/python benchmarks/compress.py --model madry-cnn --train-limit 60000 --eps 0.3 --epochs 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not steal ONNX Runtime's cores

import torch  # noqa: E402

from fortify import data, models  # noqa: E402
from fortify.compress import compress, create, finetune, format_table, measure, plot_pareto  # noqa: E402
from fortify.compress.formats import save_compressed  # noqa: E402
from fortify.compress.measure import accuracy, robust_accuracy_of  # noqa: E402
from fortify.threat import ThreatModel  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_amount(text: str) -> float | dict[int, float]:
    """``"0.5"`` -> 0.5; ``"0:0.4,2:0.4,5:0.6"`` -> per-layer fractions."""
    if ":" not in text:
        return float(text)
    return {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}


def part_a(args: argparse.Namespace, train: tuple, test: tuple, out: Path) -> dict:
    spec = data.info("mnist-5k")
    torch.manual_seed(0)
    net = models.Normalized(models.create(args.model), spec.mean, spec.std)
    adv = {"threat": f"linf:{args.eps}", "steps": args.at_steps}
    t0 = time.time()
    if args.base:
        net = models.load(args.base)
        log(f"(a) loaded {args.base}")
    else:
        finetune(net, train, task="pgd_at", task_args={**adv, "schedule": "eps-ramp"}, keep_sparsity=False,
                 config={"epochs": args.epochs, "lr": 0.05, "weight_decay": 5e-4, "schedule": "onecycle"})
        models.save(net, out / "base.safetensors", meta={"training": f"pgd_at linf {args.eps}"})
        log(f"(a) PGD-AT {args.model} eps={args.eps}: {time.time() - t0:.0f}s")
    amount = parse_amount(args.amount)
    ft = {"epochs": args.ft_epochs, "lr": 0.01, "schedule": "cosine"}
    robust_steps = [
        {"transform": "channel_prune", "amount": amount, "finetune_task": "pgd_at", "finetune_args": adv,
         "finetune_config": ft},
        {"transform": "qat_int8", "epochs": args.qat_epochs, "task": "pgd_at", "task_args": adv,
         "config": {"lr": 0.002, "schedule": "cosine"}, "calibration_size": 512},
    ]
    naive_steps = [{"transform": "channel_prune", "amount": amount},
                   {"transform": "int8_static", "calibration_size": 512}]
    t0 = time.time()
    robust = compress(net, robust_steps, train, out_dir=out / "robust")
    log(f"(a) robustness-aware pipeline: {time.time() - t0:.0f}s")
    naive = compress(net, naive_steps, train, out_dir=out / "naive")
    sparse = create("magnitude_prune", sparsity=0.9, scope="global", finetune_task="pgd_at", finetune_args=adv,
                    finetune_config=ft)(net, train[0][:8], data=train)
    log("(a) measuring")
    rows = measure({"float-robust": net, "fortify-robust-int8": robust.model, "naive-prune-int8": naive.model,
                    "sparse90-advft": sparse.model},
                   test[0], test[1], threat=f"linf:{args.eps}", n_robust=args.n_robust,
                   float_twins={"fortify-robust-int8": robust.float_twin, "naive-prune-int8": naive.float_twin},
                   encodings={"float-robust": "dense"}, repeats=args.repeats, square_queries=args.square_queries)
    threat = ThreatModel.parse(f"linf:{args.eps}")
    n = args.n_robust
    twins = {}
    for name, twin in (("fortify-robust-int8", robust.float_twin), ("naive-prune-int8", naive.float_twin)):
        twins[name] = {"twin_clean": accuracy(twin, test[0], test[1]),
                       "twin_pgd_robust": robust_accuracy_of(twin, test[0][:n], test[1][:n], threat)[0]}
    sq_float = robust_accuracy_of(net, test[0][:n], test[1][:n], threat, mode="pgd")[0]
    from fortify.attacks import create as create_attack

    sq = create_attack("square", n_queries=args.square_queries)(net, test[0][:n], test[1][:n], threat,
                                                                 generator=torch.Generator().manual_seed(0))
    rows[0].extra["robust_square"] = float((~sq.success).float().mean())
    plot_pareto(rows, out / "pareto_a.png", title=f"{args.model}, linf {args.eps}: size vs robust accuracy")
    return {"rows": [r.to_dict() for r in rows], "float_twins": twins, "float_pgd": sq_float,
            "table": format_table(rows)}


def part_b(args: argparse.Namespace, train: tuple, test: tuple, out: Path) -> dict:
    spec = data.info("mnist-5k")
    torch.manual_seed(0)
    net = models.Normalized(models.create("mlp"), spec.mean, spec.std)
    finetune(net, train, keep_sparsity=False, config={"epochs": args.mlp_epochs, "lr": 0.05, "schedule": "cosine"})
    base = accuracy(net, test[0], test[1])
    dense = save_compressed(net, out / "lenet300_dense.safetensors", encoding="dense").stat().st_size
    models.save(net, out / "lenet300_fortify.safetensors")
    t0 = time.time()
    # Han et al.'s LeNet-300-100 pruning rates (8% / 9% / 26% of the weights kept); 4-bit codebook for
    # the 784x300 layer, 5-bit for the others
    dc = create("deep_compression", sparsity={1: 0.92, 3: 0.91, 5: 0.74}, bits={1: 4, 3: 5, 5: 5},
                prune_epochs=args.dc_epochs, share_epochs=max(1, args.dc_epochs // 3),
                config={"lr": 0.02, "schedule": "cosine"})(net, train[0][:8], data=train)
    path = save_compressed(dc.model, out / "lenet300_dc.safetensors", encoding="codebook")
    from fortify.compress import load_compressed

    back = load_compressed(path)
    acc = accuracy(back, test[0], test[1])
    log(f"(b) deep compression: {time.time() - t0:.0f}s")
    return {"dense_bytes": dense, "fortify_model_bytes": (out / "lenet300_fortify.safetensors").stat().st_size,
            "dc_bytes": path.stat().st_size, "ratio": dense / path.stat().st_size, "acc_dense": base,
            "acc_dc": acc, "loss_pp": 100 * (base - acc), "report": dc.report}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced run (the defaults below)")
    p.add_argument("--model", default="small-cnn", choices=["small-cnn", "madry-cnn"])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--at-steps", type=int, default=5)
    p.add_argument("--amount", default="0.5", help="channel fraction removed: 0.5 or per layer 0:0.4,2:0.4,5:0.6")
    p.add_argument("--base", default="", help="reuse a robust model file (skips PGD-AT)")
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--mlp-epochs", type=int, default=10)
    p.add_argument("--dc-epochs", type=int, default=16)
    p.add_argument("--test-limit-b", type=int, default=10000)
    p.add_argument("--n-robust", type=int, default=200)
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="runs/bench-compress")
    p.add_argument("--parts", default="ab")
    args = p.parse_args()
    torch.set_num_threads(1)  # training on one thread; latency measured with 2 threads inside measure()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = data.load(args.dataset, "train", limit=args.train_limit)
    test = data.load(args.dataset, "test", limit=args.test_limit)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__}, "args": vars(args)}
    if "a" in args.parts:
        result["a"] = part_a(args, train, test, out)
        print(result["a"]["table"])
        print(json.dumps({"float_pgd": result["a"]["float_pgd"], "twins": result["a"]["float_twins"],
                          "float_square": result["a"]["rows"][0]["extra"]}, indent=1))
    if "b" in args.parts:
        result["b"] = part_b(args, train, data.load(args.dataset, "test", limit=args.test_limit_b), out)
        b = result["b"]
        print(f"(b) LeNet-300-100: dense {b['dense_bytes']:,} B -> {b['dc_bytes']:,} B = {b['ratio']:.1f}x; "
              f"accuracy {b['acc_dense']:.4f} -> {b['acc_dc']:.4f} ({b['loss_pp']:+.2f} pp loss)")
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
