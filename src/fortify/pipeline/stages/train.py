"""``train`` stage: build the configured model (unless one is given) and fit it with the Trainer.

Adversarial tasks bring their harden callbacks (:func:`fortify.train.adversarial.callbacks_for`):
a per-epoch :class:`~fortify.train.adversarial.RobustnessMonitor` (clean accuracy and PGD-10 robust
accuracy on a fixed held-out batch - the first points of the test split -, training wall time) and,
when the task asks for it, the catastrophic-overfitting guard. Their metrics are merged into every
epoch record, so they reach the run store (``stage="train"``, ``step=epoch``), the report table and
the progress bar. Standard tasks get no callbacks and train exactly as before.

Device: the run's device ``ctx.device`` (``train.device``, CLI ``--device``; default cuda when available,
else cpu; docs/devices.md). A model the stage builds is created there (initialised on the CPU with the
run's seed, then placed: the same weights on every device), trained there and handed to the later stages
there (their data is on the same device); a model given to the pipeline must already be on that device
(ConfigError naming both, checked by the runner) and is never moved.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from fortify.errors import ConfigError
from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import TrainResult
from fortify.report.sections import Section, Table
from fortify.train.config import TrainConfig


def build_model(ctx: RunContext) -> torch.nn.Module:
    """``models.create(model.name, in_shape, num_classes, **model.args)``, wrapped in
    ``Normalized(mean, std)`` of the dataset when ``model.normalize``; seeded by ``train.seed``."""
    from fortify import data as fdata
    from fortify import models

    cfg = ctx.config
    spec = fdata.info(cfg.data.name)
    net = models.from_config(cfg)
    arch_name = cfg.model.factory or cfg.model.name  # a user factory (package.module:function) replaces the name
    ctx.model_meta.update({"dataset": cfg.data.name, "architecture": arch_name, "args": dict(cfg.model.args),
                           "in_shape": list(spec.input_shape), "num_classes": spec.num_classes,
                           "normalized": bool(cfg.model.normalize)})
    return net


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


@register_stage
class TrainStage:
    """Train the model on the train split (task and hyper-parameters from the recipe)."""

    name: ClassVar[str] = "train"
    config_class: ClassVar[type | None] = TrainConfig  # the core ``train`` section (and ``task``)

    def run(self, ctx: RunContext) -> TrainResult:
        """Fit ``ctx.model`` (built from the config when absent) on the train split; log per-epoch records."""
        from fortify.train import Trainer
        from fortify.train import tasks
        from fortify.train.adversarial import callbacks_for

        from fortify.train import device as fdevice

        cfg = ctx.config
        device = ctx.device  # train.device; null / auto: cuda when available, else cpu
        if ctx.model is None:
            ctx.model = build_model(ctx).to(device)  # fortify's own model: placed on the run's device
        else:
            fdevice.check_model_device(ctx.model, device, "given model")  # a user's model is never moved
        try:
            task = tasks.create(cfg.task.name, **cfg.task.args)
        except TypeError as e:
            raise ConfigError(f"task.args: {e}") from None
        train, test = ctx.data("train"), ctx.data("test")
        callbacks = callbacks_for(task, test)
        trainer = Trainer(ctx.model, task, cfg.train.replace(device=str(device)), checkpoint_dir=ctx.path("checkpoints"),
                          progress=not ctx.quiet, callbacks=callbacks)
        history = [dict(h) for h in trainer.fit(train=train, val=test, resume=ctx.resume)]
        guard = next((cb for cb in callbacks if hasattr(cb, "events")), None)
        result = TrainResult(history=history, train_examples=int(train[0].shape[0]),
                             co_events=[dict(e) for e in getattr(guard, "events", ())])
        ctx.results[self.name] = result  # early: a failure report below still shows the history
        for i, h in enumerate(history):
            nums = {k: float(v) for k, v in h.items() if k != "epoch" and _finite(v)}
            step = int(h["epoch"]) if _finite(h.get("epoch")) else i + 1
            if nums and ctx.store is not None:
                ctx.store.log_metrics(ctx.run_id, nums, stage=self.name, step=step)
        last = {k: v for k, v in (history[-1] if history else {}).items() if k != "epoch" and _finite(v)}
        ctx.log_metrics({**last, "epochs": len(history), "train_examples": int(train[0].shape[0])})
        ctx.model_meta["training"] = {"task": cfg.task.name, "task_args": dict(cfg.task.args),
                                      "train": cfg.train.to_dict(), "run_id": ctx.run_id}
        seen = {k for h in history for k in h if k != "epoch" and _finite(h[k])}
        first = [k for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "wall_s") if k in seen]
        keys = first + sorted(seen - set(first))
        rows = [[h.get("epoch", i + 1)] + [h.get(k) for k in keys] for i, h in enumerate(history)]
        ctx.add_section(Section(
            "Training",
            text=f"{cfg.model.name} on {cfg.data.name} ({train[0].shape[0]} images), task {cfg.task.name}, "
                 f"{cfg.train.optimizer} lr {cfg.train.lr} {cfg.train.schedule}, {cfg.train.epochs} epochs, "
                 f"seed {cfg.seed}. Validation columns are measured on the test split (monitoring only).",
            tables=[Table(["epoch"] + keys, rows, "per epoch")]))
        return result
