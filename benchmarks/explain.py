"""Explain benchmark (run by hand; never part of the test suite): fortify vs Captum, time per image.

Every fortify attribution with a Captum counterpart runs against it with equal settings (the
pairing of tests/explain/test_vs_captum.py): saliency (``Saliency``), gradient-x-input
(``InputXGradient``), integrated gradients (same steps, rule and rows per batch), SmoothGrad
(``NoiseTunnel(Saliency)``, same samples and std, same rows per batch), Grad-CAM (``LayerGradCam``
at the same layer, upsampled and repeated over channels as fortify does), occlusion (same window,
stride and baseline; Captum's ``perturbations_per_eval`` set so a forward has as many rows as
fortify's ``batch_size``) and DeepLIFT (rescale rule); and the metrics infidelity and
max-sensitivity against ``captum.metrics`` on the same perturbations (fortify's seeded noise fed to
Captum's ``perturb_func``). FullGrad, VarGrad and SmoothGrad-squared have no Captum class: their
time only. Quantus (GPL: benchmark-only, ``pip install --no-deps quantus`` plus pandas, cachetools and
opencv-python-headless; never imported by ``src/``), when importable: pixel flipping (``deletion``,
equal curves) and MPRT (``randomisation``; see :func:`quantus_pairs`).

Timing: :func:`fortify.timing.interleave` with a fixed number of rounds per pair (Captum and
fortify alternating, the order rotated each round, one call per sample after one warm-up call),
median process CPU time (``time.process_time``) per call divided by ``n``; the ratio is
Captum / fortify (``> 1``: fortify is faster) with the paired bootstrap 95% interval over rounds.
Every pair's outputs are compared once (max abs diff), so the timing compares equal work; SmoothGrad
is checked against Captum's ``Saliency`` on fortify's noise (``NoiseTunnel`` draws its own).

Models: small-cnn and madry-cnn with random weights (``torch.manual_seed(0)``; the attributions' speed
does not depend on training), float32, eval mode; images: the first ``n`` mnist-5k test images, target =
label. Pixel flipping's does: fortify runs each distinct perturbed input once, and how many steps only
flip baseline-valued pixels depends on the map (``--flip-maps``) and the model (``--weights standard``:
the trained small-cnn of ``benchmarks/explain_table.py``).

    .venv/bin/python benchmarks/explain.py --n 64 --rounds 5 --threads 1
    .venv/bin/python benchmarks/explain.py --models small-cnn --methods saliency,occlusion
    nice -n 10 .venv/bin/python benchmarks/explain.py --n 64 --rounds 5 --threads 1 --captum 0 --quantus-steps 28,1
    nice -n 10 .venv/bin/python benchmarks/explain.py --captum 0 --models small-cnn --weights standard \
        --flip-maps integrated-gradients --ig-steps 16
"""
from __future__ import annotations

import argparse
import platform
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from fortify import data as fdata
from fortify import models as fmodels
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from fortify.explain.attributions.smoothgrad import smoothgrad_noise
from fortify.explain.metrics.infidelity import infidelity_noise
from fortify.explain.metrics.sensitivity import sensitivity_noise
from fortify.timing import CPU, fixed_rounds, interleave, TimingPolicy

Fn = Callable[[], torch.Tensor]
METHODS = ("saliency", "gradient-x-input", "integrated-gradients", "smoothgrad", "gradcam", "occlusion", "deeplift",
           "infidelity", "max-sensitivity", "fullgrad", "vargrad", "smoothgrad-sq")


