"""Shared by the benchmarks that compare a standard and a robust small-cnn (corruptions.py, explain_table.py):
both trained by fortify's own recipes and Trainer, cached as safetensors (rebuilt on demand; gitignored)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from fortify import data as fdata
from fortify import models as fmodels
from fortify.config import load_config
from fortify.train import Trainer
from fortify.train import tasks as ftasks


def recipe_model(kind: str, epochs: int, eps: float, cache: Path, *, retrain: bool = False) -> torch.nn.Module:
    """small-cnn on mnist-5k from a shipped recipe: ``standard`` (standard-mnist-5k) or ``robust`` (the PGD-AT task
    of robust-mnist-5k at linf ``eps``), ``epochs`` epochs, with the recipe's per-epoch monitor; cached under
    ``cache`` by kind, epochs and eps. Returns the model in eval mode."""
    path = cache / f"{kind}-e{epochs}-eps{eps}.safetensors"
    if path.is_file() and not retrain:
        return fmodels.load(path).eval()
    if kind == "standard":
        cfg = load_config("standard-mnist-5k", [f"train.epochs={epochs}"])
    else:
        cfg = load_config("robust-mnist-5k", [f"train.epochs={epochs}", f"task.args.threat=linf:{eps}"])
    model = fmodels.from_config(cfg)
    task = ftasks.create(cfg.task.name, **cfg.task.args)
    train, test = fdata.load("mnist-5k", "train"), fdata.load("mnist-5k", "test")
    from fortify.train.adversarial import callbacks_for

    t0 = time.perf_counter()
    Trainer(model, task, cfg.train, progress=False, callbacks=callbacks_for(task, test)).fit(train=train, val=test)
    print(f"trained {kind} ({cfg.task.name}, {epochs} epochs) in {time.perf_counter() - t0:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    fmodels.save(model, path)
    return model.eval()
