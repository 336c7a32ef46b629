"""Natural corruptions of MNIST-C (Mu & Gilmer 2019, arXiv:1906.02337), for any image dataset.

The fifteen corruptions of MNIST-C, registered in :data:`CORRUPTIONS` (kind ``"corruption"``), one family
per file: ``noise`` (shot_noise, impulse_noise), ``blur`` (glass_blur, motion_blur), ``geometric`` (shear,
scale, rotate, translate), ``photometric`` (brightness, stripe, fog, spatter), ``lines`` (dotted_line,
zigzag), ``edges`` (canny_edges). Each has five severities and MNIST-C's fixed one as the default;
:func:`corrupt` applies one to a batch ``(N, C, H, W)`` in [0, 1] reproducibly from a seed, and
:func:`corruption_table` measures a model's accuracy per corruption and the (relative) mean corruption
error of Hendrycks & Dietterich 2019. Implemented in torch, numpy and scipy (no scikit-image needed);
sizes written for 28x28 scale with ``sqrt(HW) / 28``, so CIFAR-sized and RGB inputs work too.
"""
from __future__ import annotations

from fortify.audit.corruptions.base import CORRUPTIONS, MNIST_C, SEVERITIES, Corruption, corrupt
from fortify.registry import discover

discover(__name__)

from fortify.audit.corruptions.table import CorruptionReport, CorruptionRow, corruption_table  # noqa: E402

__all__ = ["CORRUPTIONS", "MNIST_C", "SEVERITIES", "Corruption", "CorruptionReport", "CorruptionRow", "corrupt",
           "corruption_table"]
