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

Measured 2026-11-21 (10:35-11:00 UTC) on this 2-core x86_64 machine (two certified-training runs kept both
cores busy), torch 2.13 CPU, one thread, mnist-5k test images, fortify at commit e0418e5 (madry-cnn rows: 597ed86,
identical bounds), ``base-crown`` = 38b50a0 (the previous round), auto_LiRPA 0.3. CPU seconds per image
(``time.process_time`` of the child), median over interleaved repetitions (3 for small-cnn, 2 for madry-cnn);
``intersect_ibp=False`` (pure CROWN margins; IBP is not maxed in at the end). ``crown`` = fortify's default
(CROWN-Ada intermediate bounds + 3 steps of final-pass slope optimisation on the 2 lowest margin rows),
``ada`` = ``fortify-crown-ada`` (plain CROWN-Ada; the same bounds as ``base-crown`` on every image), ``alpha`` =
``fortify-alpha-crown`` (20 steps, all rows). Tightness: fortify's lower margin minus auto_LiRPA's per image
(max / mean / min; tighter / equal within 1e-5 relative / looser)::

    B="--methods fortify-crown fortify-crown-ada fortify-alpha-crown lirpa-crown base-crown --base-src /tmp/base/src"
    .venv/bin/python benchmarks/certify.py --models small-cnn --n 32 --eps 0.005 --reps 3 $B
    .venv/bin/python benchmarks/certify.py --models small-cnn --n 32 --eps 0.1 --reps 3 $B \
        --checkpoint small-cnn=benchmarks/.cache/mnist-robust-small-cnn-e6.safetensors
    .venv/bin/python benchmarks/certify.py --models small-cnn --n 32 --eps 0.15 --reps 3 $B \
        --checkpoint small-cnn=benchmarks/.cache/mnist5k-ibp-small-cnn-eps0.2-e20.safetensors
    .venv/bin/python benchmarks/certify.py --models madry-cnn --n 4 --eps 0.005 --reps 2 $B
    .venv/bin/python benchmarks/certify.py --models madry-cnn --n 8 --eps 0.02 --reps 2 $B \
        --checkpoint madry-cnn=benchmarks/.cache/mnist5k-pgd-madry-cnn-e2.safetensors

| model, weights (images, eps) | crown | ada | alpha | LiRPA | ratio | RSS crown / LiRPA | certified crown/ada/LiRPA | crown - LiRPA | ada - LiRPA min; t/e/l |
|---|---|---|---|---|---|---|---|---|---|
| small-cnn random (32, 0.005) | 0.0117 | 0.0108 | 0.0354 | 0.0620 | 5.3x | 382 / 817 MiB | 32/32/32 | +1.3e-4 / +2.4e-5 / -4e-9; 20/12/0 | -1e-8; 0/32/0 |
| small-cnn Fast-AT (32, 0.1) | 0.0138 | 0.0127 | 0.0373 | 0.1139 | 8.3x | 390 / 1041 MiB | 25/24/24 | +1.39 / +0.25 / +0.065; 32/0/0 | -0.061; 17/14/1 |
| small-cnn IBP mnist-5k (32, 0.15) | 0.0056 | 0.0046 | 0.0306 | 0.0359 | 6.4x | 403 / 746 MiB | 25/25/25 | +2.01 / +0.25 / +0.0115; 32/0/0 | -0.0067; 31/0/1 |
| madry-cnn random (4, 0.005) | 0.789 | 0.804 | 0.977 | 10.84 | 13.7x | 422 / 5051 MiB | 0/0/0 | +0.51 / +0.47 / +0.42; 4/0/0 | +0.42; 4/0/0 |
| madry-cnn PGD mnist-5k (8, 0.02) | 0.404 | 0.370 | 0.546 | 6.45 | 16.0x | 435 / 5976 MiB | 8/7/6 | +0.34 / +0.25 / +0.18; 8/0/0 | +0.17; 8/0/0 |

No image is looser than auto_LiRPA with the default ``crown``. Plain CROWN-Ada was looser on one image of each
trained small-cnn: fortify intersects each CROWN intermediate bound with IBP, and CROWN-Ada's lower slope
``1[u > -l]`` is chosen from those (tighter) bounds, which is not monotone: on the worst image of the Fast-AT row
fortify's conv-layer bounds are at least as tight as auto_LiRPA's on every neuron unstable for either (to 2e-6),
but the fc-layer bounds computed through them are looser on some neurons (up to 0.05) and tighter on others. The
final-pass slope optimisation removes it (1 step: still -0.061; 2 steps: -7e-7; 3 steps: +0.065).

Previous round (09:35-09:50 UTC, commit e48ce6d, CROWN-Ada only): fortify 0.0094 / 0.0137 / 0.0039 / 0.858 /
0.379 s/img against auto_LiRPA 0.0641 / 0.1016 / 0.0285 / 10.85 / 6.77 on the same five rows.

