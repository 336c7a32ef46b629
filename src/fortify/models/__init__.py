"""Models: a registry of architectures, the ``Normalized`` wrapper, and safe save/load.

>>> from fortify import models, data
>>> spec = data.info("mnist-5k")
>>> net = models.Normalized(models.create("small-cnn"), spec.mean, spec.std)
>>> models.save(net, "net.safetensors", meta={"dataset": "mnist-5k"})
>>> same = models.load("net.safetensors")          # eval mode, identical outputs

Registered: ``mlp`` (LeNet-300-100), ``lenet5``, ``small-cnn`` (Wong & Kolter 2018),
``madry-cnn`` (Madry et al. 2018). All are ``nn.Sequential`` of standard layers.
"""
from __future__ import annotations

from fortify.models import zoo as _zoo  # noqa: F401  (registers the built-in architectures)
from fortify.models.io import load, read_meta, save
from fortify.models.normalized import Normalized
from fortify.models.registry import ARCH_ATTR, MODELS, architecture, create
from fortify.models.zoo import KNOWN_PARAM_COUNTS


def names() -> list[str]:
    """Sorted names of every registered architecture."""
    return MODELS.names()


__all__ = [
    "ARCH_ATTR",
    "KNOWN_PARAM_COUNTS",
    "MODELS",
    "Normalized",
    "architecture",
    "create",
    "load",
    "names",
    "read_meta",
    "save",
]