def last_conv(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The last Conv2d of a Sequential (fortify's gradcam default layer on these models)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]


def pairs(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
          a: argparse.Namespace) -> dict[str, tuple[Fn, Fn | None, Fn | None]]:
    """``{method: (fortify, captum or None, reference for the diff check or None)}``."""
    from captum import attr as ca
    from captum import metrics as cm

    n, bs = len(x), a.batch_size
    out: dict[str, tuple[Fn, Fn | None, Fn | None]] = {}
    sal = ATTRIBUTIONS.create("saliency", batch_size=bs)
    out["saliency"] = (lambda: sal(model, x, t), lambda: ca.Saliency(model).attribute(x, target=t), None)
    gxi = ATTRIBUTIONS.create("gradient-x-input", batch_size=bs)
    out["gradient-x-input"] = (lambda: gxi(model, x, t), lambda: ca.InputXGradient(model).attribute(x, target=t), None)
    ig = ATTRIBUTIONS.create("integrated-gradients", steps=a.ig_steps, method="gausslegendre", batch_size=bs)
    out["integrated-gradients"] = (
        lambda: ig(model, x, t),
        lambda: ca.IntegratedGradients(model).attribute(x, target=t, n_steps=a.ig_steps, method="gausslegendre",
                                                        internal_batch_size=bs), None)
    sg = ATTRIBUTIONS.create("smoothgrad", samples=a.sg_samples, noise=a.sg_noise, seed=0, batch_size=bs)
    nt_bs = max(1, bs // n)  # NoiseTunnel batches whole sample sets: nt_bs * n rows, as fortify's bs rows

    def sg_ref() -> torch.Tensor:  # Captum's Saliency on fortify's noise (NoiseTunnel draws its own)
        eps = smoothgrad_noise(x, a.sg_samples, a.sg_noise, 0)
        s = ca.Saliency(model)
        return torch.stack([s.attribute(x + eps[k], target=t, abs=False) for k in range(a.sg_samples)]).mean(0)

    out["smoothgrad"] = (
        lambda: sg(model, x, t),
        lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(x, target=t, nt_type="smoothgrad",
                                                              nt_samples=a.sg_samples, stdevs=a.sg_noise,
                                                              nt_samples_batch_size=nt_bs, abs=False), sg_ref)
    name, layer = last_conv(model)
    gc = ATTRIBUTIONS.create("gradcam", layer=name, batch_size=bs)

    def gc_captum() -> torch.Tensor:
        lmap = ca.LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        return ca.LayerAttribution.interpolate(lmap, x.shape[2:], interpolate_mode="bilinear").expand_as(x)

    out["gradcam"] = (lambda: gc(model, x, t), gc_captum, None)
    occ = ATTRIBUTIONS.create("occlusion", window=a.occ_window, stride=a.occ_stride, baseline=0.0, batch_size=bs)
    w, s = a.occ_window, a.occ_stride
    out["occlusion"] = (
        lambda: occ(model, x, t),
        lambda: ca.Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], w, w), strides=(1, s, s),
                                              baselines=0.0, target=t, perturbations_per_eval=max(1, bs // n)), None)
    dl = ATTRIBUTIONS.create("deeplift", baseline=0.0, batch_size=bs)
    out["deeplift"] = (lambda: dl(model, x, t), lambda: ca.DeepLift(model).attribute(x, baselines=0.0, target=t), None)

    # metrics: Captum evaluates all n * samples rows in one batch (its default), so fortify does too
    ms = a.metric_samples
    attr = ATTRIBUTIONS.create("saliency", absolute=False)(model, x, t)
    infd = ATTRIBUTION_METRICS.create("infidelity", samples=ms, noise=0.1, seed=0, batch_size=n * ms)
    pert_i = infidelity_noise(x, ms, 0.1, 0).reshape((-1,) + tuple(x.shape[1:]))
    out["infidelity"] = (
        lambda: infd(model, x, attr, t).values,
        lambda: cm.infidelity(model, lambda inp: (pert_i, inp - pert_i), x, attr, target=t, n_perturb_samples=ms),
        None)
    sal_ms = ATTRIBUTIONS.create("saliency", batch_size=n * ms)
    sens = ATTRIBUTION_METRICS.create("max-sensitivity", attribution=sal_ms, radius=0.02, samples=ms, seed=0,
                                      batch_size=n * ms)
    pert_s = sensitivity_noise(x, ms, 0.02, 0).reshape((-1,) + tuple(x.shape[1:]))
    # Captum's sensitivity_max computes a(x) itself, so fortify's timing includes its saliency call
    out["max-sensitivity"] = (
        lambda: sens(model, x, sal_ms(model, x, t), t).values,
        lambda: cm.sensitivity_max(ca.Saliency(model).attribute, x, perturb_func=lambda inp: inp + pert_s,
                                   n_perturb_samples=ms, target=t), None)
    for only in ("fullgrad", "vargrad", "smoothgrad-sq"):
        kw: dict[str, Any] = {} if only == "fullgrad" else {"samples": a.sg_samples, "noise": a.sg_noise}
        m = ATTRIBUTIONS.create(only, batch_size=bs, **kw)
        out[only] = (partial(m, model, x, t), None, None)
    return out


def quantus_pairs(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                  a: argparse.Namespace) -> dict[str, tuple[Fn, Fn, bool, str]]:
    """``{metric: (fortify, Quantus, equal values expected, note)}``: pixel flipping on ``--flip-maps`` maps
    (|saliency| by default)
    (Quantus ``PixelFlipping`` with each ``features_in_step`` of ``--quantus-steps`` -- 1 is its
    default, 784 steps per image -- black = 0 baseline, softmax, its default batch of 64 images per
    step (``--quantus-batch``); fortify's ``deletion`` with ``steps = d / features_in_step``, its curve
    without the unperturbed point) and MPRT (Quantus ``MPRT`` with its defaults: top-down, Spearman,
    Captum saliency, batch 64; per-layer scores averaged over the randomised layers here; fortify's
    ``randomisation`` with saliency: the same cascade with other random re-initialisations, so equal in
    distribution only)."""
    import numpy as np
    import quantus

    from fortify.explain.metrics._flipping import flip_plan

    d = int(x[0].numel())
    qbs = a.quantus_batch
    sal = ATTRIBUTIONS.create("saliency")
    attr = sal(model, x, t)  # MPRT's reference: the saliency map it recomputes on the randomised models
    xn, tn, an = x.numpy(), t.numpy(), attr.numpy()
    kw: dict[str, Any] = {"steps": a.ig_steps} if a.flip_maps == "integrated-gradients" else {}
    flip_attr = attr if a.flip_maps == "saliency" else ATTRIBUTIONS.create(a.flip_maps, **kw)(model, x, t)
    fan = flip_attr.numpy()
    out: dict[str, tuple[Fn, Fn, bool, str]] = {}
    for step in (int(v) for v in a.quantus_steps.split(",")):
        dele = ATTRIBUTION_METRICS.create("deletion", steps=d // step, baseline=0.0, batch_size=a.batch_size)
        pf = quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", disable_warnings=True)
        _, _, source, blank = flip_plan(x, flip_attr, steps=d // step, baseline=0.0, insert=False)
        todo = (source == torch.arange(d // step + 1)) & ~blank
        note = f"fortify runs {int(todo.sum()) + int(blank.any())} of {len(x) * (d // step + 1)} rows"

        def q_pf(pf: Any = pf) -> torch.Tensor:
            return torch.tensor(np.array(pf(model, xn, tn, a_batch=fan, device="cpu", batch_size=qbs)))

        def f_pf(dele: Any = dele) -> torch.Tensor:
            return dele(model, x, flip_attr, t).extra["curve"][:, 1:]

        out[f"pixel flipping, {step} feature(s)/step"] = (f_pf, q_pf, True, note)
    rnd = ATTRIBUTION_METRICS.create("randomisation", attribution="saliency", batch_size=a.batch_size)
    mprt = quantus.MPRT(disable_warnings=True)

    def q_mprt() -> torch.Tensor:
        res: Any = mprt(model, xn, tn, a_batch=an, device="cpu", batch_size=qbs,
                   explain_func=quantus.explain, explain_func_kwargs={"method": "Saliency"})
        # per-layer scores averaged here: Quantus 0.6's return_average_correlation also averages in the
        # "original" entry (it skips a key "orig" that does not exist), which pulls the mean towards 1
        layers = [np.asarray(v, dtype=np.float64) for k, v in res.items() if k != "original"]
        return torch.tensor(np.mean(layers, axis=0))

    out["MPRT (randomisation)"] = (lambda: rnd(model, x, attr, t).values, q_mprt, False, "")
    return out


def bench_quantus(label: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, a: argparse.Namespace) -> str:
    n = len(x)
    policy = fixed_rounds(TimingPolicy(warmup=1, min_sample_s=0.0, min_rounds=3), a.rounds)
    rows = ["| metric | fortify ms/image | Quantus ms/image | Quantus / fortify (95% CI) | values |", "|---|---|---|---|---|"]
    for name, (ours, theirs, equal, note) in quantus_pairs(model, x, t, a).items():
        o, q = ours().detach().double(), theirs().detach().double()
        vals = (f"max abs diff {float((o - q.reshape(o.shape)).abs().max()):.2g}" if equal
                else f"mean {float(o.mean()):.3f} vs {float(q.mean()):.3f}") + (f"; {note}" if note else "")
        run = interleave({"quantus": theirs, "fortify": ours}, policy)
        sp = run.speedup("quantus", "fortify", CPU)
        rows.append(f"| {name} | {ms(run.median('fortify', CPU) / n * 1e3)} | {ms(run.median('quantus', CPU) / n * 1e3)}"
                    f" | {sp.ratio:.1f} ({sp.ci_low:.1f}-{sp.ci_high:.1f}){' noisy' if sp.noisy else ''} | {vals} |")
        print(f"  [{label}] Quantus {name} done", flush=True)
    return "\n".join(rows)


def ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def bench(label: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, a: argparse.Namespace) -> str:
    n = len(x)
    policy = fixed_rounds(TimingPolicy(warmup=1, min_sample_s=0.0, min_rounds=3), a.rounds)
    rows = ["| method | fortify ms/image | Captum ms/image | Captum / fortify (95% CI) | max abs diff (max abs ref) |",
            "|---|---|---|---|---|"]
    for method, (ours, theirs, ref) in pairs(model, x, t, a).items():
        if method not in a.methods:
            continue
        if theirs is None:
            run = interleave({"fortify": ours}, policy)
            rows.append(f"| {method} | {ms(run.median('fortify', CPU) / n * 1e3)} | - | no Captum counterpart | - |")
        else:
            r = (ref or theirs)().detach()
            diff = float((ours().detach() - r).abs().max())
            run = interleave({"captum": theirs, "fortify": ours}, policy)
            sp = run.speedup("captum", "fortify", CPU)
            f_ms, c_ms = run.median("fortify", CPU) / n * 1e3, run.median("captum", CPU) / n * 1e3
            rows.append(f"| {method} | {ms(f_ms)} | {ms(c_ms)} | {sp.ratio:.2f} ({sp.ci_low:.2f}-{sp.ci_high:.2f})"
                        f"{' noisy' if sp.noisy else ''} | {diff:.2g} ({float(r.abs().max()):.2g}) |")
        print(f"  [{label}] {method} done", flush=True)
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="mnist-5k test images")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per pair (>= 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="small-cnn,madry-cnn")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch-size", type=int, default=256, help="rows per forward, both libraries")
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--sg-samples", type=int, default=16)
    p.add_argument("--sg-noise", type=float, default=0.15)
    p.add_argument("--occ-window", type=int, default=4)
    p.add_argument("--occ-stride", type=int, default=2)
    p.add_argument("--metric-samples", type=int, default=10)
    p.add_argument("--quantus", type=int, default=1, help="1: also time pixel flipping and MPRT vs Quantus")
    p.add_argument("--quantus-steps", default="28,1",
                   help="pixel flipping features per step, comma-separated (1: Quantus's default, 784 steps)")
    p.add_argument("--quantus-batch", type=int, default=64, help="Quantus batch_size (images; its default 64)")
    p.add_argument("--captum", type=int, default=1, help="0: skip the Captum table (Quantus only)")
    p.add_argument("--flip-maps", default="saliency", help="attribution ranked by pixel flipping (saliency, "
                   "integrated-gradients, ...); the number of distinct perturbed inputs fortify runs depends on it")
    p.add_argument("--weights", default="random", choices=("random", "standard", "robust"),
                   help="random (seed 0) or small-cnn trained by benchmarks/explain_table.py (its cache, 10 epochs)")
    a = p.parse_args()
    a.methods = set(a.methods.split(","))
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", module="captum")  # its hook / requires_grad notices
    warnings.filterwarnings("ignore", message=".*(hooks|requires_grad).*")
    import captum

    x, y = fdata.load("mnist-5k", split="test", limit=a.n)
    print(f"torch {torch.__version__}, captum {captum.__version__}, {platform.machine()}, {a.threads} thread(s); "
          f"n={len(x)} mnist-5k test images, {a.rounds} interleaved rounds, median CPU time per image")
    print(f"settings: batch {a.batch_size} rows, IG gausslegendre {a.ig_steps} steps, SmoothGrad {a.sg_samples} "
          f"samples std {a.sg_noise}, occlusion window {a.occ_window} stride {a.occ_stride} baseline 0, "
          f"DeepLIFT baseline 0, infidelity/max-sensitivity {a.metric_samples} perturbations; "
          f"pixel flipping on {a.flip_maps} maps, {a.weights} weights")
    quantus: Any = None
    try:
        import quantus

        print(f"Quantus {quantus.__version__} (GPL; benchmark-only, installed with --no-deps)")
    except ImportError:
        print("Quantus: not installed, skipped")
    for name in a.models.split(","):
        torch.manual_seed(0)
        model = fmodels.create(name, in_shape=(1, 28, 28), num_classes=10).eval()  # random weights, seed 0
        if a.weights != "random":
            from recipe_models import recipe_model  # benchmarks/ is on sys.path when run as a script

            if name != "small-cnn":
                raise SystemExit("--weights standard/robust: small-cnn only (the explain_table.py models)")
            model = recipe_model(a.weights, 10, 0.3, Path(__file__).resolve().parent / ".cache" / "explain")
        print(f"\n### {name} ({a.weights} weights{', seed 0' if a.weights == 'random' else ''})\n", flush=True)
        if a.captum:
            print(bench(name, model, x, y, a), flush=True)
        if quantus is not None and a.quantus:
            print(f"\n#### {name} vs Quantus\n", flush=True)
            print(bench_quantus(name, model, x, y, a), flush=True)


if __name__ == "__main__":
    main()