What changed in the previous round (e48ce6d; exact, identical bounds, tests/certify/test_certify_symmetric.py): the row chunks of a
refinement through whole maps (Linear rows, dense path) are capped at 16 MiB of temporaries instead of 64 MiB,
growing up to 64 MiB only while a chunk holds < 256 (sample, row) pairs (few-image madry-cnn batches keep their
chunks); windowed conv rows keep 64 MiB (their temporaries are windows; 16 MiB made small-cnn's conv2
refinement slower, 0.14 s vs 0.08 s in one measurement). On the
random small-cnn the first certification call page-faulted 43k times (fresh 16 MiB tensors: glibc returns the
freed top of the heap to the OS and the next chunk faults it back in) vs 6.7k now.

Tried and left out (measured, reverted): the symmetric / antisymmetric split of the ReLU step for the fc1 rows of
the random small-cnn (propagate ``C = a (sl + su) / 2`` through conv2^T once for both signs and
``D = |a| (su - sl) / 2``, non-zero on unstable relu2 columns only, separately; exact to 4e-8). Per sample only
66 of 1568 relu2 neurons are unstable, but their union over the 32-image batch is 743 (47%), so ``D`` is dense
for a transposed convolution; as a per-sample gathered matmul against the rows of conv2^T (79 columns padded)
it costs 55% of the saved half (5.8 ms vs 10.5 ms per 20 neurons), and with the extra C / D temporaries the
chunk was slower (median 0.10 s vs 0.079 s). conv2^T already runs at ~35 GMAC/s (near this core's peak), so
window-local sparse forms (materialise + index_add + fold) cost more memory traffic than they save. Also
measured without effect (within noise): bmm instead of a broadcast matmul in the first layer's column form, an
in-place ``addcmul_`` in the ReLU step, 512 MiB windowed chunks (slower).

Larger batches: fortify madry-cnn random (16) 0.877 s/img at 507 MiB, PGD-trained (32, eps 0.02, 22/32)
0.375 s/img at 652 MiB (fortify is fastest at small batches: its row chunks are sized per batch);
auto_LiRPA madry-cnn PGD-trained (16) fails under a 10 GB address-space cap (peak 9.5 GB; RuntimeError
allocating), so its largest feasible batch tried is 8. The Fast-AT small-cnn carries fortify's Normalized
wrapper, which auto_LiRPA cannot trace: it gets the same function as a plain Sequential (1x1 conv).


Changes of the previous session (a17624d -> 14fab1c; each an exact rewrite, tested against the reference path in
tests/certify/test_certify_pooled.py and test_certify_fastpaths.py): the ReLU / MaxPool relaxations and
the unfolded relaxation windows are computed once per refinement and shared by all row chunks (they were
recomputed for every chunk); row chunks are capped at 64 MiB of temporaries (fresh large allocations are
page-faulted on first touch: up to 10x the arithmetic's cost on this machine); a Conv2d -> ReLU ->
MaxPool2d is one backward step at the pooled resolution when the conv's fan-in is <= 64 (pooled.py:
per-window effective kernels, batched matmul + fold; 4x fewer multiply-adds than scatter + transposed
conv); the first layer is not refined (IBP is exact there; auto_LiRPA does the same); transposed
convolutions run on channels-last input; the concretisation and ReLU constant are batched dot
products; a Linear layer's rows are refined as (sample, neuron) pairs when padding to the largest
per-sample count would waste > 30%.

The issue's target (>= 5x auto_LiRPA at equal-or-tighter bounds), in this run: met on every row (5.3x on the
random small-cnn, 8.3x / 6.4x on the trained small-cnns, 13.7x / 16.0x on madry-cnn), no image looser, tighter
on every image of the trained and madry rows. Where the random small-cnn's CROWN-Ada time goes (previous round,
0.30 s per 32 images): ~75% is the fc1 refinement (100 rows x 2 signs per sample; per-sample counts from IBP are
100 of 100, while after CROWN only 12 of 100 stay unstable), of which conv2^T (2.6 GMAC, near this core's peak) is
about a third and the memory-bound ReLU1 step, conv1's column form + fold and the concretisation the rest; ~25%
is the windowed conv2 refinement; the slope optimisation adds ~8%. Times under load vary by up to ~2x between
repetitions and auto_LiRPA's more than fortify's (its small-cnn random median was 1.45, 2.13 and 2.05 s per batch
in three runs of the same command one round earlier), so ratios against it carry roughly +-20-40%.
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

METHODS = ("fortify-ibp", "fortify-crown", "fortify-crown-ada", "fortify-alpha-crown", "lirpa-ibp", "lirpa-crown",
           "base-crown")


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
            name, opts = method.split("-", 1)[1], {}
            if name == "crown-ada":  # plain CROWN-Ada: no final-pass slope optimisation
                name, opts = "crown", {"alpha_steps": 0}
            cert = CERTIFIERS.get(name)(memory_budget=int(budget_gb * (1 << 30)), intersect_ibp=False, **opts)
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
