"""``fortify leaderboard``: the models of a run store ranked by robust accuracy per threat model
(RobustBench-style; only evaluations meeting the bar rank, see :mod:`fortify.report.leaderboard`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

from fortify.cli.base import add_store_option, register_verb, store_path


@register_verb
class LeaderboardVerb:
    """``fortify leaderboard [--dataset D] [--threat T] [--html PATH] [--json]``."""

    name: ClassVar[str] = "leaderboard"
    help: ClassVar[str] = "rank the models of a run store by robust accuracy per threat model (terminal or --html)"
    description = ("Rank every finished run of the run store that measured robust accuracy, one board per dataset "
                   "and threat model: clean, robust (n, 95% interval), certified accuracy, size, sanity flags and the "
                   "evaluation used. Only evaluations meeting the bar (preset standard or thorough, no sanity flag "
                   "fired, n >= 500) get a rank; the others are listed unranked with the reason. "
                   "Example: fortify leaderboard --threat linf:0.3 --html leaderboard.html")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """``--dataset``, ``--threat``, ``--reliable-only``, ``--html``, ``--json``, ``--out``/``--store``."""
        parser.add_argument("--dataset", default=None, help="only runs on this dataset (e.g. mnist-5k)")
        parser.add_argument("--threat", default=None, help="only this threat model: NORM:EPS (linf:0.3) or a norm (l2)")
        parser.add_argument("--reliable-only", action="store_true", help="hide evaluations below the bar")
        parser.add_argument("--html", metavar="PATH", default=None, help="also write the leaderboard page to PATH")
        parser.add_argument("--json", action="store_true", help="print the boards as JSON instead of tables")
        parser.add_argument("--out", metavar="DIR", default=None, help="runs folder whose fortify.db to read")
        add_store_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Open the store read-only, load every finished run's report, rank, print / write."""
        import json

        from rich.console import Console

        from fortify.errors import OutputError
        from fortify.io import write_atomic
        from fortify.report.leaderboard import build_leaderboard, render_leaderboard_html, terminal_tables
        from fortify.report.loading import load_run
        from fortify.store import RunStore

        path = store_path(args, args.out)
        if not path.is_file():
            raise OutputError(f"no run store at {str(path)!r} (run something first, or pass --store PATH)")
        store = RunStore(path, readonly=True)
        runs = [load_run(store, r.id) for r in store.list_runs() if r.status == "ok"]
        lb = build_leaderboard(runs, dataset=args.dataset, threat=args.threat, reliable_only=args.reliable_only)
        page = write_atomic(args.html, render_leaderboard_html(lb, f"run store {path}", Path(args.html).parent)) \
            if args.html else None
        if args.json:
            print(json.dumps({**lb, "html": str(page) if page else None}, indent=2, default=str))
            return 0
        out = Console()
        for t in terminal_tables(lb):
            out.print(t)
        if not lb["boards"]:
            out.print(f"no finished run with a robust accuracy in {path}"
                      + (" matching the filters" if args.dataset or args.threat else ""), highlight=False)
        if page is not None:
            out.print(f"leaderboard page: {page}", highlight=False, soft_wrap=True)
        return 0
