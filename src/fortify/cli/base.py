"""Shared CLI machinery: the verb registry, an argparse parser that raises instead of exiting,
the common run options, and turning parsed arguments into a validated Config and a RunStore."""
from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, NoReturn, Protocol, Sequence

from fortify.errors import ConfigError, FortifyError, OutputError
from fortify.registry import Registry


class UsageError(FortifyError):
    """A command-line usage mistake (unknown option, missing argument, bad choice)."""


class Verb(Protocol):
    """A CLI verb: ``fortify <name> ...``. ``run`` returns the process exit code."""

    name: ClassVar[str]
    help: ClassVar[str]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the verb's options to its sub-parser."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Execute the verb; return the exit status."""
        ...


VERBS: Registry[type] = Registry("verb")


def register_verb(cls: type) -> type:
    """Class decorator: register a verb under its ``name`` with its one-line ``help``."""
    VERBS.register(cls.name, cls, help=getattr(cls, "help", ""))  # type: ignore[attr-defined]
    return cls


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise :class:`UsageError` (printed as one line by ``main``)."""

    def error(self, message: str) -> NoReturn:
        """Raise UsageError instead of printing usage and exiting.

        The message is prefixed with the verb (``run: argument --seed: ...``), never with the program
        name: ``main`` already prints ``fortify: error:`` in front of it."""
        if message.startswith("argument VERB: invalid choice:"):
            message = "unknown verb " + message.split("invalid choice:", 1)[1].strip().replace(
                " (choose from", "; allowed verbs:").rstrip(")")
        verb = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        raise UsageError(f"{verb}: {message}" if verb else message)


def add_run_options(p: argparse.ArgumentParser, *, recipe: bool = True) -> None:
    """Options shared by the verbs that run the pipeline."""
    if recipe:
        p.add_argument("--recipe", metavar="NAME|PATH", default=None,
                       help="YAML recipe: a shipped name (default: 'default') or a path to a file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, values parsed as YAML (e.g. train.epochs=3 model.name=lenet5)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="runs folder; each run writes DIR/<run-id>/ (default: fortify-runs)")
    add_store_option(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (same as train.seed=N)")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with dataset files, e.g. MNIST IDX files (same as data.data_dir=DIR)")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="your own data: .npz, a folder of .npy files, an image folder (one subfolder per class), "
                        "a CSV/Parquet table (label column 'label'/'target'/'class' or data.label=COL) or CIFAR-10 "
                        "python batches (same as data.path=PATH)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: $FORTIFY_THREADS or 1, fastest for small models on a "
                        "busy machine)")
    p.add_argument("--model-factory", metavar="MOD:FN", default=None,
                   help="your own architecture: an importable package.module:function returning a torch.nn.Module "
                        "(called with in_shape/num_classes when it takes them, plus model.args); this imports and "
                        "RUNS your code (same as model.factory=MOD:FN)")
    p.add_argument("--trust-factory", action="store_true",
                   help="allow loading a model file saved from a --model-factory model: rebuilding it imports and "
                        "runs the factory the file names, so only for files you trust (same as load.trust_factory=true)")
    add_device_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary table")


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda|cuda:N|mps``: the one device of the run (``train.device``; docs/devices.md)."""
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu): the device every stage "
                        "runs on; the model is built or loaded there and the data moved there (int8/ONNX export, "
                        "CPU latency and ONNX Runtime use a CPU copy); same as train.device=DEV")


def check_device_flag(args: argparse.Namespace) -> Any:
    """The ``torch.device`` of ``--device`` (None when not given); UsageError for a malformed or
    unavailable device (one line, exit 2, before anything is written)."""
    name = getattr(args, "device", None)
    if name is None:
        return None
    from fortify.train.device import resolve

    try:
        return resolve(name)
    except ConfigError as e:
        raise UsageError(f"--device: {e}") from None


def device_overrides(args: argparse.Namespace) -> list[str]:
    """``train.device=DEV`` from ``--device`` (checked by :func:`check_device_flag`)."""
    if check_device_flag(args) is None:
        return []
    if getattr(args, "resume", None) is not None:
        raise UsageError("--resume continues a run with its recorded config: drop --device")
    return [f"train.device={_quote(args.device)}"]


