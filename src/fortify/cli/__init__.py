"""The ``fortify`` command line: ``fortify <verb> [options] [KEY=VALUE ...]``.

Each verb is one module in this package registering a class in :data:`VERBS` (see
:mod:`fortify.cli.base`); every module here is imported, so a pillar adds a verb by adding a file.
Any :class:`fortify.errors.FortifyError` (and any usage error) becomes one line
``fortify: error: ...`` on stderr and exit status 2, without a traceback; so do the machine's limits
(``MemoryError``, torch's out-of-memory, no disk space, too many open files), see :func:`resource_problem`.
"""
from __future__ import annotations

import errno
import importlib
import pkgutil
import sys
from typing import Sequence

from fortify.cli.base import VERBS, Parser, UsageError, register_verb
from fortify.errors import FortifyError

_INFRA = {"base", "output"}

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _INFRA and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")


def build_parser() -> Parser:
    """The top-level parser with one sub-parser per registered verb."""
    import fortify

    p = Parser(prog="fortify", description="fortify: make neural networks robust, compact and trustworthy, and "
               "prove it with measured numbers. Runs go to fortify-runs/<run-id>/ and the run store "
               "fortify-runs/fortify.db.",
               epilog="Run 'fortify <verb> --help' for a verb's options. Start with: fortify run")
    p.add_argument("--version", action="version", version=f"fortify {fortify.__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for name, cls in VERBS.items():
        verb = cls()
        text = VERBS.help(name)
        sp = sub.add_parser(name, help=text, description=getattr(cls, "description", text))
        verb.add_arguments(sp)
        sp.set_defaults(_verb=verb)
    return p


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split()) or "unknown error"


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def resource_problem(exc: BaseException) -> str | None:
    """The one-line message for an exception caused by the machine's limits (out of memory, no disk
    space, too many open files), looking through the whole ``__context__``/``__cause__`` chain (a
    ``MemoryError`` while a database transaction is open surfaces as sqlite's 'cannot rollback');
    ``None`` when the exception is not a resource problem."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower()
        if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
                "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text)):
            return ("out of memory; use fewer --threads, a smaller batch (train.batch_size=N) or fewer images "
                    "(data.train_limit=N, --n N)")
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            where = f" writing {e.filename!r}" if e.filename else ""
            return f"no space left on the device{where}; free some space or pass --out DIR on another disk"
        if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
            return "too many open files; raise the limit (ulimit -n) or use fewer --threads"
        if isinstance(e, OSError) and e.errno == errno.ENOMEM:
            return "out of memory; use fewer --threads, a smaller batch or fewer images"
        e = e.__cause__ or e.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fortify`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        if not args_list:
            parser.print_help()
            return 0
        args, extra = parser.parse_known_args(args_list)
        if extra:
            if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides = [*args.overrides, *extra]
            else:
                raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "_verb", None) is None:
            parser.print_help()
            return 2
        args.argv = args_list
        return int(args._verb.run(args) or 0)
    except FortifyError as e:
        print(f"fortify: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only the machine's limits become one line; a bug keeps its traceback
        reason = resource_problem(e)
        if reason is None:
            raise
        print(f"fortify: error: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fortify: error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fortify runs ls | head -1`: the reader left, nothing to report
        try:
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1


__all__ = ["main", "build_parser", "VERBS", "register_verb"]
