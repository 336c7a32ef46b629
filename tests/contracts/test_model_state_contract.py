"""Contract: nothing fortify runs on a model changes it (``models.state.fingerprint`` unchanged).

Every registered attack, certifier, transform and task (enumerated at collection, so a new method is
covered by registering it) runs on a model whose flags are *mixed* the way real users leave them: the
root in training mode, a BatchNorm the user froze (eval mode), a Dropout in training mode, a weight
with ``requires_grad=False`` and a stale ``.grad`` on another parameter. Afterwards the fingerprint
(every module's ``training`` flag, every ``requires_grad``, the identity and contents of every
``.grad``, every parameter and buffer value) must be identical. A ``model.train(was)`` "restore"
fails this test (it unfreezes the BatchNorm), so does an ``.eval()`` that is never undone.

Compression transforms only take BatchNorm-free Sequentials (``compress.base.SUPPORTED``); they get the
same mix with a frozen *Dropout* in place of the BatchNorm, and must return a new model object.
Tasks that take a ``teacher`` get a mixed-flag teacher, whose fingerprint is checked too.

:func:`test_every_registry_is_covered` enumerates every registry fortify builds
(:meth:`fortify.registry.Registry.instances`), so a future registry fails here until it is either
run by this contract or listed in :data:`NOT_RUN_ON_A_USER_MODEL` with the reason.

The Trainer's own contract (it trains the weights it is given, that is its job) is checked apart:
flags before and after ``fit`` identical, the frozen BatchNorm's statistics and the
``requires_grad=False`` weight untouched, the frozen BatchNorm never in training mode during a step.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import pytest
import torch
from torch import nn

from fortify import registry
from fortify.attacks import ATTACKS
from fortify.audit.backdoor import BACKDOOR_DETECTORS, BACKDOOR_MITIGATIONS
from fortify.audit.calibrators import CALIBRATORS, calibrate
from fortify.audit.detect import DETECTORS
from fortify.certify import CERTIFIERS
from fortify.compress import TRANSFORMS
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from fortify.models import Normalized
from fortify.models.state import fingerprint
from fortify.threat import ThreatModel
from fortify.train import Trainer
from fortify.train.tasks import TASKS

N, C, H, W, K = 6, 1, 8, 8, 4
EPS = {"linf": 0.05, "l2": 0.5, "l1": 2.0}
#: tiny budgets, passed to each constructor that has the keyword
TINY: dict[str, Any] = {
    "steps": 1, "restarts": 1, "queries": 20, "samples": 2, "binary_search_steps": 1,
    "n_target_classes": 1, "init_evals": 2, "max_evals": 4, "init_tries": 2, "init_directions": 2, "k": 2,
    "n0": 4, "n": 8, "batch_size": 8, "time_limit": 5.0, "epochs": 1, "threat": "linf:0.05",
    "threats": ("linf:0.05", "l2:0.5"), "candidates": 2, "score_epochs": 1, "finetune_epochs": 1,
    "prune_epochs": 1, "share_epochs": 1, "calibration_size": 8, "threads": 1, "rounds": 1,
    "cycles": 1,
    "per_class": 2, "inversion_steps": 1, "overlays": 2, "batch": 4,
}
#: per-name constructor arguments TINY does not satisfy
OVERRIDES: dict[str, dict[str, Any]] = {
    "imp_rewind": {"epochs": 2}, "low_rank": {"rank": 2},
    "distill": {"student": "mlp", "student_args": {"hidden": (8,)}},
    "hydra": {"task_args": {"threat": "linf:0.05", "steps": 1}, "finetune_epochs": 1},
    "importance": {"steps": 2},  # K > 1: the hard set is ranked (an eval-mode pass)
    "roar": {"train": (torch.rand(8, C, H, W, generator=torch.Generator().manual_seed(5)), torch.arange(8) % K),
             "fractions": (0.5,)},
}
#: registries whose entries never receive a user's model, with the reason
NOT_RUN_ON_A_USER_MODEL: dict[str, str] = {
    "model": "factories that build a new model",
    "dataset": "data sources; no model involved",
    "schedule": "adversarial-strength schedules: numbers of progress, no model",
    "compression recipe": "lists of transform steps, each a registered transform run here",
    "stage": "pipeline stages own the run's model (built or loaded by the pipeline); they call the pillars run here",
    "verb": "CLI verbs: thin wrappers over the pillars run here",
    "corruption": "image transforms; no model involved (corruption_table runs the model: covered here)",
    "poison": "training-set transforms; no model involved (clean-label's surrogate is its own model)",
    "mips index": "vector indexes over a weight matrix copy; FastHead reads an nn.Linear without changing it",
    "ood set": "data sources; the fooling set calls fooling_images, covered here",
}
COVERED = {"attack", "certifier", "transform", "task", "attribution", "attribution metric", "detector", "calibrator",
           "backdoor detector", "backdoor mitigation"}


def _mix(model: nn.Module, frozen_module: nn.Module, trained: nn.Module, frozen_weight: torch.Tensor,
         stale: nn.Parameter) -> nn.Module:
    model.train()
    frozen_module.eval()
    assert trained.training
    frozen_weight.requires_grad_(False)
    stale.grad = torch.full_like(stale, 0.125)
    return model


def mixed_model(seed: int = 0) -> nn.Module:
    """Normalized conv net: BatchNorm frozen, Dropout training, conv bias frozen, stale grad on the head bias."""
    torch.manual_seed(seed)
    seq = nn.Sequential(nn.Conv2d(C, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, 2, 1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, K))
    with torch.no_grad():
        seq[1].running_mean.uniform_(-0.1, 0.1)
        seq[1].running_var.uniform_(0.8, 1.2)
    return _mix(Normalized(seq, [0.5], [0.5]), seq[1], seq[8], seq[0].bias, seq[9].bias)


def compressible_model(seed: int = 0) -> nn.Module:
    """The same mix without BatchNorm (compression's layer set): the frozen module is a Dropout."""
    torch.manual_seed(seed)
    seq = nn.Sequential(nn.Conv2d(C, 3, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Conv2d(3, 4, 3, 2, 1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, K))
    return _mix(Normalized(seq, [0.5], [0.5]), seq[2], seq[8], seq[0].bias, seq[9].bias)


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, C, H, W, generator=g) * 0.8 + 0.1, torch.arange(N) % K


def tiny_kwargs(cls: Callable[..., Any], name: str) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    return {**{k: v for k, v in TINY.items() if k in params}, **OVERRIDES.get(name, {})}


def threat_for(cls: Any) -> ThreatModel:
    norms = getattr(cls, "norms", ("linf",))
    norm = "linf" if "linf" in norms else norms[0]
    return ThreatModel(norm, EPS[norm])


def assert_untouched(model: nn.Module, before: tuple[object, ...], what: str) -> None:
    after = fingerprint(model)
    if after == before:
        return
    names = ("module flags", "parameters (requires_grad, values, .grad)", "buffers")
    diffs = [f"{n}: {[a for a in x if a not in y]}" for n, x, y in zip(names, after, before) if x != y]  # type: ignore
    pytest.fail(f"{what} changed the model: " + "; ".join(diffs))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_leaves_a_mixed_model_unchanged(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    before = fingerprint(model)
    attack = ATTACKS.create(name, **tiny_kwargs(ATTACKS.get(name), name))
    res = attack(model, x, y, threat_for(ATTACKS.get(name)), generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape
    assert_untouched(model, before, f"attack {name!r}")


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_certifier_leaves_a_mixed_model_unchanged(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    x, y = x[:1], y[:1]  # MILP cost
    before = fingerprint(model)
    cert = CERTIFIERS.create(name, **tiny_kwargs(CERTIFIERS.get(name), name))(model, x, y, threat_for(CERTIFIERS.get(name)))
    assert cert.certified.shape == (1,)
    assert_untouched(model, before, f"certifier {name!r}")


@pytest.mark.parametrize("name", TASKS.names())
def test_task_leaves_a_mixed_model_unchanged(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    kwargs = tiny_kwargs(TASKS.get(name), name)
    teacher = None
    if "teacher" in inspect.signature(TASKS.get(name)).parameters:
        teacher = kwargs["teacher"] = mixed_model(seed=3)
    teacher_before = fingerprint(teacher) if teacher is not None else None  # before the task holds it
    task = TASKS.create(name, **kwargs)
    before = fingerprint(model)
    out = task(model, x, y, generator=torch.Generator().manual_seed(0))
    assert out.loss.requires_grad and out.logits.shape[-1] == K
    assert_untouched(model, before, f"task {name!r}")
    if teacher is not None:
        assert_untouched(teacher, teacher_before, f"task {name!r} (its teacher)")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ATTRIBUTIONS.names())
def test_attribution_leaves_a_mixed_model_unchanged(name: str) -> None:
    model, (x, _) = mixed_model(), inputs()
    before = fingerprint(model)
    attr = ATTRIBUTIONS.create(name, **tiny_kwargs(ATTRIBUTIONS.get(name), name))(model, x)
    assert attr.shape == x.shape
    assert_untouched(model, before, f"attribution {name!r}")


@pytest.mark.parametrize("name", ATTRIBUTION_METRICS.names())
def test_attribution_metric_leaves_a_mixed_model_unchanged(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    attr = ATTRIBUTIONS.create("saliency")(model, x, y)
    before = fingerprint(model)
    res = ATTRIBUTION_METRICS.create(name, **tiny_kwargs(ATTRIBUTION_METRICS.get(name), name))(model, x, attr, y)
    assert res.values.shape == (N,)
    assert_untouched(model, before, f"attribution metric {name!r}")


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_fit_and_score_leave_a_mixed_model_unchanged(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    before = fingerprint(model)
    fitted = DETECTORS.create(name, **tiny_kwargs(DETECTORS.get(name), name)).fit(model, torch.cat([x, x.flip(0)]),
                                                                                   torch.cat([y, y]))
    assert fitted.score(x).shape == (N,)
    assert_untouched(model, before, f"detector {name!r}")


@pytest.mark.parametrize("name", CALIBRATORS.names())
def test_calibrated_wrapper_leaves_a_mixed_model_unchanged(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    before = fingerprint(model)
    wrapped = calibrate(model, torch.cat([x] * 4), torch.cat([y] * 4), name)
    with torch.no_grad():
        assert wrapped(x).shape == (N, K)
    assert_untouched(model, before, f"calibrator {name!r}")


@pytest.mark.parametrize("name", BACKDOOR_DETECTORS.names())
def test_backdoor_detector_leaves_a_mixed_model_unchanged(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    before = fingerprint(model)
    BACKDOOR_DETECTORS.create(name, **tiny_kwargs(BACKDOOR_DETECTORS.get(name), name))(model, x, y)
    assert_untouched(model, before, f"backdoor detector {name!r}")


@pytest.mark.parametrize("name", BACKDOOR_MITIGATIONS.names())
def test_backdoor_mitigation_leaves_a_mixed_model_unchanged_and_returns_a_new_one(name: str) -> None:
    model, (x, y) = mixed_model(), inputs()
    before = fingerprint(model)
    res = BACKDOOR_MITIGATIONS.create(name, **tiny_kwargs(BACKDOOR_MITIGATIONS.get(name), name))(model, x, y)
    assert res.model is not model
    assert_untouched(model, before, f"backdoor mitigation {name!r}")


def test_audit_helpers_leave_a_mixed_model_unchanged() -> None:
    """Entry points of the audit pillar that are not registry entries: corruption table, fooling images."""
    from fortify.audit.corruptions import corruption_table
    from fortify.audit.fooling import fooling_images

    model, (x, y) = mixed_model(), inputs()
    before = fingerprint(model)
    assert corruption_table(model, x, y, names=["rotate", "shot_noise"]).n == N
    for method in ("gradient", "evolution"):
        assert fooling_images(model, 1, method=method, steps=2, sample_shape=(C, H, W)).images.shape[0] == K
    assert_untouched(model, before, "audit helpers")


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_transform_leaves_a_mixed_model_unchanged_and_returns_a_new_one(name: str) -> None:
    model, data = compressible_model(), inputs()
    before = fingerprint(model)
    transform = TRANSFORMS.create(name, **tiny_kwargs(TRANSFORMS.get(name), name))
    res = transform(model, data[0][:2], data=data)
    assert res.model is not model
    assert_untouched(model, before, f"transform {name!r}")


def test_compression_helpers_leave_a_mixed_model_unchanged(tmp_path: Any) -> None:
    """The entry points of compression that are not transforms: export, MACs, latency, measure."""
    from fortify.compress.export import export_onnx
    from fortify.compress.measure import LATENCY_POLICY, count_macs, latency_runs, measure
    from fortify.timing import fixed_rounds

    model, bn_model, (x, y) = compressible_model(), mixed_model(seed=2), inputs()
    before, bn_before = fingerprint(model), fingerprint(bn_model)
    export_onnx(model, tmp_path / "m.onnx", x[:2])
    export_onnx(bn_model, tmp_path / "bn.onnx", x[:2])
    assert count_macs(model, x)[0] == count_macs(bn_model, x)[0] > 0  # same Conv2d/Linear layers
    runs = latency_runs({"a": model, "b": bn_model, "a again": model}, x, batch_sizes=(1,),
                        policy=fixed_rounds(LATENCY_POLICY, 3), threads=1)
    assert set(runs) == {1}
    rows = measure({"a": model, "a again": model}, x, y, robust="pgd", n_robust=2, pgd_steps=1, latency=False)
    assert [r.name for r in rows] == ["a", "a again"] and rows[0].macs == count_macs(model, x)[0]
    assert rows[0].clean_acc == rows[1].clean_acc  # eval mode both times (a training Dropout would differ)
    assert_untouched(model, before, "compression helpers")
    assert_untouched(bn_model, bn_before, "compression helpers (BatchNorm model)")


def test_every_registry_is_covered() -> None:
    registry.discover("fortify")  # every module imported: every registry built
    kinds = {r.kind: r.module for r in registry.Registry.instances() if r.module.startswith("fortify")}
    missing = {k: m for k, m in kinds.items() if k not in COVERED and k not in NOT_RUN_ON_A_USER_MODEL}
    assert not missing, (f"registries not covered by the model-state contract: {missing}; run their entries in "
                         "tests/contracts/test_model_state_contract.py or say why in NOT_RUN_ON_A_USER_MODEL")
    assert COVERED <= set(kinds)


class _FlagProbe:
    """Trainer callback recording, after every step, whether the frozen BatchNorm was in training mode."""

    def __init__(self, bn: nn.Module) -> None:
        self.bn, self.seen = bn, []  # type: ignore[var-annotated]

    def on_step_end(self, trainer: Any, step: int, out: Any) -> None:
        self.seen.append((self.bn.training, trainer.model.training))


@pytest.mark.parametrize("with_val", [False, True])
def test_trainer_trains_the_weights_but_keeps_every_flag(with_val: bool) -> None:
    model, data = mixed_model(), inputs()
    seq = model.inner
    flags = [m.training for m in model.modules()]
    stats = [seq[1].running_mean.clone(), seq[1].running_var.clone()]
    frozen_bias, head = seq[0].bias.detach().clone(), seq[9].weight.detach().clone()
    probe = _FlagProbe(seq[1])
    Trainer(model, "standard", {"epochs": 2, "batch_size": 3, "lr": 0.1}, progress=False,
            callbacks=[probe]).fit(data, data if with_val else None)
    assert probe.seen == [(False, True)] * 4  # BN frozen, root training, at every step
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(seq[1].running_mean, stats[0]) and torch.equal(seq[1].running_var, stats[1])
    assert torch.equal(seq[0].bias, frozen_bias) and not seq[0].bias.requires_grad
    assert not torch.equal(seq[9].weight, head)  # it did train
