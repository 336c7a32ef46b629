"""Run configuration: YAML recipes plus ``key=value`` overrides, validated at the edge.

A recipe is a YAML mapping with the core sections ``data``, ``model``, ``task``, ``train``,
``output`` and ``stages`` (the ordered list of pipeline stages), plus one optional section per
pipeline stage, validated by the config dataclass the stage registered (see
:mod:`fortify.pipeline`). Overrides are dotted keys whose values are parsed as YAML
(``train.epochs=3``, ``stages=[train,evaluate]``, ``model.args.hidden=64``).

Every mistake raises :class:`fortify.errors.ConfigError` with one line naming the bad key and the
allowed keys or values; malformed YAML names the file and line.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Union

import yaml

from fortify.errors import ConfigError, FortifyError, UnknownNameError

DEFAULT_RECIPE = "default"
CORE_SECTIONS = ("data", "model", "task", "train", "stages", "output")


@dataclass
class DataConfig:
    """``data`` section: which dataset, where its files are, optional size limits (first N rows)."""

    name: str = "mnist-5k"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None

    def __post_init__(self) -> None:
        for key in ("train_limit", "test_limit"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"data.{key} must be null or an integer >= 1, got {v!r}")


@dataclass
class ModelConfig:
    """``model`` section: architecture name, its arguments, whether to wrap it in Normalized, and the
    weight initialisation (``default``: PyTorch's; ``ibp``: :func:`fortify.train.init.ibp_init`, the
    IBP initialisation of Shi et al. 2021 for certified training)."""

    name: str = "small-cnn"
    normalize: bool = True
    args: dict[str, Any] = field(default_factory=dict)
    init: Literal["default", "ibp"] = "default"


@dataclass
class TaskConfig:
    """``task`` section: the training objective (``fortify.train.tasks.TASKS``) and its arguments."""

    name: str = "standard"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputConfig:
    """``output`` section: the runs folder (one sub-folder per run) and the run store file."""

    dir: str = "fortify-runs"
    store: str | None = None


@dataclass
class Config:
    """A fully resolved, validated run configuration."""

    data: DataConfig
    model: ModelConfig
    task: TaskConfig
    train: Any  # fortify.train.TrainConfig
    output: OutputConfig
    stages: list[str]
    sections: dict[str, Any] = field(default_factory=dict)  # stage name -> its config dataclass

    @property
    def seed(self) -> int:
        """The run's seed (``train.seed``)."""
        return int(self.train.seed)

    def section(self, stage: str) -> Any:
        """The validated config of ``stage`` (``None`` when the stage has no config class)."""
        return self.sections.get(stage)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data (stored with every run)."""
        out: dict[str, Any] = {
            "data": dataclasses.asdict(self.data),
            "model": dataclasses.asdict(self.model),
            "task": dataclasses.asdict(self.task),
            "train": dataclasses.asdict(self.train),
            "stages": list(self.stages),
            "output": dataclasses.asdict(self.output),
        }
        for name, sec in self.sections.items():
            out[name] = dataclasses.asdict(sec) if dataclasses.is_dataclass(sec) else sec
        return out


# -- recipes -----------------------------------------------------------------------------------
def recipes_dir() -> Path:
    """The folder of the recipes shipped with the package (``fortify/recipes``)."""
    return Path(str(resources.files("fortify") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the shipped recipes."""
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def find_recipe(name_or_path: str | Path | None) -> Path:
    """Resolve a recipe name (``default``) or a path to a YAML file."""
    if name_or_path is None:
        name_or_path = DEFAULT_RECIPE
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir():
        raise ConfigError(f"recipe {str(name_or_path)!r} is a folder; give a YAML file or a shipped recipe name")
    s = str(name_or_path)
    if "/" not in s and "\\" not in s and not s.endswith((".yaml", ".yml")):
        shipped = recipes_dir() / f"{s}.yaml"
        if shipped.is_file():
            return shipped
        raise UnknownNameError(f"unknown recipe {s!r}; allowed: {', '.join(list_recipes())} or a path to a YAML file")
    raise ConfigError(f"recipe file {s!r} does not exist")


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` turning syntax errors into one-line ConfigErrors with the line number."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        what = " ".join(str(e.problem or e.context or "syntax error").split())
        raise ConfigError(f"malformed YAML in {source}{line}: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {source}: {' '.join(str(e).split())}") from None


def read_recipe(name_or_path: str | Path | None = None) -> dict[str, Any]:
    """Load a recipe file into a raw (unvalidated) dict."""
    path = find_recipe(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:  # an empty file, or only comments: almost always a mistake (wrong file, failed write)
        raise ConfigError(f"recipe {str(path)!r} is empty; write at least one section (e.g. 'train: {{epochs: 3}}'), "
                          "or write '{}' to run with every default")
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw


# -- overrides ---------------------------------------------------------------------------------
def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` applied (values parsed as YAML)."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"override {item!r} has an empty key")
        value = parse_yaml(text, f"override {key}") if text.strip() else None
        set_dotted(out, parts, value)
    return out


