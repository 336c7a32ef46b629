"""The pipeline: a list of named stages run in order against one :class:`RunContext`.

A stage is a class with a ``name``, an optional ``config_class`` (a dataclass validating the
recipe section of the same name) and ``run(ctx) -> StageResult``. Stages are registered in
:data:`STAGES` with :func:`register_stage`, which also declares their section to
:mod:`fortify.config`; they all live in ``fortify/pipeline/stages/`` (imported by
:mod:`fortify.pipeline`): the application imports the pillars, a pillar never imports the pipeline.

Device (docs/devices.md): a run has one device, ``ctx.device`` (:func:`run_device`: ``train.device``, CLI
``--device``; default the given model's device, else cuda when available, else cpu). ``ctx.data`` and
``ctx.test_inputs`` return tensors on it, the train and load stages build the model on it, and a model
handed to the pipeline is checked against it, never moved. Stages that are CPU-only by nature (int8 /
ONNX export, ONNX Runtime, CPU latency) work on a CPU copy they own.

Stages communicate only through the context: ``ctx.model``, ``ctx.data(split)``,
``ctx.test_inputs(n)``, ``ctx.log_metrics``, ``ctx.add_artefact``, ``ctx.add_section``,
``ctx.write_json`` and the typed results of the stages before them, ``ctx.result(name, Type)``
(the runner keeps what each ``run`` returns in ``ctx.results[name]``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

import torch
from rich.console import Console

from fortify.config import register_section
from fortify.errors import ConfigError, InputError, OutputError
from fortify.registry import Registry
from fortify.report.sections import Section

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from fortify.config import Config
    from fortify.store import RunStore


@dataclass
class StageResult:
    """What a stage hands to the stages after it and to the report; each stage returns a subclass.
    A stage with nothing to hand on returns this base (the runner also stores it for ``None``)."""


R = TypeVar("R", bound=StageResult)


def run_device(config: "Config", model: "nn.Module | None" = None) -> torch.device:
    """The one device of a run: ``train.device`` when set (``auto``: cuda when available, else cpu; a given
    ``model`` must already be there), else the given model's device, else cuda when available, else cpu.

    Raises ConfigError naming both devices when the given model is elsewhere or split over several
    devices (it is never moved), and for a device that is malformed or not available here."""
    from fortify.train import device as fdevice

    train = config.train
    name = train.get("device") if isinstance(train, Mapping) else getattr(train, "device", None)
    if name is not None:
        dev = fdevice.resolve(name)
        if model is not None:
            fdevice.model_device(model, "given model")
            fdevice.check_model_device(model, dev, "given model")
        return dev
    here = fdevice.model_device(model, "given model") if model is not None else None
    if here is not None:
        fdevice.resolve(str(here))  # e.g. a model on the meta device: ConfigError, unsupported device
        return here
    return fdevice.default_device()


class StageResultError(ConfigError):
    """A stage needs the result of a stage that did not run before it (or returned another type)."""


@runtime_checkable
class Stage(Protocol):
    """One step of the main job. ``config_class`` validates the recipe section named ``name``."""

    name: ClassVar[str]
    config_class: ClassVar[type | None]

    def run(self, ctx: "RunContext") -> StageResult:
        """Do the work, reading and writing only through ``ctx``; return the stage's typed result."""
        ...


STAGES: Registry[type] = Registry("stage")


