"""Compression benchmark (run by hand; never part of the test suite).

(a) A robust small-cnn (linf 0.3): fortify's robustness-aware pipeline vs a naive baseline at equal size.
    fortify: structural compression (channel pruning and/or a truncated-SVD factorisation of fc1),
    adversarial fine-tuning (PGD-AT or TRADES), quantization-aware adversarial fine-tuning and a real int8
    ONNX Runtime export with the first conv kept in float32 (``--keep-float``). Naive: the *same*
    structural steps and the same int8 export, no fine-tuning (files of equal size). Targets: >= 10x smaller
    file, >= 2x lower batch-256 latency, <= 1 pp clean and <= 2 pp robust accuracy loss.
(b) LeNet-300-100 through Deep Compression (Han et al. 2016): 10 epochs on the first ``--train-limit``
    training images, then pruning to Han et al.'s per-layer rates in ``--prune-rounds`` rounds (cubic
    schedule, ``--dc-epochs`` retraining epochs in all), k-means weight sharing (4/5/5 bits) and the
    entropy-coded file. Target: >= 40x smaller file at <= 0.2 pp accuracy loss. One-shot pruning with 16
    epochs (the former default) lost 0.18 / 0.18 / 0.41 pp on seeds 0 / 1 / 2; 4 rounds and 24 epochs
    0.07 / 0.04 / 0.12 pp (``--seed``).

Every figure comes from the artefacts and CPU runs. Sizes: the dense float32 safetensors file vs the
``.onnx`` file. Latency: ``fortify.compress.measure.latencies`` at batch 1 and 256 (warm-up, the models
interleaved round-robin, medians, 2 threads), the float model both in PyTorch and as float32 ONNX.
Robust accuracy on equal footing (``fortify.compress.measure.robust_masks``), per sample:
float models (the base and the fine-tuned float twins) must survive the white-box ``fast`` cascade
(APGD-CE + APGD-T) *and* Square (score-based); an int8 ONNX model must survive Square on itself, transfer
PGD-40 and transfer of the ``fast`` cascade's examples from its float twin. Every per-attack figure is
printed; standard errors are binomial (one figure) and paired (a difference on the same images).

    .venv/bin/python benchmarks/compress.py --quick            # reduced: PGD-AT on a 10k subset, eps 0.1
    # the real threat model: the robust-mnist recipe model (trained and cached on first use), linf 0.3,
    # fine-tuning on the first 10k training images, clean on the 10k test images, robust on the first 1,000
    .venv/bin/python benchmarks/compress.py --parts a --base benchmarks/.cache/mnist-robustmnist-small-cnn-e6.safetensors \\
        --eps 0.3 --train-limit 10000 --test-limit 10000 --n-robust 1000 --amount 0:0,2:0.25,5:0 --lowrank 32 \\
        --ft-epochs 2 --qat-epochs 1 --repeats 20 --out benchmarks/.cache/compress-runs/bench-compress-a
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
from fortify.compress import compress, create, finetune, plot_pareto  # noqa: E402
from fortify.compress.formats import save_compressed  # noqa: E402
from fortify.metrics import clean_accuracy as accuracy  # noqa: E402
from fortify.threat import ThreatModel  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_amount(text: str) -> float | dict[int, float]:
    """``"0.5"`` -> 0.5; ``"0:0.4,2:0.4,5:0.6"`` -> per-layer fractions."""
    if ":" not in text:
        return float(text)
    return {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}


def robust_base(args: argparse.Namespace, train: tuple, out: Path) -> tuple[torch.nn.Module, str]:
    """The robust float model compressed in (a) and a line saying where it came from.

    ``--base FILE``: loaded if it exists, else trained with the ``robust-mnist`` recipe (PGD-5 AT at
    ``--eps``, eps ramp over 40%, steps ramp 1 -> 5 by 60%, Adam 3e-3 one-cycle, batch 64,
    ``--base-epochs`` epochs on the *full* train split) and cached there. Without ``--base``: PGD-AT
    on the ``--train-limit`` subset (the ``--quick`` mode).
    """
    spec = data.info(args.dataset)
    torch.manual_seed(0)
    net = models.Normalized(models.create(args.model, in_shape=spec.input_shape, num_classes=spec.num_classes),
                            spec.mean, spec.std)
    t0 = time.time()
    if args.base and Path(args.base).exists():
        return models.load(args.base), f"loaded {args.base}"
    if args.base:
        from fortify.train import Trainer, TrainConfig
        from fortify.train.tasks import create as create_task

        full = data.load(args.dataset, "train")
        task = create_task("pgd_at", threat=f"linf:{args.eps}", steps=5, monitor=False,
                           schedule=[{"name": "eps-ramp", "warmup": 0.4},
                                     {"name": "steps-ramp", "min_steps": 1, "until": 0.6}])
        cfg = TrainConfig(epochs=args.base_epochs, batch_size=64, optimizer="adam", lr=0.003, schedule="onecycle",
                          seed=0)
        Trainer(net, task, cfg, progress=False).fit(full)
        Path(args.base).parent.mkdir(parents=True, exist_ok=True)
        models.save(net, args.base, meta={"training": f"robust-mnist recipe, linf {args.eps}, {args.base_epochs} "
                                                      f"epochs, {full[0].shape[0]} images"})
        desc = f"robust-mnist recipe {args.base_epochs} epochs on {full[0].shape[0]} images, saved to {args.base}"
    else:
        adv = {"threat": f"linf:{args.eps}", "steps": args.at_steps, "schedule": "eps-ramp"}
        finetune(net, train, task="pgd_at", task_args=adv, keep_sparsity=False,
                 config={"epochs": args.epochs, "lr": 0.05, "weight_decay": 5e-4, "schedule": "onecycle"})
        models.save(net, out / "base.safetensors", meta={"training": f"pgd_at linf {args.eps}"})
        desc = f"PGD-AT {args.epochs} epochs on {train[0].shape[0]} images"
    log(f"(a) base: {desc} ({time.time() - t0:.0f}s)")
    return net, desc


def steps_a(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """(robustness-aware steps, naive steps); both prune the same channels, so the files have equal size."""
    amount = parse_amount(args.amount)
    adv = {"threat": f"linf:{args.eps}", "steps": args.at_steps, "monitor": False}
    if args.ft_task == "trades":
        adv["beta"] = args.trades_beta
    ft = {"epochs": args.ft_epochs, "lr": args.ft_lr, "schedule": "cosine", "optimizer": args.ft_optimizer,
          "seed": args.seed}
    structure: list[dict] = []
    if amount:  # 0 or a mapping: channel pruning (a mapping of zeros still runs; it is a no-op)
        structure.append({"transform": "channel_prune", "amount": amount})
    if args.lowrank:
        structure.append({"transform": "low_rank", "rank": args.lowrank,
                          "layers": [int(v) for v in args.lowrank_layers.split(",")]})
    if not structure:
        raise SystemExit("nothing to compress structurally: give --amount and/or --lowrank")
    robust = [dict(s) for s in structure]
    robust[-1].update({"finetune_task": args.ft_task, "finetune_args": adv, "finetune_config": ft})
    keep = [int(v) for v in args.keep_float.split(",") if v.strip()]
    if args.qat_epochs > 0:
        robust.append({"transform": "qat_int8", "epochs": args.qat_epochs, "task": args.ft_task, "task_args": adv,
                       "config": {"lr": args.qat_lr, "schedule": "cosine", "optimizer": args.ft_optimizer,
                                  "seed": args.seed},
                       "calibration_size": args.calibration, "keep_float": keep})
    else:
        robust.append({"transform": "int8_static", "calibration_size": args.calibration, "keep_float": keep})
    naive = [dict(s) for s in structure] + [
        {"transform": "int8_static", "calibration_size": args.calibration, "keep_float": keep}]
    return robust, naive


def paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of ``mean(a) - mean(b)`` for paired 0/1 outcomes ``a, b (N,)`` on the same images."""
    d = a.float() - b.float()
    return float(d.std(unbiased=True) / d.numel() ** 0.5)


