"""Pruning: magnitude (unstructured), structured channel/neuron, IMP with rewinding, cyclical,
neuron merging, targeted dropout and HYDRA. Importing this package registers the transforms
(and the ``targeted_dropout`` training task)."""
from __future__ import annotations

from fortify.compress.prune.cyclical import CyclicalPrune, cyclical_sparsity
from fortify.compress.prune.hydra import Hydra, HydraScores
from fortify.compress.prune.imp import IterativeMagnitudePrune
from fortify.compress.prune.magnitude import MagnitudePrune, magnitude_masks
from fortify.compress.prune.merge import NeuronMerge
from fortify.compress.prune.structured import ChannelPrune
from fortify.compress.prune.targeted_dropout import TargetedDropoutPrune, TargetedDropoutTask

__all__ = ["ChannelPrune", "CyclicalPrune", "Hydra", "HydraScores", "IterativeMagnitudePrune", "MagnitudePrune",
           "NeuronMerge", "TargetedDropoutPrune", "TargetedDropoutTask", "cyclical_sparsity", "magnitude_masks"]
