"""Pruning: magnitude (unstructured), structured channel/neuron, IMP with rewinding, cyclical,
neuron merging, targeted dropout and HYDRA. Importing this package registers the transforms."""
from __future__ import annotations

from fortify.compress.prune.magnitude import MagnitudePrune, magnitude_masks
from fortify.compress.prune.merge import NeuronMerge
from fortify.compress.prune.structured import ChannelPrune

__all__ = ["ChannelPrune", "MagnitudePrune", "NeuronMerge", "magnitude_masks"]