def add_resume_option(p: argparse.ArgumentParser) -> None:
    """Add ``--resume ID`` (for verbs whose pipeline trains)."""
    p.add_argument("--resume", metavar="ID", default=None,
                   help="continue an interrupted or failed run (its recorded config, folder and last epoch "
                        "checkpoint); no recipe or overrides allowed")


def thread_count(args: argparse.Namespace) -> int:
    """``--threads`` (or ``$FORTIFY_THREADS``, else 1), checked against the machine
    (:func:`fortify.validation.check_threads`: 1 .. 4 x cores); a bad count is a UsageError."""
    from fortify.validation import check_threads

    given = getattr(args, "threads", None)
    name, n = ("--threads", given) if given is not None else ("FORTIFY_THREADS", os.environ.get("FORTIFY_THREADS", "1"))
    try:
        n = int(n)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {n!r}") from None
    try:
        return check_threads(n, name=name)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def set_threads(args: argparse.Namespace) -> int:
    """Apply the checked :func:`thread_count` to torch; returns the number used."""
    import torch

    n = thread_count(args)
    torch.set_num_threads(n)
    return n


def add_store_option(p: argparse.ArgumentParser) -> None:
    """Add ``--store PATH``."""
    p.add_argument("--store", metavar="PATH", default=None,
                   help="run store SQLite file (default: $FORTIFY_STORE or <out>/fortify.db)")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """Explicit options as overrides (applied after the KEY=VALUE ones, so they win)."""
    out: list[str] = []
    if getattr(args, "out", None) is not None:
        out.append(f"output.dir={_quote(args.out)}")
    if getattr(args, "seed", None) is not None:
        out.append(f"train.seed={int(args.seed)}")
    if getattr(args, "data_dir", None) is not None:
        out.append(f"data.data_dir={_quote(args.data_dir)}")
    if getattr(args, "data", None) is not None:
        out.append(f"data.path={_quote(args.data)}")
    if getattr(args, "model_factory", None) is not None:
        out.append(f"model.factory={_quote(args.model_factory)}")
    if getattr(args, "trust_factory", False):
        out.append("load.trust_factory=true")
    return out + device_overrides(args)


def _quote(s: str) -> str:
    """A YAML scalar that parses back to the string ``s``."""
    return "'" + str(s).replace("'", "''") + "'"


def comma_names(text: str, flag: str, *, allow_empty: bool = False) -> list[str]:
    """The names of ``--flag a,b`` (stripped, empty items dropped); UsageError when none is left."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names and not allow_empty:
        raise UsageError(f"{flag} needs at least one name, e.g. {flag} a,b")
    return names


def names_override(key: str, names: Sequence[str]) -> str:
    """The ``KEY=['a', 'b']`` override of a list of names (each quoted as a YAML string)."""
    return f"{key}=[{', '.join(_quote(n) for n in names)}]"


def build_raw(args: argparse.Namespace, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Recipe (``--recipe``) + ``KEY=VALUE`` overrides + ``extra`` + flag overrides, unvalidated."""
    from fortify.config import apply_overrides, read_recipe

    raw = read_recipe(getattr(args, "recipe", None))
    return apply_overrides(raw, [*getattr(args, "overrides", []), *extra, *flag_overrides(args)])


def store_path(args: argparse.Namespace, out_dir: str | Path | None, configured: str | None = None) -> Path:
    """``--store`` > ``output.store`` > ``$FORTIFY_STORE`` > ``<out_dir>/fortify.db``."""
    from fortify.store import default_store_path

    if getattr(args, "store", None):
        return Path(args.store)
    if configured:
        return Path(configured)
    if out_dir is None and getattr(args, "out", None):
        out_dir = args.out
    return default_store_path(out_dir)


