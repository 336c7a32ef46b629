"""Run configuration: YAML recipes plus ``key=value`` overrides, validated at the edge.

A recipe is a YAML mapping with the core sections ``data``, ``model``, ``task``, ``train``,
``output`` and ``stages`` (the ordered list of pipeline stages), plus one optional section per
pipeline stage. Overrides are dotted keys whose values are parsed as YAML (``train.epochs=3``,
``stages=[train,accuracy]``, ``model.args.hidden=64``).

This module is the recipe language and imports no pillar and not the pipeline. The application
(:mod:`fortify.pipeline`) registers, when it is imported, the dataclass of every stage section and
of the ``train`` section (:func:`register_section`, with deprecated names as ``aliases``) and the
checks that need the pillars' registries (:func:`register_check`: dataset / model / task names,
``task.args`` against the task's constructor). So:

* :func:`parse_config` validates the structure and the core sections ``data``, ``model``, ``task``,
  ``output``, ``stages`` with no pillar imported; sections it has no class for stay plain mappings
  (``Config.complete`` is False).
* :func:`resolve` / :func:`load_config` validate everything: every section is built by its
  registered class (threats become :class:`fortify.ThreatModel` objects, per-method options are
  checked against the method's constructor) and the registered checks run. When no application has
  registered yet they import :data:`APPLICATION` first (library callers that never imported it).

Every mistake raises :class:`fortify.errors.ConfigError` with one line naming the bad key and the
allowed keys or values; malformed YAML names the file and line.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

import yaml

from fortify.errors import ConfigError, FortifyError, UnknownNameError
from fortify.threat import ThreatModel

DEFAULT_RECIPE = "default"
CORE_SECTIONS = ("data", "model", "task", "train", "stages", "output")
DEFAULT_STAGES = ("train", "accuracy", "save", "report")
#: the module that registers the stage sections and checks (imported by :func:`resolve` on demand)
APPLICATION = "fortify.pipeline"


class DeprecatedNameWarning(FutureWarning):
    """A recipe uses a stage or section name that was renamed; it keeps working for one release."""


@dataclass
class DataConfig:
    """``data`` section: which dataset, where its files are, optional size limits (first N rows).

    ``path``: the user's own data instead of a registered dataset -- an ``.npz`` file, a folder of
    ``.npy`` files, an image folder (one subfolder per class), a CSV/Parquet table or CIFAR-10's
    python batches (:func:`fortify.data.files.from_path`); it is registered as a dataset and
    ``name`` becomes its registered name. ``label`` (table label column), ``test_fraction`` (split
    drawn when the files hold no test split) and ``image_size`` ([H, W] to resize images to)
    apply to ``path`` only.
    """

    name: str = "mnist-5k"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    path: str | None = None
    label: str | None = None
    test_fraction: float = 0.2
    image_size: list[int] | None = None
    #: a backdoor planted in the train split, e.g. ``{kind: badnets, rate: 0.1, target: 0}``
    #: (:mod:`fortify.audit.backdoor`; applied by ``RunContext.data``, indices written to ``poison.json``)
    poison: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for key in ("train_limit", "test_limit"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"data.{key} must be null or an integer >= 1, got {v!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"data.image_size must be [H, W] with positive ints, got {self.image_size!r}")


@dataclass
class ModelConfig:
    """``model`` section: architecture name, its arguments, whether to wrap it in Normalized, and the
    weight initialisation (``default``: PyTorch's; ``ibp``: :func:`fortify.models.init.ibp_init`, the
    IBP initialisation of Shi et al. 2021 for certified training)."""

    name: str = "small-cnn"
    normalize: bool = True
    args: dict[str, Any] = field(default_factory=dict)
    init: Literal["default", "ibp"] = "default"
    #: ``package.module:function`` returning an nn.Module (the user's own code, imported and run);
    #: replaces ``name`` when set (see :func:`fortify.models.factory_model`)
    factory: str | None = None


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
    """A validated run configuration.

    ``sections`` maps a stage name to its config dataclass (a plain mapping when the config was only
    parsed, ``complete`` False); ``train`` is the training pillar's ``TrainConfig``. ``raw`` is the
    validated input (deprecated names translated), from which a parsed config is completed.
    """

    data: DataConfig
    model: ModelConfig
    task: TaskConfig
    train: Any  # fortify.train.TrainConfig (a mapping while not complete)
    output: OutputConfig
    stages: list[str]
    sections: dict[str, Any] = field(default_factory=dict)  # stage name -> its config dataclass
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    complete: bool = True

    @property
    def seed(self) -> int:
        """The run's seed (``train.seed``, 0 by default)."""
        if isinstance(self.train, Mapping):
            return int(self.train.get("seed", 0) or 0)
        return int(self.train.seed)

    def section(self, stage: str) -> Any:
        """The validated config of ``stage`` (``None`` when the stage has no config class)."""
        return self.sections.get(stage)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data (stored with every run; :func:`resolve` reads it
        back: threats are written as ``NORM:EPS`` strings with every digit of eps)."""
        out: dict[str, Any] = {
            "data": plain(self.data), "model": plain(self.model), "task": plain(self.task),
            "train": plain(self.train), "stages": list(self.stages), "output": plain(self.output),
        }
        for name, sec in self.sections.items():
            out[name] = plain(sec)
        return out


def threat_text(t: ThreatModel) -> str:
    """``NORM:EPS`` with the shortest text that reads back to the same eps (``str(t)`` rounds to 6 digits)."""
    eps = float(t.eps)
    short = f"{eps:g}"
    return f"{t.norm}:{short if float(short) == eps else repr(eps)}"


def plain(v: Any) -> Any:
    """``v`` as plain data: dataclasses field by field, ThreatModels as ``NORM:EPS`` strings (a threat
    with other bounds, a mask or a scale as the mapping :meth:`ThreatModel.to_spec` writes, which
    :meth:`ThreatModel.coerce` reads back to an equal threat)."""
    if isinstance(v, ThreatModel):
        if v.per_feature or tuple(float(b) for b in v.bounds) != (0.0, 1.0):
            return v.to_spec()
        return threat_text(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return copy.deepcopy(v)


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
    if tp is ThreatModel:
        return ThreatModel.coerce(v, where=key)  # ThreatModelError naming the key
    if origin is list and args and args[0] is ThreatModel and not isinstance(v, (list, tuple)):
        v = [v]  # one threat where a list of threats is expected
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


def check_name(registry: Any, name: str, key: str) -> None:
    """UnknownNameError prefixed with ``key`` unless ``registry`` (a :class:`fortify.registry.Registry`) has ``name``."""
    try:
        registry.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{key}: {e}") from None


# -- sections the application registers -------------------------------------------------------
_SECTIONS: dict[str, type | None] = {}  # stage (or ``train``) -> its dataclass; None: takes no section
_ALIASES: dict[str, str] = {}  # deprecated stage / section name -> current name
_CHECKS: list[Callable[["Config"], None]] = []


def register_section(name: str, cls: type | None, *, aliases: Sequence[str] = ()) -> None:
    """Declare the recipe section ``name`` (a stage, or ``train``) validated by the dataclass ``cls``
    (``None``: a stage that takes no section). ``aliases`` are deprecated names of it: a recipe using
    one in ``stages`` or as a section keeps working and warns once (:class:`DeprecatedNameWarning`)."""
    if name in _SECTIONS and _SECTIONS[name] is not cls:
        raise ConfigError(f"section {name!r} is already registered with {_SECTIONS[name]!r}")
    _SECTIONS[name] = cls
    for old in aliases:
        _ALIASES[old] = name


def register_check(check: Callable[["Config"], None]) -> Callable[["Config"], None]:
    """Run ``check(config)`` at the end of every full validation (``check_names=True``)."""
    if check not in _CHECKS:
        _CHECKS.append(check)
    return check


def _translate_aliases(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with deprecated stage / section names replaced by the current ones (one warning per name)."""
    out = dict(raw)
    for old, new in _ALIASES.items():
        where: list[str] = []
        stages = out.get("stages")
        if isinstance(stages, list) and old in stages:
            if new in stages:
                raise ConfigError(f"'stages' lists {old!r} and {new!r}, the same stage ({old!r} is its old name)")
            out["stages"] = [new if s == old else s for s in stages]
            where.append("stages")
        if old in out:  # applied over the new section, as an override with the old name on a new recipe means
            out[new] = {**_mapping(out.get(new), new), **_mapping(out.pop(old), old)}
            where.append(f"section '{old}:'")
        if where:
            warnings.warn(f"the stage {old!r} is now called {new!r}; the old name (in {' and '.join(where)}) "
                          "works for one more release", DeprecatedNameWarning, stacklevel=3)
    return out


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Validate ``raw`` without any pillar: its structure, the ``stages`` list and the core sections
    ``data``, ``model``, ``task`` and ``output``. Sections with a registered class are built too (none
    until the application is imported); the others stay plain mappings and ``complete`` is False."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a recipe must be a mapping of sections, got {_tname(raw)}")
    raw = _translate_aliases(raw)
    known = bool(_SECTIONS)  # an application registered: every section is known
    allowed = list(CORE_SECTIONS) + [n for n in sorted(_SECTIONS) if n not in CORE_SECTIONS]
    for k in raw:
        if not isinstance(k, str) or (known and k not in allowed):
            raise ConfigError(f"unknown config section {str(k)!r}; allowed sections: {', '.join(allowed)}")
    stages = raw.get("stages", None)
    if stages is None:
        stages = list(DEFAULT_STAGES)
    stage_list = sorted(_SECTIONS)
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages) or not stages:
        raise ConfigError(f"'stages' must be a non-empty list of stage names; allowed: {', '.join(stage_list)}")
    if known:
        for s in stages:
            if s not in _SECTIONS:
                raise UnknownNameError(f"stages: unknown stage {s!r}; allowed: {', '.join(stage_list)}")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"'stages' lists a stage twice: {stages}")
    train_cls = _SECTIONS.get("train")
    train: Any = build_section(train_cls, raw.get("train"), "train") if train_cls is not None else \
        _mapping(raw.get("train"), "train")
    cfg = Config(
        data=build_section(DataConfig, raw.get("data"), "data"),
        model=build_section(ModelConfig, raw.get("model"), "model"),
        task=build_section(TaskConfig, raw.get("task"), "task"),
        train=train,
        output=build_section(OutputConfig, raw.get("output"), "output"),
        stages=list(stages),
        raw=copy.deepcopy(dict(raw)),
        complete=known and train_cls is not None,
    )
    for name in (k for k in raw if k not in CORE_SECTIONS):
        if name not in _SECTIONS:
            cfg.sections[name] = _mapping(raw[name], name)  # validated once the application is known
    for name, cls in sorted(_SECTIONS.items()):
        if name in CORE_SECTIONS:
            continue
        if name in raw and cls is None:
            raise ConfigError(f"stage {name!r} takes no configuration; remove the {name!r} section")
        if cls is not None and (name in stages or name in raw):
            cfg.sections[name] = build_section(cls, raw.get(name), name)
    return cfg