def set_dotted(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``raw[p0][p1]...[pn] = value``, creating intermediate mappings."""
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {'.'.join(parts)!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


# -- validation --------------------------------------------------------------------------------
def build_section(cls: type, data: Any, where: str) -> Any:
    """Build the dataclass ``cls`` from ``data`` (a mapping), checking keys and value types.

    Unknown keys name the allowed keys; ``Literal`` fields name the allowed values; any
    ``ConfigError``/``ValueError``/``TypeError`` from the class' own validation is re-raised as
    one ConfigError prefixed with the section name.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {where!r} must be a mapping of keys, got {_tname(data)} {data!r}")
    flds = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in flds]
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' + str(unknown[0])!r}; allowed keys in {where!r}: {', '.join(flds)}")
    hints = typing.get_type_hints(cls)
    values = {k: check_value(hints.get(k, Any), v, f"{where}.{k}") for k, v in data.items()}
    factory = getattr(cls, "from_dict", None)
    try:
        return factory(values) if callable(factory) else cls(**values)
    except FortifyError as e:
        msg = str(e).replace(f"{cls.__name__}.", f"{where}.")  # 'TrainConfig.epochs' -> 'train.epochs'
        raise type(e)(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except (TypeError, ValueError) as e:
        msg = str(e).replace(f"{cls.__name__}.", f"{where}.")
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def check_value(tp: Any, v: Any, key: str) -> Any:
    """Check (and lightly coerce) one value against a type annotation; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return v
    if origin is Literal:
        if v not in args:
            raise ConfigError(f"bad value {v!r} for {key!r}; allowed values: {', '.join(map(str, args))}")
        return v
    if origin in (Union, getattr(types, "UnionType", Union)):
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(a, v, key)
            except ConfigError as e:
                errors.append((a, str(e)))
        if len(errors) == 1 and (typing.get_origin(errors[0][0]) in (Literal, list, tuple) or
                                 errors[0][0] in (list, tuple)):
            raise ConfigError(errors[0][1])  # the specific message (allowed values, bad element)
        raise ConfigError(f"bad value {v!r} for {key!r}; expected {_describe(tp)}")
    if tp is bool:
        if isinstance(v, bool):
            return v
    elif tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(v, str):
            return v
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(v, (list, tuple)):
            homogeneous = origin is list or (len(args) == 2 and args[1] is Ellipsis)
            inner = args[0] if args and homogeneous else Any
            return [check_value(inner, x, f"{key}[{i}]") for i, x in enumerate(v)]
    elif origin is dict or tp is dict:
        if isinstance(v, dict):
            return dict(v)
    else:
        return v
    raise ConfigError(f"bad value {v!r} for {key!r}; expected {_describe(tp)}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, getattr(types, "UnionType", Union)):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    o = typing.get_origin(tp) or tp
    return {list: "a list", tuple: "a list", dict: "a mapping"}.get(o, getattr(tp, "__name__", str(tp)))


def _tname(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check_name(registry: Any, name: str, key: str) -> None:
    try:
        registry.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{key}: {e}") from None


def resolve(raw: Mapping[str, Any], *, check_names: bool = True) -> Config:
    """Validate a raw recipe dict (after overrides) into a :class:`Config`.

    ``check_names`` also checks dataset, model, task and stage names against their registries.
    """
    from fortify.pipeline import STAGES  # registers the built-in stages
    from fortify.train.config import TrainConfig

    if not isinstance(raw, Mapping):
        raise ConfigError(f"a recipe must be a mapping of sections, got {_tname(raw)}")
    allowed = list(CORE_SECTIONS) + [n for n in STAGES.names() if n not in CORE_SECTIONS]
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"unknown config section {str(k)!r}; allowed sections: {', '.join(allowed)}")
    stages = raw.get("stages", None)
    if stages is None:
        stages = ["train", "evaluate", "save", "report"]
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages) or not stages:
        raise ConfigError(f"'stages' must be a non-empty list of stage names; allowed: {', '.join(STAGES.names())}")
    for s in stages:
        _check_name(STAGES, s, "stages")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"'stages' lists a stage twice: {stages}")
    cfg = Config(
        data=build_section(DataConfig, raw.get("data"), "data"),
        model=build_section(ModelConfig, raw.get("model"), "model"),
        task=build_section(TaskConfig, raw.get("task"), "task"),
        train=build_section(TrainConfig, raw.get("train"), "train"),
        output=build_section(OutputConfig, raw.get("output"), "output"),
        stages=list(stages),
    )
    for name in STAGES.names():
        if name in CORE_SECTIONS:
            continue
        spec = STAGES.get(name)
        cls = getattr(spec, "config_class", None)
        if name in raw and cls is None:
            raise ConfigError(f"stage {name!r} takes no configuration; remove the {name!r} section")
        if cls is not None and (name in stages or name in raw):
            cfg.sections[name] = build_section(cls, raw.get(name), name)
    if check_names:
        from fortify.data import DATASETS
        from fortify.models import MODELS
        from fortify.train.tasks import TASKS

        _check_name(DATASETS, cfg.data.name, "data.name")
        _check_name(MODELS, cfg.model.name, "model.name")
        _check_name(TASKS, cfg.task.name, "task.name")
        _check_args(MODELS.get(cfg.model.name), cfg.model.args, "model.args", {"in_shape", "num_classes"})
        _check_args(TASKS.get(cfg.task.name), cfg.task.args, "task.args", set())
        if "train" in cfg.stages:
            _check_task_values(TASKS.get(cfg.task.name), cfg.task.args)
    if "train" in cfg.stages and getattr(cfg.train, "nproc", 1) > 1:
        from fortify.validation import check_threads

        check_threads(cfg.train.nproc, name="train.nproc")  # one process per worker: bounded by the machine
    return cfg


def _check_task_values(factory: Any, args: Mapping[str, Any]) -> None:
    """Build the task once from ``task.args`` so a bad value (``threat: linf:-1``, ``steps: 0``) fails
    before any run is created, naming its key and value. A task that cannot be built without
    run-time inputs (a distillation teacher) is left to the train stage."""
    try:
        factory()
    except (FortifyError, TypeError, ValueError):
        return
    try:
        factory(**args)
        return
    except (FortifyError, TypeError, ValueError) as e:
        error: Exception = e
    for key, value in args.items():  # the first argument that fails on its own is the one to name
        try:
            factory(**{key: value})
        except (FortifyError, TypeError, ValueError) as e:
            kind = type(e) if isinstance(e, ConfigError) else ConfigError
            raise kind(f"task.args.{key}={_show(value)}: {e}") from None
    kind = type(error) if isinstance(error, ConfigError) else ConfigError
    raise kind(f"task.args: {error}") from None


def _show(value: Any) -> str:
    """A config value as the user wrote it (``linf:-1``, ``[linf:0.3, l2:2]``, ``3``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


# -- warnings ----------------------------------------------------------------------------------
def _threat_specs(cfg: Config) -> list[tuple[str, str]]:
    """``(key, "norm:eps")`` of every threat the stages of ``cfg`` will use (``task.args.threat``,
    ``robustness.threats[i]``, ``certify.threat``, ...): keys named ``threat``/``threats`` holding strings."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                sub = f"{key}.{k}"
                if k in ("threat", "threats") and isinstance(v, str):
                    found.append((sub, v))
                elif k in ("threat", "threats") and isinstance(v, (list, tuple)):
                    found.extend((f"{sub}[{i}]", t) for i, t in enumerate(v) if isinstance(t, str))
                else:
                    walk(v, sub)

    if "train" in cfg.stages:
        walk(cfg.task.args, "task.args")
    for name, sec in cfg.sections.items():
        if name in cfg.stages and dataclasses.is_dataclass(sec) and not isinstance(sec, type):
            walk(dataclasses.asdict(sec), name)
    return found


def eps_box_warnings(cfg: Config) -> list[str]:
    """One warning line per threat of ``cfg`` whose ball covers the whole input box ``[0, 1]^d``.

    With ``span = hi - lo`` and ``d`` input coordinates (the dataset's ``C*H*W``), the box's diameter is
    ``span`` in linf, ``span*sqrt(d)`` in l2 and ``span*d`` in l1
    (:func:`fortify.evaluate.eps_checks.box_covering_eps`).
    An eps at or beyond it lets every image reach every other one: robust accuracy is ~0 by construction
    and says nothing about the model. Unknown datasets or unparseable threats give no warning (they fail
    validation elsewhere)."""
    import math

    from fortify.evaluate.eps_checks import box_covering_eps
    from fortify.threat import ThreatModel

    try:
        from fortify.data import DATASETS

        dim = math.prod(DATASETS.get(cfg.data.name).input_shape)
    except FortifyError:
        return []
    out = []
    for key, spec in _threat_specs(cfg):
        try:
            thr = ThreatModel.parse(spec)
        except FortifyError:
            continue
        cover = box_covering_eps(thr, dim)
        if thr.eps >= cover:
            out.append(f"{key} {thr}: eps {thr.eps:g} >= {cover:.4g}, the {thr.norm} diameter of the input box "
                       f"[{thr.bounds[0]:g}, {thr.bounds[1]:g}]^{dim}, so the ball covers every input and any "
                       "image can become any other: robust accuracy is ~0 by construction, not a property of "
                       "the model")
    return out


def _check_args(factory: Any, args: Mapping[str, Any], key: str, reserved: set[str]) -> None:
    """Unknown keyword arguments of a factory/class fail here, before any run is created."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n not in reserved and n != "self"
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for k in args:
        if k not in allowed:
            raise ConfigError(f"unknown config key {key + '.' + str(k)!r}; allowed keys in {key!r}: "
                              f"{', '.join(allowed) or '(none)'}")


def load_config(recipe: str | Path | None = None, overrides: Iterable[str] = (), *,
                check_names: bool = True) -> Config:
    """Read ``recipe`` (name or path; ``default`` when None), apply ``overrides``, validate."""
    return resolve(apply_overrides(read_recipe(recipe), overrides), check_names=check_names)


__all__ = ["Config", "DataConfig", "ModelConfig", "TaskConfig", "OutputConfig", "load_config", "resolve",
           "read_recipe", "find_recipe", "list_recipes", "recipes_dir", "apply_overrides", "build_section",
           "check_value", "parse_yaml", "eps_box_warnings", "DEFAULT_RECIPE"]
