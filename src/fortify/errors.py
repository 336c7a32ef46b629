"""Typed exceptions raised by the fortify library.

Every error a user can cause (bad names, bad tensors, bad files, bad configuration) is a
:class:`FortifyError`. The CLI turns any ``FortifyError`` into one line on stderr and exit code 2.
"""
from __future__ import annotations


class FortifyError(Exception):
    """Base class of every error fortify raises on purpose."""


class ConfigError(FortifyError, ValueError):
    """A configuration value (recipe key, CLI override, argument) is invalid."""


class UnknownNameError(ConfigError):
    """A name looked up in a registry (dataset, model, attack, ...) does not exist."""


class InputError(FortifyError, ValueError):
    """A tensor argument is malformed: wrong shape or dtype, NaN/inf, values out of range."""


class ThreatModelError(ConfigError):
    """A threat model is invalid (unknown norm, negative eps, empty bounds) or unsupported."""


class DatasetUnavailableError(FortifyError):
    """A registered dataset cannot be found on this machine; the message names what to install."""


class DataFileError(FortifyError):
    """A data file (IDX, CSV, pickle) is corrupt, truncated, hostile or of an unexpected layout."""


class ModelFileError(FortifyError):
    """A model or checkpoint file is missing, corrupt, hostile or of an unknown format."""


class UnsupportedLayerError(FortifyError):
    """A model contains a layer that an analysis (e.g. bound propagation) does not support."""


class OutputError(FortifyError):
    """An output location (run folder, run store, report) cannot be written."""


class ResourceError(FortifyError):
    """The machine cannot do what was asked: out of memory, more threads than it can run, no disk space.
    The message says what to reduce."""


class WorkerError(FortifyError):
    """A distributed-training worker process failed (an exception, a crash or a timeout); the
    message names the rank and the worker's own error. Worker errors that are already
    :class:`FortifyError` (e.g. a diverged loss) are re-raised in the parent with their own type."""


__all__ = [
    "FortifyError",
    "ConfigError",
    "UnknownNameError",
    "InputError",
    "ThreatModelError",
    "DatasetUnavailableError",
    "DataFileError",
    "ModelFileError",
    "UnsupportedLayerError",
    "OutputError",
    "ResourceError",
    "WorkerError",
]