def binom_se(m: torch.Tensor) -> float:
    """Binomial standard error of the mean of a 0/1 tensor."""
    p = float(m.float().mean())
    return (p * (1 - p) / m.numel()) ** 0.5


def part_a(args: argparse.Namespace, train: tuple, test: tuple, out: Path) -> dict:
    from fortify.compress.export import onnx_bytes
    from fortify.compress.measure import artefact_bytes, latencies, robust_masks
    from fortify.compress.measure import Measurement
    from fortify.compress.quantize.runtime import OnnxModule

    net, base_desc = robust_base(args, train, out)
    robust_steps, naive_steps = steps_a(args)
    t0 = time.time()
    torch.manual_seed(args.seed)
    robust = compress(net, robust_steps, train, out_dir=out / "robust")
    log(f"(a) robustness-aware pipeline: {time.time() - t0:.0f}s")
    naive = compress(net, naive_steps, train, out_dir=out / "naive")
    threat = ThreatModel.parse(f"linf:{args.eps}")
    x, y = test
    n = min(args.n_robust, x.shape[0])
    xr, yr = x[:n], y[:n]
    float_onnx = OnnxModule(onnx_bytes(net, x[:8]), threads=2, kind="float")
    log("(a) latency")
    timed = {"float": net, "float-onnx": float_onnx, "fortify-int8": robust.model, "naive-int8": naive.model}
    lat = latencies(timed, x, repeats=args.repeats, threads=2)
    cpu = latencies(timed, x, repeats=args.repeats, threads=2, clock="cpu")
    rows: dict[str, dict] = {}
    entries = [("float", net, None, "dense safetensors"), ("float-onnx", float_onnx, None, "float32 ONNX"),
               ("fortify-twin", robust.float_twin, None, "float twin of fortify-int8 (white-box)"),
               ("fortify-int8", robust.model, robust.float_twin, "int8 ONNX (black-box)"),
               ("naive-twin", naive.float_twin, None, "float twin of naive-int8 (white-box)"),
               ("naive-int8", naive.model, naive.float_twin, "int8 ONNX (black-box)")]
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for name, m, twin, what in entries:
        row = {"what": what, "bytes": artefact_bytes(m, "dense") if not isinstance(m, OnnxModule) else len(m.blob),
               "clean": accuracy(m, x, y)}
        if name in lat:
            row["lat_b1_ms"], row["lat_b256_ms"] = lat[name][1], lat[name][256]
            row["cpu_b1_ms"], row["cpu_b256_ms"] = cpu[name][1], cpu[name][256]
        if name != "float-onnx":  # the same function as "float"
            t1 = time.time()
            masks[name] = robust_masks(m, xr, yr, threat, float_twin=twin, square_queries=args.square_queries,
                                       seed=0)
            row["robust"] = {k: float(v.float().mean()) for k, v in masks[name].items()}
            row["robust_se"] = binom_se(masks[name]["all"])
            log(f"(a) {name}: clean {row['clean']:.4f}, robust {row['robust']} ({time.time() - t1:.0f}s)")
        rows[name] = row
    for name in ("fortify-twin", "fortify-int8", "naive-twin", "naive-int8"):
        rows[name]["robust_loss_pp"] = 100 * (rows["float"]["robust"]["all"] - rows[name]["robust"]["all"])
        rows[name]["robust_loss_se_pp"] = 100 * paired_se(masks["float"]["all"], masks[name]["all"])
        rows[name]["clean_loss_pp"] = 100 * (rows["float"]["clean"] - rows[name]["clean"])
    base = rows["float"]
    for name in ("float-onnx", "fortify-int8", "naive-int8"):
        r = rows[name]
        r["x_smaller"] = base["bytes"] / r["bytes"]
        for clock in ("lat", "cpu"):
            for b in ("b1", "b256"):
                key = f"{clock}_{b}_ms"
                r[f"{clock}_x_{b}"] = base[key] / r[key]
                r[f"{clock}_x_{b}_vs_float_onnx"] = rows["float-onnx"][key] / r[key]
    meas = [Measurement(name=k, bytes=v["bytes"], robust_acc=v["robust"]["all"]) for k, v in rows.items()
            if "robust" in v and k.endswith(("int8", "float"))]
    plot_pareto(meas, out / "pareto_a.png", title=f"{args.model}, linf {args.eps}: size vs robust accuracy")
    return {"base": base_desc, "steps": {"robust": robust_steps, "naive": naive_steps}, "rows": rows,
            "n_clean": int(x.shape[0]), "n_robust": n, "reports": {"robust": robust.reports, "naive": naive.reports},
            "table": table_a(rows, n, int(x.shape[0]))}