def run_with_config(args: argparse.Namespace, verb: str, argv: Sequence[str], raw: dict[str, Any],
                    stages: Sequence[str] | None = None,
                    show: Callable[[Any, bool], None] | None = None) -> int:
    """Validate ``raw`` (or reopen ``--resume ID`` with its recorded config), open the store, run
    the pipeline, print the summary, then ``show(ctx, quiet)`` when given (verb-specific output).

    Nothing is created before the configuration and ``--threads`` are valid; a failing stage marks the
    run failed (its folder, config.json and report.json are kept) and its FortifyError reaches ``main``.
    Warnings about the configuration (e.g. an eps whose ball covers the whole input box) are printed
    on stderr before the run and again under the summary."""
    from rich.console import Console

    from fortify.cli.output import print_summary
    from fortify.pipeline import run_pipeline
    from fortify.progress import log_console

    err = log_console()  # one message = one line in a log file (rich would wrap it at 80 columns)
    resume = getattr(args, "resume", None)
    with deprecations(err):
        if resume is not None:
            cfg, store, resume = _reopen(args, verb, resume)
        else:
            cfg, store = _prepare(args, raw, stages)
    warnings = config_warnings(cfg)
    for w in warnings:
        err.print(f"fortify: warning: {w}", highlight=False, markup=False, soft_wrap=True)
    ctx = run_pipeline(cfg, verb=verb, argv=list(argv), store=store, console=err, quiet=args.quiet, resume=resume)
    print_summary(ctx, store, quiet=args.quiet)
    out = Console()
    for w in warnings:
        out.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True, style=None if args.quiet else "red")
    if show is not None:
        show(ctx, args.quiet)
    return 0


@contextlib.contextmanager
def deprecations(err: Any) -> Iterator[None]:
    """Inside, a recipe's deprecated name (:class:`fortify.config.DeprecatedNameWarning`) is printed as
    one ``fortify: warning:`` line on ``err`` (each once); other warnings go their usual way."""
    from fortify.config import DeprecatedNameWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecatedNameWarning)
        try:
            yield
        finally:
            seen: set[str] = set()
            for w in caught:
                text = str(w.message)
                if issubclass(w.category, DeprecatedNameWarning):
                    if text not in seen:
                        seen.add(text)
                        err.print(f"fortify: warning: {text}", highlight=False, markup=False, soft_wrap=True)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def config_warnings(cfg: Any) -> list[str]:
    """One line per questionable but valid setting of ``cfg`` (see :func:`fortify.pipeline.checks.eps_box_warnings`)."""
    from fortify.pipeline.checks import eps_box_warnings

    return eps_box_warnings(cfg)


def _prepare(args: argparse.Namespace, raw: dict[str, Any], stages: Sequence[str] | None) -> tuple[Any, Any]:
    """A new run: validate the config and ``--threads``, then create the runs folder and open the store."""
    from fortify.pipeline import prepare_out_dir, resolve
    from fortify.store import RunStore

    if stages is not None:
        raw = {**raw, "stages": list(stages)}
    cfg = resolve(raw)
    set_threads(args)
    _check_run_device(cfg)
    prepare_out_dir(cfg.output.dir)
    return cfg, RunStore(store_path(args, cfg.output.dir, cfg.output.store))


def _check_run_device(cfg: Any) -> None:
    """``train.device`` given as KEY=VALUE or in a recipe (``--device`` is checked earlier): a device this
    machine lacks is the same one-line UsageError, before the runs folder or the store is created."""
    from fortify.pipeline.base import run_device

    try:
        run_device(cfg)
    except ConfigError as e:
        raise UsageError(f"train.device: {e}") from None


def _reopen(args: argparse.Namespace, verb: str, resume: str) -> tuple[Any, Any, str]:
    """``--resume ID``: the recorded config of a failed or interrupted run of ``verb``, its store and full id."""
    from fortify.pipeline import resolve
    from fortify.store import RunStore

    if getattr(args, "model_path", None) is not None or getattr(args, "explicit", False):
        raise UsageError("--resume continues a run with its recorded config: drop MODEL, options and KEY=VALUE")
    if getattr(args, "recipe", None) or getattr(args, "overrides", None):
        raise UsageError("--resume continues a run with its recorded config: drop --recipe and KEY=VALUE")
    device_overrides(args)  # a bad --device is a usage error; a good one with --resume too (recorded config)
    set_threads(args)
    path = store_path(args, getattr(args, "out", None))
    if not path.is_file():
        raise OutputError(f"no run store at {str(path)!r} to resume from (pass --store PATH or --out DIR)")
    store = RunStore(path)
    rec = store.get_run(resume)
    if rec.status == "ok":
        raise ConfigError(f"run {rec.id} finished ok; nothing to resume")
    if rec.verb != verb:
        raise ConfigError(f"run {rec.id} was made by 'fortify {rec.verb}'; resume it with that verb")
    return resolve(rec.config), store, rec.id


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
