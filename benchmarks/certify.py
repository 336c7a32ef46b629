"""Certification benchmark (run by hand; never part of the test suite).

fortify's IBP / CROWN against auto_LiRPA 0.3 (Xu et al. 2020, the reference implementation of
CROWN) on ``small-cnn`` and ``madry-cnn``: images/s, peak memory and bound tightness (the lower
bound of the margin ``z_y - z_j`` for all ``j != y``; larger is tighter; both are sound, so equal
bounds mean equal relaxations). Speed is reported as wall time and as the child's CPU time
(``time.process_time``; with one thread this is robust to other jobs sharing the machine, wall time
is not). Every (method, model) run is a fresh child process (spawn) so that
its peak RSS (``ru_maxrss``) is its own; the child gets an address-space cap (``--cap-gb``) so a
method that would exhaust the machine fails with MemoryError instead. Runs are interleaved per
repetition; medians are reported.

auto_LiRPA 0.3 does not import on torch 2.13 / numpy 2 as released; :func:`patch_auto_lirpa` applies
four in-memory shims (no file is edited): ``numpy.lib.arraysetops.isin``, a stub ``appdirs``
module, ``torch.onnx.symbolic_helper._set_opset_version`` and ``torch._C.Node.__getitem__``.
Install it with ``.venv/bin/pip install --no-deps auto_LiRPA``; without it only fortify runs.

    .venv/bin/python benchmarks/certify.py --n 4 --eps 0.005 --threads 1
    .venv/bin/python benchmarks/certify.py --models small-cnn --n 32 --methods fortify-crown lirpa-crown

Models: the registered architectures with a fixed seed (random weights) on MNIST test images
(``mnist-5k`` bundled split) or uniform noise when no dataset is installed; ``--checkpoint NAME=PATH``
loads trained weights (fortify safetensors) instead. ``base-crown`` runs an earlier fortify (its
``src/`` given by ``--base-src``, e.g. ``git archive 89372a9 src/fortify | tar -x -C /tmp/base``) in
the same interleaved loop, for before/after tables; ``min(lb - base-crown) >= 0`` (up to float
rounding) shows that a change did not loosen any bound.

Measured 2026-11-21 on this 2-core x86_64 machine, shared with other jobs (load 2-8), torch 2.13
CPU, one thread, mnist-5k test images. CPU seconds per batch, median over interleaved repetitions
(5 for random small-cnn, 3 otherwise); "before" = commit 89372a9 (``base-crown``), "after" = this
version. Under load the CPU time of the same run varies by up to ~2x between repetitions (cache and
memory-bandwidth contention), so single ratios carry roughly +-20%.

| model (n), weights, linf eps | before CPU s | after CPU s | auto_LiRPA CPU s | after vs LiRPA | peak RSS MiB after / LiRPA | bounds (after) |
|---|---|---|---|---|---|---|
| small-cnn (32), random, 0.005 | 0.73 | 0.72 | 1.45 | 2.0x | 631 / 815 | = LiRPA (2.6e-8), = before (6e-9) |
| small-cnn (32), IBP-trained 15 ep, 0.3 | 0.37 | 0.16 | 0.75 | 4.7x | 428 / 714 | >= LiRPA on every image (+0.23 .. +25.4), = before |
| small-cnn (32), IBP-trained 30 ep, 0.3 | 0.35 | 0.13 | 0.64 | 4.9x | 414 / 730 | >= LiRPA on every image (+0.18 .. +40.8), = before (5e-7) |
| madry-cnn (4), random, 0.005 | 14.6 | 8.2 | 34.4 | 4.2x | 1353 / 5051 | >= LiRPA on every image (+0.42 .. +0.51), = before (6e-8) |

(IBP-trained = ``benchmarks/certified_training.py --method ibp --epochs 15 | 30 --save ...``, 93.3% /
95.2% clean.) Earlier single-configuration figures (before): madry-cnn (16) fortify CROWN 66.9 CPU s at 1911 MiB under a 2 GiB
budget, while auto_LiRPA CROWN fails under a 10 GB cap (cannot allocate 2.25 GB more).

Changes behind "after": intermediate bounds of a Linear layer propagate each sample's own unstable
rows (padded to the largest count) instead of the union over the batch; per-sample windows are cut
once by ``unfold`` and row-gathered; the windowed MaxPool step scatters with window-local offsets;
a ReLU followed by a non-overlapping MaxPool is applied at the pooled resolution (only ``j*``
carries a coefficient); the dense ReLU step uses a whole-tensor form when many columns are
unstable. All are exact rewrites (tests/certify/test_certify_fastpaths.py checks them against the
reference paths). On IBP-trained weights fortify is much tighter than auto_LiRPA, most likely
because fortify intersects its CROWN intermediate bounds with IBP (IBP is the tighter bound on
IBP-trained nets; not checked in auto_LiRPA's source); on madry-cnn also because fortify refines
the active neurons of undecided MaxPool windows.

The issue's target (>= 5x auto_LiRPA at equal-or-tighter bounds) is NOT met: 4.7-4.9x on the
IBP-trained small-cnn (2.3-2.7x faster than before), 4.2x on random madry-cnn (1.8x faster than
before), 2.0x on random small-cnn (unchanged: there every fc neuron of every sample is unstable and
the net has no MaxPool, so none of the rewrites removes work). What remains on madry-cnn is mostly
the dense backward pass of the 1024 fc rows (both signs) through both conv layers (transposed
convolutions and the 28x28 MaxPool scatter, ~60% of the time with random weights, where every fc
neuron is unstable).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
import types
from typing import Any

import torch

METHODS = ("fortify-ibp", "fortify-crown", "lirpa-ibp", "lirpa-crown", "base-crown")


def patch_auto_lirpa() -> Any:
    """Import auto_LiRPA 0.3 on torch 2.13 / numpy 2 with in-memory shims; returns the module."""
    import numpy as np

    if "numpy.lib.arraysetops" not in sys.modules:
        m = types.ModuleType("numpy.lib.arraysetops")
        m.isin = np.isin  # type: ignore[attr-defined]
        sys.modules["numpy.lib.arraysetops"] = m
    try:
        import appdirs  # noqa: F401
    except ImportError:
        a = types.ModuleType("appdirs")
        a.user_data_dir = lambda name, *args, **kw: f"{tempfile.gettempdir()}/{name}"  # type: ignore[attr-defined]
        sys.modules["appdirs"] = a
    import torch.onnx.symbolic_helper as sh

    if not hasattr(sh, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(v: int) -> None:
            GLOBALS.export_onnx_opset_version = v

        sh._set_opset_version = _set_opset_version  # type: ignore[attr-defined]
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)  # type: ignore[attr-defined]
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import auto_LiRPA

    return auto_LiRPA


def load_problem(model_name: str, n: int, seed: int, checkpoint: str | None) -> tuple[torch.nn.Module, torch.Tensor]:
    from fortify import models as fmodels

    torch.manual_seed(seed)
    if checkpoint:
        net = fmodels.load(checkpoint)
    else:
        net = fmodels.create(model_name, in_shape=(1, 28, 28), num_classes=10)
    net.eval()
    try:
        from fortify import data as fdata

        x, _ = fdata.load("mnist-5k", split="test")
        x = x[:n].float()
    except Exception:  # noqa: BLE001 - any missing dataset: fall back to noise, reported
        x = torch.rand(n, 1, 28, 28)
    return net, x


def train_madry_cnn(path: str, epochs: int = 2, eps: float = 0.1, seed: int = 0) -> None:
    """The trained madry-cnn of the benchmark: PGD adversarial training (Madry et al. 2018; fortify's
    ``pgd_at`` task, linf ``eps``, 5 steps) on the bundled mnist-5k train split, Adam 1e-3, batch 50,
    one thread; saved as fortify safetensors (2 epochs: ~45 CPU s, 96.2% clean on mnist-5k test)."""
    from fortify import data as fdata
    from fortify import models as fmodels
    from fortify.train.tasks import create as create_task

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x, y = fdata.load("mnist-5k", split="train")
    x = x.float()
    net = fmodels.create("madry-cnn", in_shape=(1, 28, 28), num_classes=10)
    task = create_task("pgd_at", threat=f"linf:{eps}", steps=5, monitor=False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 50):
            idx = perm[s:s + 50]
            out = task(net, x[idx], y[idx])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
    net.eval()
    fmodels.save(net, path, meta={"dataset": "mnist-5k", "task": "pgd_at", "eps": eps, "epochs": epochs})


def plain_sequential(net: torch.nn.Module) -> torch.nn.Module:
    """auto_LiRPA cannot trace fortify's ``Normalized`` wrapper (AssertionError in its parser): the
    same function as ``Sequential(Conv2d 1x1 per-channel (x - mean) / std, *inner)`` for it."""
    if not all(hasattr(net, k) for k in ("inner", "mean", "std")):
        return net
    mean, std = net.mean.reshape(-1), net.std.reshape(-1)
    c = mean.numel()
    conv = torch.nn.Conv2d(c, c, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.diag(1.0 / std).reshape(c, c, 1, 1))
        conv.bias.copy_(-mean / std)
    return torch.nn.Sequential(conv, *net.inner).eval()


def tightness(low: list[float], ref: list[float], tol: float = 1e-5) -> str:
    """``max / mean (low - ref)`` and how many images are tighter / equal / looser than ``ref``
    (equal: within ``tol * (1 + |ref|)``, float rounding of two implementations)."""
    d = [a - b for a, b in zip(low, ref)]
    eq = [abs(x) <= tol * (1 + abs(b)) for x, b in zip(d, ref)]
    tighter = sum(1 for x, e in zip(d, eq) if x > 0 and not e)
    looser = sum(1 for x, e in zip(d, eq) if x < 0 and not e)
    return (f"{max(d):+.2e} / {sum(d) / len(d):+.2e} / min {min(d):+.2e} | "
            f"{tighter} / {sum(eq)} / {looser}")


def _child(method: str, model_name: str, n: int, eps: float, seed: int, checkpoint: str | None, threads: int,
           cap_gb: float, budget_gb: float, base_src: str, q: Any) -> None:
    """Run one method in a fresh process; report (seconds, lower bounds, peak RSS MiB, error).
    ``base-*`` methods import fortify from ``base_src`` (put first on ``sys.path`` before any import)."""
    if method.startswith("base-"):
        sys.path.insert(0, base_src)
    torch.set_num_threads(threads)
    if cap_gb > 0:
        cap = int(cap_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        net, x = load_problem(model_name, n, seed, checkpoint)
        with torch.no_grad():
            y = net(x).argmax(1)
        from fortify import ThreatModel
        import fortify
        from fortify.certify import CERTIFIERS
        from fortify.certify.bounds import margin_spec

        if method.startswith("base-") and not fortify.__file__.startswith(base_src):
            raise RuntimeError(f"base-* imported fortify from {fortify.__file__}, not from {base_src}")

        threat = ThreatModel("linf", eps)
        if method.startswith("lirpa"):
            al = patch_auto_lirpa()
            net = plain_sequential(net)
            bm = al.BoundedModule(net, torch.zeros(1, 1, 28, 28), device="cpu")
            t0, c0 = time.perf_counter(), time.process_time()
            ptb = al.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1),
                                        x_U=(x + eps).clamp(0, 1))
            with torch.no_grad():
                lb, _ = bm.compute_bounds(x=(al.BoundedTensor(x, ptb),), C=margin_spec(y, 10),
                                          method="IBP" if method.endswith("ibp") else "CROWN")
            low = lb.amin(dim=1)
        else:  # fortify-* (this tree) or base-* (the tree given by --base-src, imported via PYTHONPATH)
            cert = CERTIFIERS.get(method.split("-", 1)[1])(memory_budget=int(budget_gb * (1 << 30)),
                                                           intersect_ibp=False)
            t0, c0 = time.perf_counter(), time.process_time()
            low = cert(net, x, y, threat).lower_margin
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        q.put((secs, low.detach().tolist(), rss, None, cpu))
    except MemoryError:
        q.put((float("nan"), None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               f"MemoryError under a {cap_gb:g} GB address-space cap", float("nan")))
    except Exception as e:  # noqa: BLE001 - report any failure of a peer in the table
        q.put((float("nan"), None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               f"{type(e).__name__}: {str(e)[:160]}", float("nan")))


def run_one(*args: Any, base_src: str = "") -> tuple[float, list[float] | None, float, str | None, float]:
    """Run :func:`_child` in a fresh spawned process; ``base-*`` methods import fortify from ``base_src``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=args + (base_src, q))
    p.start()
    p.join()
    if not q.empty():
        return q.get()
    return float("nan"), None, float("nan"), f"child exited with code {p.exitcode}", float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["small-cnn", "madry-cnn"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--n", type=int, default=4, help="images per run")
    ap.add_argument("--eps", type=float, default=0.005, help="linf radius")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap-gb", type=float, default=16.0, help="address-space cap of each child (0: none)")
    ap.add_argument("--budget-gb", type=float, default=2.0, help="fortify CROWN memory_budget")
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH trained weights")
    ap.add_argument("--base-src", default="", help="src/ folder of an earlier fortify for base-crown "
                    "(e.g. git archive <commit> src/fortify | tar -x -C /tmp/base)")
    ap.add_argument("--train-madry", default="", metavar="PATH",
                    help="train the benchmark's PGD madry-cnn (mnist-5k, 2 epochs) to PATH and exit")
    args = ap.parse_args()
    if args.train_madry:
        train_madry_cnn(args.train_madry)
        return
    ckpt = dict(c.split("=", 1) for c in args.checkpoint)
    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {args.threads}, n={args.n}, linf eps={args.eps}, reps={args.reps}")
    for model_name in args.models:
        res: dict[str, list[tuple]] = {m: [] for m in args.methods}
        for _ in range(args.reps):
            for m in args.methods:
                res[m].append(run_one(m, model_name, args.n, args.eps, args.seed, ckpt.get(model_name),
                                      args.threads, args.cap_gb, args.budget_gb, base_src=args.base_src))
        ref = next((r[0][1] for m, r in res.items() if m == "lirpa-crown" and r[0][1] is not None), None)
        base = next((r[0][1] for m, r in res.items() if m == "base-crown" and r[0][1] is not None), None)
        print(f"\n## {model_name}")
        print("| method | wall s | CPU s | CPU s/image | images/CPU s | peak RSS MiB | mean lower margin | certified "
              "| max / mean / min (lb - lirpa-crown) | tighter / equal / looser | min(lb - base-crown) | error |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for m, runs in res.items():
            secs = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[4] for r in runs)
            rss = max(r[2] for r in runs)
            low = runs[0][1]
            err = runs[0][3] or ""
            mean = f"{sum(low) / len(low):.4f}" if low else "-"
            diff = tightness(low, ref) if low and ref else "- | -"
            gain = f"{min(a - b for a, b in zip(low, base)):.2e}" if low and base else "-"
            ips = f"{args.n / cpu:.3f}" if cpu == cpu and cpu > 0 else "-"
            spi = f"{cpu / args.n:.4f}" if cpu == cpu else "-"
            cert = f"{sum(v > 0 for v in low)}/{len(low)}" if low else "-"
            cpus = " ".join(f"{r[4]:.2f}" for r in runs)
            print(f"| {m} | {secs:.2f} | {cpu:.2f} ({cpus}) | {spi} | {ips} | {rss:.0f} | {mean} | {cert} | {diff} "
                  f"| {gain} | {err} |")


if __name__ == "__main__":
    main()