def table_a(rows: dict[str, dict], n: int, n_clean: int) -> str:
    """Markdown tables of part (a): size/latency and accuracy per attack."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    out = ["| artefact | bytes | x smaller | wall b1 ms | wall b256 ms | CPU b1 ms | CPU b256 ms | "
           "x faster b1 wall / CPU | x faster b256 wall / CPU | b256 vs float ONNX wall / CPU |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("float", "float-onnx", "fortify-int8", "naive-int8"):
        r = rows[name]
        ratio = (lambda k: f"{r.get('lat_' + k, 1.0):.2f} / {r.get('cpu_' + k, 1.0):.2f}")  # noqa: E731
        out.append(f"| {name} | {r['bytes']:,} | {r.get('x_smaller', 1.0):.1f} | {r['lat_b1_ms']:.3f} | "
                   f"{r['lat_b256_ms']:.2f} | {r['cpu_b1_ms']:.3f} | {r['cpu_b256_ms']:.2f} | {ratio('x_b1')} | "
                   f"{ratio('x_b256')} | {ratio('x_b256_vs_float_onnx')} |")
    out += ["", f"clean on {n_clean:,} test images; robust on the first {n:,} (s.e. of a robust figure ~"
                f"{100 * rows['float']['robust_se']:.1f} pp; of a paired difference in the last column)", "",
            "| model | clean | fast (APGD-CE+T) | Square | transfer PGD | transfer APGD | robust (all) | "
            "clean loss | robust loss |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ("float", "fortify-twin", "fortify-int8", "naive-twin", "naive-int8"):
        r, rb = rows[name], rows[name]["robust"]
        loss = (f"{r['clean_loss_pp']:+.2f} pp | {r['robust_loss_pp']:+.1f} ± {r['robust_loss_se_pp']:.1f} pp"
                if "robust_loss_pp" in r else "- | -")
        out.append(f"| {name} | {pct(r['clean'])} | {pct(rb.get('fast'))} | {pct(rb.get('square'))} | "
                   f"{pct(rb.get('transfer_pgd'))} | {pct(rb.get('transfer_fast'))} | **{pct(rb['all'])}** | {loss} |")
    return "\n".join(out)


def part_b(args: argparse.Namespace, train: tuple, test: tuple, out: Path) -> dict:
    spec = data.info("mnist-5k")
    torch.manual_seed(args.seed)
    net = models.Normalized(models.create("mlp"), spec.mean, spec.std)
    finetune(net, train, keep_sparsity=False, config={"epochs": args.mlp_epochs, "lr": 0.05, "schedule": "cosine",
                                                      "seed": args.seed})
    base = accuracy(net, test[0], test[1])
    dense = save_compressed(net, out / "lenet300_dense.safetensors", encoding="dense").stat().st_size
    models.save(net, out / "lenet300_fortify.safetensors")
    t0 = time.time()
    # Han et al.'s LeNet-300-100 pruning rates (8% / 9% / 26% of the weights kept); 4-bit codebook for
    # the 784x300 layer, 5-bit for the others
    dc = create("deep_compression", sparsity={1: 0.92, 3: 0.91, 5: 0.74}, bits={1: 4, 3: 5, 5: 5},
                prune_rounds=args.prune_rounds,
                prune_epochs=args.dc_epochs, share_epochs=max(1, args.dc_epochs // 3),
                config={"lr": 0.02, "schedule": "cosine", "seed": args.seed})(net, train[0][:8], data=train)
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
    p.add_argument("--lowrank", type=int, default=0, help="rank of a truncated-SVD factorisation (0: none)")
    p.add_argument("--lowrank-layers", default="5", help="Sequential indices factorised (small-cnn: 5 = fc1)")
    p.add_argument("--base", default="", help="robust model file: loaded if present, else trained (robust-mnist recipe)")
    p.add_argument("--base-epochs", type=int, default=6, help="epochs of the robust-mnist recipe for a new --base")
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--ft-task", default="pgd_at", choices=["pgd_at", "trades"])
    p.add_argument("--trades-beta", type=float, default=6.0)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--ft-optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--qat-epochs", type=int, default=1, help="0: int8 static PTQ after the fine-tuning")
    p.add_argument("--qat-lr", type=float, default=0.002)
    p.add_argument("--calibration", type=int, default=512, help="calibration images of the int8 static step")
    p.add_argument("--keep-float", default="0", help="weight layers left in float32 in both int8 models "
                                                      "(positions, comma-separated; '' = all int8)")
    p.add_argument("--mlp-epochs", type=int, default=10)
    p.add_argument("--dc-epochs", type=int, default=24, help="(b): pruning retraining epochs (weight sharing: a third)")
    p.add_argument("--test-limit-b", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="seed of (a)'s fine-tuning and of (b)'s training and compression")
    p.add_argument("--prune-rounds", type=int, default=4, help="(b): iterative pruning rounds (cubic schedule)")
    p.add_argument("--n-robust", type=int, default=200)
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="benchmarks/.cache/bench-compress", help="results folder (git-ignored)")
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
        print(result["a"]["base"])
        print(result["a"]["table"])
    if "b" in args.parts:
        result["b"] = part_b(args, train, data.load(args.dataset, "test", limit=args.test_limit_b), out)
        b = result["b"]
        print(f"(b) LeNet-300-100: dense {b['dense_bytes']:,} B -> {b['dc_bytes']:,} B = {b['ratio']:.1f}x; "
              f"accuracy {b['acc_dense']:.4f} -> {b['acc_dc']:.4f} ({b['loss_pp']:+.2f} pp loss)")
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
