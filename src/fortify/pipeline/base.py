"""The pipeline: a list of named stages run in order against one :class:`RunContext`.

A stage is a class with a ``name``, an optional ``config_class`` (a dataclass validating the
recipe section of the same name) and ``run(ctx)``. Stages are registered in :data:`STAGES` with
:func:`register_stage`; they all live in ``fortify/pipeline/stages/`` (imported by
:mod:`fortify.pipeline`): the application imports the pillars, a pillar never imports the pipeline.

Stages communicate only through the context: ``ctx.model``, ``ctx.data(split)``,
``ctx.log_metrics``, ``ctx.add_artefact``, ``ctx.add_section`` and ``ctx.state`` (a free-form
dict for values later stages read, e.g. the training history).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, runtime_checkable

from rich.console import Console

from fortify.registry import Registry
from fortify.report.sections import Section

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from fortify.config import Config
    from fortify.store import RunStore


@runtime_checkable
class Stage(Protocol):
    """One step of the main job. ``config_class`` validates the recipe section named ``name``."""

    name: ClassVar[str]
    config_class: ClassVar[type | None]

    def run(self, ctx: "RunContext") -> None:
        """Do the work, reading and writing only through ``ctx``."""
        ...


STAGES: Registry[type] = Registry("stage")


def register_stage(cls: type) -> type:
    """Class decorator: register a stage class under its ``name`` (help = first docstring line)."""
    name = getattr(cls, "name", None)
    if not hasattr(cls, "config_class"):
        cls.config_class = None
    STAGES.register(name, cls)  # type: ignore[arg-type]
    return cls


@dataclass
class RunContext:
    """Everything a stage may read or write during one run.

    ``metrics`` maps ``stage -> {key: value}`` (the last value of each key), ``history`` holds the
    per-epoch training dicts, ``artefacts`` maps a name to a path inside (or outside) ``run_dir``,
    ``sections`` are the report parts in stage order.
    """

    config: "Config"
    run_dir: Path
    run_id: str
    verb: str = "run"
    store: "RunStore | None" = None
    console: Console = field(default_factory=lambda: Console(stderr=True))
    quiet: bool = False
    model: "nn.Module | None" = None
    model_meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artefacts: dict[str, str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    stage: str = ""
    _data: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- data --------------------------------------------------------------------------------
    def data(self, split: str) -> "tuple[torch.Tensor, torch.Tensor]":
        """The configured dataset's ``split`` as ``x (N, C, H, W)`` float32 in [0, 1], ``y (N,)`` int64.

        Loaded once per run through :func:`fortify.data.load` with ``data.data_dir`` and the
        ``data.train_limit`` / ``data.test_limit`` of the config.
        """
        if split not in self._data:
            from fortify import data as fdata

            d = self.config.data
            limit = d.train_limit if split == "train" else d.test_limit if split == "test" else None
            self._data[split] = fdata.load(d.name, split, data_dir=d.data_dir, limit=limit)
        return self._data[split]

    def set_data(self, split: str, x: "torch.Tensor", y: "torch.Tensor") -> None:
        """Provide a split directly (library use, tests) instead of loading it."""
        self._data[split] = (x, y)

    # -- recording ---------------------------------------------------------------------------
    def log_metrics(self, values: Mapping[str, Any], *, step: int | None = None, stage: str | None = None) -> None:
        """Record numbers for the current stage (in the store and in ``metrics``)."""
        stage = self.stage if stage is None else stage
        clean = {str(k): (None if v is None else float(v)) for k, v in values.items()}
        if step is None:
            self.metrics.setdefault(stage, {}).update(clean)
        if self.store is not None:
            self.store.log_metrics(self.run_id, clean, stage=stage, step=step)

    def log_metric(self, key: str, value: Any, *, step: int | None = None) -> None:
        """Record one number for the current stage."""
        self.log_metrics({key: value}, step=step)

    def add_artefact(self, name: str, path: str | Path, kind: str = "") -> Path:
        """Record a file the run wrote; returns ``path``."""
        self.artefacts[name] = str(path)
        if self.store is not None:
            self.store.add_artefact(self.run_id, name, path, kind)
        return Path(path)

    def add_section(self, section: Section) -> Section:
        """Add a report section (tagged with the current stage)."""
        if not section.stage:
            section.stage = self.stage
        self.sections.append(section)
        return section

    def path(self, name: str) -> Path:
        """``run_dir / name``."""
        return self.run_dir / name

    def print(self, *objects: Any) -> None:
        """Print to the console unless quiet."""
        if not self.quiet:
            self.console.print(*objects)