def _mapping(data: Any, where: str) -> dict[str, Any]:
    """A section kept as given (a mapping) until its class is known."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {where!r} must be a mapping of keys, got {_tname(data)} {data!r}")
    return copy.deepcopy(dict(data))


def resolve(raw: Mapping[str, Any], *, check_names: bool = True) -> Config:
    """Validate a raw recipe dict (after overrides) into a complete :class:`Config`.

    Every section is built by the class its stage registered and, with ``check_names``, the
    registered checks run (dataset, model, task and stage names against their registries, model
    and task arguments against their constructors). Imports :data:`APPLICATION` first when no
    application has registered its sections yet.
    """
    if not _SECTIONS:
        importlib.import_module(APPLICATION)  # registers the stage sections and checks
    cfg = parse_config(raw)
    if check_names:
        for check in _CHECKS:
            check(cfg)
    if "train" in cfg.stages and getattr(cfg.train, "nproc", 1) > 1:
        from fortify.validation import check_threads

        check_threads(cfg.train.nproc, name="train.nproc")  # one process per worker: bounded by the machine
    return cfg


def load_config(recipe: str | Path | None = None, overrides: Iterable[str] = (), *,
                check_names: bool = True) -> Config:
    """Read ``recipe`` (name or path; ``default`` when None), apply ``overrides``, validate."""
    return resolve(apply_overrides(read_recipe(recipe), overrides), check_names=check_names)


__all__ = ["Config", "DataConfig", "ModelConfig", "TaskConfig", "OutputConfig", "load_config", "resolve",
           "parse_config", "register_section", "register_check", "read_recipe", "find_recipe", "list_recipes",
           "recipes_dir", "apply_overrides", "build_section", "check_value", "check_name",
           "parse_yaml", "plain", "threat_text", "DeprecatedNameWarning",
           "DEFAULT_RECIPE", "DEFAULT_STAGES", "APPLICATION"]