def register_stage(cls: type, *, aliases: Sequence[str] = ()) -> type:
    """Class decorator: register a stage class under its ``name`` (help = first docstring line) and
    its ``config_class`` as the recipe section of that name (``aliases``: deprecated names)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"stage class {cls.__name__} needs a non-empty 'name'")
    config_class = getattr(cls, "config_class", None)
    setattr(cls, "config_class", config_class)
    STAGES.register(name, cls)
    register_section(name, config_class, aliases=aliases)
    return cls


@dataclass
class RunContext:
    """Everything a stage may read or write during one run.

    ``metrics`` maps ``stage -> {key: value}`` (the last value of each key), ``results`` the typed
    result of every stage that ran, ``artefacts`` maps a name to a path inside (or outside)
    ``run_dir``, ``sections`` are the report parts in stage order, ``versions`` the packages of the
    run, ``stages`` the names being run, ``resume`` whether an interrupted run continues.
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
    results: dict[str, StageResult] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    resume: bool = False
    stage: str = ""
    _data: dict[str, Any] = field(default_factory=dict, repr=False)
    _device: "torch.device | None" = field(default=None, repr=False)

    # -- device ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The run's device (:func:`run_device`, computed once): data and fortify's models live there."""
        if self._device is None:
            self._device = run_device(self.config, self.model)
        return self._device

    def use_device(self, device: torch.device) -> None:
        """Switch the run to ``device`` (the load stage for an ONNX Runtime model: CPU); cached data follows."""
        from fortify.train.device import describe

        self._device = device
        self._data = {k: (x.to(device), y.to(device)) for k, (x, y) in self._data.items()}
        if "device" in self.versions:
            self.versions["device"] = describe(device)

    # -- results -----------------------------------------------------------------------------
    def result(self, name: str, kind: type[R]) -> R:
        """The result of stage ``name`` as a ``kind``; StageResultError when it has not run."""
        res = self.results.get(name)
        if res is None:
            raise StageResultError(f"{self._who()} needs the result of the {name!r} stage: put {name!r} before it "
                                   "in 'stages'")
        if not isinstance(res, kind):
            raise StageResultError(f"the result of stage {name!r} is a {type(res).__name__}, not a {kind.__name__}")
        return res

    def _who(self) -> str:
        return f"the {self.stage} stage" if self.stage else "this stage"

    def find(self, name: str, kind: type[R]) -> R | None:
        """The result of stage ``name`` when it ran and is a ``kind``, else None."""
        res = self.results.get(name)
        return res if isinstance(res, kind) else None

    @property
    def history(self) -> list[dict[str, Any]]:
        """The per-epoch training records (the train stage's result; empty when it did not run)."""
        from fortify.pipeline.results import TrainResult

        res = self.find("train", TrainResult)
        return res.history if res is not None else []

    # -- data --------------------------------------------------------------------------------
    def data(self, split: str) -> "tuple[torch.Tensor, torch.Tensor]":
        """The configured dataset's ``split`` as ``x (N, C, H, W)`` float32 in [0, 1], ``y (N,)`` int64,
        on the run's device (:attr:`device`).

        Loaded once per run through :func:`fortify.data.load` with ``data.data_dir`` and the
        ``data.train_limit`` / ``data.test_limit`` of the config (a planted backdoor is applied on the
        CPU first), then moved to the device once.
        """
        if split not in self._data:
            from fortify import data as fdata

            d = self.config.data
            limit = d.train_limit if split == "train" else d.test_limit if split == "test" else None
            self._data[split] = fdata.load(d.name, split, data_dir=d.data_dir, limit=limit)
            if split == "train" and getattr(d, "poison", None):  # a planted backdoor (recipes: data.poison)
                from fortify.pipeline.stages.scan import poison_train_split

                self._data[split] = poison_train_split(self, *self._data[split])
        x, y = self._data[split]
        dev = self.device
        if x.device != dev or y.device != dev:
            from fortify.train.device import same

            if not (same(x.device, dev) and same(y.device, dev)):
                self._data[split] = (x.to(dev), y.to(dev))
        return self._data[split]

    def set_data(self, split: str, x: "torch.Tensor", y: "torch.Tensor") -> None:
        """Provide a split directly (library use, tests) instead of loading it (moved to :attr:`device`
        when read: the data is copied, never the model)."""
        self._data[split] = (x, y)

    def require_model(self) -> "nn.Module":
        """``ctx.model``; ConfigError naming the stage when no stage before it provided one."""
        if self.model is None:
            raise ConfigError(f"{self._who()} needs a model: put 'train' or 'load' before it in 'stages'")
        return self.model

    def test_inputs(self, n: int | None) -> "tuple[torch.Tensor, torch.Tensor]":
        """The first ``n`` test images ``(n, C, H, W)`` and labels ``(n,)`` (all for None), checked
        against the model: InputError for NaN / out-of-range inputs, inputs of the wrong shape for the
        model and labels it cannot output (e.g. a 5-class model on a 10-class dataset). The model runs
        once on two images, in eval mode (its flags restored: it may be the caller's model)."""
        from fortify.models.state import eval_mode
        from fortify.validation import check_images, check_labels, check_logits

        model = self.require_model()
        name = self.config.data.name
        x, y = self.data("test")
        if n is not None:
            x, y = x[:n], y[:n]
        check_images(x, name=f"{name} test inputs")
        expected = self.model_meta.get("in_shape")
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise InputError(f"dataset {name!r} has inputs of shape {tuple(x.shape[1:])} but the model expects "
                             f"{tuple(expected)}")
        try:
            with torch.no_grad(), eval_mode(model):
                logits = check_logits(model(x[:2]), min(2, x.shape[0]))
        except RuntimeError as e:
            raise InputError(f"the model cannot take inputs of shape {tuple(x.shape[1:])} from dataset {name!r}: "
                             f"{str(e).splitlines()[0]}") from None
        check_labels(y, x.shape[0], int(logits.shape[1]), name=f"{name} test labels")
        return x, y

    # -- recording ---------------------------------------------------------------------------
    def out_dir(self, name: str) -> Path:
        """``run_dir / name``, created; OutputError when it cannot be."""
        out = self.path(name)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {str(out)!r}: {e.strerror or e}") from None
        return out

    def write_json(self, path: str | Path, doc: Mapping[str, Any]) -> Path:
        """Write ``doc`` as indented JSON (NaN/inf -> null, tensors -> numbers) atomically
        (:func:`fortify.io.write_atomic`); a relative ``path`` is inside the run folder."""
        from fortify.io import write_atomic
        from fortify.report.json_report import jsonable

        p = Path(path)
        # relative paths are inside the run folder; one that already starts with it (a relative
        # run folder, e.g. --out runs) is not joined twice
        target = p if p.is_absolute() or p.is_relative_to(self.run_dir) else self.path(str(p))
        return write_atomic(target, json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")

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
