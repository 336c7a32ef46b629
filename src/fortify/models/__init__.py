"""Models: a registry of architectures, the ``Normalized`` wrapper, and safe save/load.

>>> from fortify import models, data
>>> spec = data.info("mnist-5k")
>>> net = models.Normalized(models.create("small-cnn"), spec.mean, spec.std)
>>> models.save(net, "net.safetensors", meta={"dataset": "mnist-5k"})
>>> same = models.load("net.safetensors")          # eval mode, identical outputs

Registered: ``mlp`` (LeNet-300-100), ``lenet5``, ``small-cnn`` (Wong & Kolter 2018), ``madry-cnn``
(Madry et al. 2018), ``dm-medium`` (Gowal et al. 2018) -- ``nn.Sequential`` stacks -- and the graph
models ``resnet-mnist`` (pre-activation ResNet), ``dense-mnist`` (DenseNet-style concatenation),
``signal-cnn`` (1-D convolutions, ``(C, L)`` inputs) and ``tabular-mlp`` (BatchNorm MLP, ``(F,)``
inputs). :mod:`fortify.models.graph` traces any model into the DAG the certifiers walk.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.models import zoo as _zoo  # noqa: F401  (registers the built-in architectures)
from fortify.models.factory import factory_model, import_factory
from fortify.models.io import load, read_meta, save
from fortify.models.normalized import Normalized
from fortify.models.registry import ARCH_ATTR, MODELS, architecture, create
from fortify.models.zoo import KNOWN_PARAM_COUNTS
from fortify.registry import discover

discover(__name__)  # every architecture module registers itself; a new file is found without an edit here


def names() -> list[str]:
    """Sorted names of every registered architecture."""
    return MODELS.names()


def from_config(cfg: Any) -> nn.Module:
    """The untrained model a run config describes: ``create(model.name, in_shape, num_classes,
    **model.args)`` for ``data.name``'s input shape, seeded by ``cfg.seed`` (the global RNG is left
    as it was), re-initialised by ``model.init`` (``ibp``: :func:`fortify.models.init.ibp_init`), wrapped
    in ``Normalized(mean, std)`` of the dataset when ``model.normalize``.
    Raises ConfigError for ``model.args`` the architecture does not take."""
    from fortify import data as fdata

    spec = fdata.info(cfg.data.name)
    factory = getattr(cfg.model, "factory", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            if factory:  # the user's own architecture (model.factory = package.module:function)
                net = factory_model(factory, in_shape=tuple(spec.input_shape), num_classes=spec.num_classes,
                                    **cfg.model.args)
            else:
                net = create(cfg.model.name, in_shape=tuple(spec.input_shape), num_classes=spec.num_classes,
                             **cfg.model.args)
        except TypeError as e:
            raise ConfigError(f"model.args: {e}") from None
        if cfg.model.init == "ibp":
            from fortify.models.init import ibp_init

            ibp_init(net)
    return Normalized(net, spec.mean, spec.std) if cfg.model.normalize else net


__all__ = [
    "ARCH_ATTR",
    "KNOWN_PARAM_COUNTS",
    "MODELS",
    "Normalized",
    "architecture",
    "create",
    "factory_model",
    "from_config",
    "import_factory",
    "load",
    "names",
    "read_meta",
    "save",
]
