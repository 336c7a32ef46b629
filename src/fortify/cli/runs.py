"""``fortify runs ls|show|compare``: browse the run store (opened read-only: a shared read-only store can be
browsed) and compare runs (config diff, findings with significance tests, overlaid curves)."""
from __future__ import annotations

import argparse
import shlex
import time
from typing import TYPE_CHECKING, ClassVar

from fortify.cli.base import UsageError, add_store_option, register_verb, store_path

if TYPE_CHECKING:  # pragma: no cover
    from fortify.store import RunRecord, RunStore


@register_verb
class RunsVerb:
    """``fortify runs ls`` / ``fortify runs show ID`` / ``fortify runs compare A B [C ...]``."""
    name: ClassVar[str] = "runs"
    help: ClassVar[str] = ("list recorded runs (runs ls), show one run's config, metrics and artefacts (runs show ID), "
                           "compare runs (runs compare A B)")
    description = ("Browse the run store (SQLite, opened read-only): every run's id, verb, config, seed, versions, "
                   "status, metrics, files. A run whose process is gone (killed, machine lost) shows as "
                   "'interrupted' with the command that resumes it; the time column is active time (a resumed "
                   "run's downtime is not counted).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Sub-commands ``ls`` (``--limit``/``--all``) and ``show`` (``ID``, ``--json``), each with
        ``--store``/``--out``."""
        sub = parser.add_subparsers(dest="runs_cmd", metavar="{ls,show,compare}", required=True,
                                    parser_class=type(parser))
        ls = sub.add_parser("ls", help="table of recorded runs, newest first", description="Table of recorded runs.")
        ls.add_argument("--limit", type=int, default=20, help="show at most N runs (N >= 1, default 20)")
        ls.add_argument("--all", action="store_true", help="show every run (no limit)")
        ls.add_argument("--out", metavar="DIR", default=None, help="runs folder whose fortify.db to read")
        add_store_option(ls)
        show = sub.add_parser("show", help="one run: config, metrics, artefacts",
                              description="Show one run's config, metrics and artefacts.")
        show.add_argument("run_id", metavar="ID", help="run id (or a unique prefix of one)")
        show.add_argument("--json", action="store_true", help="print the full record as JSON")
        show.add_argument("--out", metavar="DIR", default=None, help="runs folder whose fortify.db to read")
        add_store_option(show)
        cmp = sub.add_parser("compare", help="compare runs: config diff, findings with significance, overlaid curves",
                             description="Compare two or more runs: the config keys that differ, the report cards' "
                             "figures side by side, each run tested against the first (two-proportion z-test for "
                             "accuracies with n, disjoint 95% intervals otherwise), and with --html a page with "
                             "overlaid training, robustness, certified and Pareto curves.")
        cmp.add_argument("run_ids", metavar="ID", nargs="+", help="two or more run ids (or unique prefixes); the "
                         "first is the baseline")
        cmp.add_argument("--html", metavar="PATH", default=None, help="also write the comparison page to PATH "
                         "(figures in PATH's folder, <stem>_figures/)")
        cmp.add_argument("--json", action="store_true", help="print the comparison as JSON instead of tables")
        cmp.add_argument("--out", metavar="DIR", default=None, help="runs folder whose fortify.db to read")
        add_store_option(cmp)

    def run(self, args: argparse.Namespace) -> int:
        """Open the store read-only (an absent, foreign or corrupt store is a one-line error) and print."""
        from fortify.cli.output import print_run, print_runs
        from fortify.errors import OutputError
        from fortify.store import RunStore

        if args.runs_cmd == "ls" and args.limit < 1:
            raise UsageError(f"--limit must be >= 1 (use --all to list every run), got {args.limit}")
        path = store_path(args, args.out)
        if not path.is_file():
            raise OutputError(f"no run store at {str(path)!r} (run something first, or pass --store PATH)")
        store = RunStore(path, readonly=True)
        if args.runs_cmd == "compare":
            return compare_command(store, args)
        if args.runs_cmd == "ls":
            limit = None if args.all else args.limit
            print_runs(store, limit)
            print_resume_hints(store.list_runs(limit=limit), _location(args))
        else:
            rec = store.get_run(args.run_id)
            print_run(rec, as_json=args.json)
            if not args.json:
                print_resume_hints([rec], _location(args))
        return 0


def compare_command(store: "RunStore", args: argparse.Namespace) -> int:
    """``runs compare``: load the runs' reports, print the tables (or JSON), write the page with --html."""
    import json

    from rich.console import Console

    from fortify.report.compare import compare_runs, terminal_tables
    from fortify.report.compare_html import write_compare_html
    from fortify.report.loading import load_run

    if len(args.run_ids) < 2:
        raise UsageError("runs compare needs at least two run ids (the first is the baseline)")
    ids = [store.resolve(r) for r in args.run_ids]
    if len(set(ids)) != len(ids):
        raise UsageError("runs compare: a run is listed twice: " + ", ".join(args.run_ids))
    runs = [load_run(store, r) for r in ids]
    cmp = compare_runs(runs)
    page = write_compare_html(cmp, runs, args.html) if args.html else None
    if args.json:
        print(json.dumps({**cmp, "html": str(page) if page else None}, indent=2, default=str))
        return 0
    out = Console()
    for t in terminal_tables(cmp):
        out.print(t)
    if page is not None:
        out.print(f"comparison page: {page}", highlight=False, soft_wrap=True)
    return 0


def _location(args: argparse.Namespace) -> str:
    """The option that points a later command at the same store (``--store PATH`` / ``--out DIR``), or ''."""
    if getattr(args, "store", None):
        return f"--store {shlex.quote(args.store)}"
    if getattr(args, "out", None):
        return f"--out {shlex.quote(args.out)}"
    return ""


def resumable(verb: str) -> bool:
    """Whether ``fortify <verb>`` takes ``--resume ID`` (asked of the verb's own parser)."""
    from fortify.cli.base import VERBS, Parser

    try:
        parser = Parser(prog=f"fortify {verb}")
        VERBS.get(verb)().add_arguments(parser)
        known, _ = parser.parse_known_args(["--resume", "X"])
    except (Exception, SystemExit):  # noqa: BLE001 - an unknown or odd verb simply is not resumable
        return False
    return getattr(known, "resume", None) == "X"


def print_resume_hints(runs: "list[RunRecord]", location: str) -> None:
    """Under the table: each interrupted run, why it counts as interrupted, and the command resuming it."""
    gone = [r for r in runs if r.status == "interrupted"]
    if not gone:
        return
    print("interrupted runs (their process is gone):")
    for r in gone:
        beat = "no heartbeat" if r.heartbeat is None else f"last heartbeat {_ago(time.time() - r.heartbeat)} ago"
        where = f"pid {r.pid} on {r.host}" if r.pid is not None else "process unknown"
        if resumable(r.verb):
            todo = "resume: " + " ".join(filter(None, [f"fortify {r.verb} --resume {r.id}", location]))
        else:
            todo = f"fortify {r.verb} cannot resume: run it again"
        print(f"  {r.id}  {where}, {beat}\n    {todo}")


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"
