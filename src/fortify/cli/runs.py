"""``fortify runs ls|show``: browse the run store."""
from __future__ import annotations

import argparse
from typing import ClassVar

from fortify.cli.base import add_store_option, register_verb, store_path


@register_verb
class RunsVerb:
    """``fortify runs ls`` / ``fortify runs show ID``."""
    name: ClassVar[str] = "runs"
    help: ClassVar[str] = "list recorded runs (runs ls) or show one run's config, metrics and artefacts (runs show ID)"
    description = "Browse the run store (SQLite): every run's id, verb, config, seed, versions, status, metrics, files."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Sub-commands ``ls`` (``--limit``) and ``show`` (``ID``, ``--json``), each with ``--store``/``--out``."""
        sub = parser.add_subparsers(dest="runs_cmd", metavar="{ls,show}", required=True, parser_class=type(parser))
        ls = sub.add_parser("ls", help="table of recorded runs, newest first", description="Table of recorded runs.")
        ls.add_argument("--limit", type=int, default=20, help="show at most N runs (default 20; 0 = all)")
        ls.add_argument("--out", metavar="DIR", default=None, help="runs folder whose fortify.db to read")
        add_store_option(ls)
        show = sub.add_parser("show", help="one run: config, metrics, artefacts",
                              description="Show one run's config, metrics and artefacts.")
        show.add_argument("run_id", metavar="ID", help="run id (or a unique prefix of one)")
        show.add_argument("--json", action="store_true", help="print the full record as JSON")
        show.add_argument("--out", metavar="DIR", default=None, help="runs folder whose fortify.db to read")
        add_store_option(show)

    def run(self, args: argparse.Namespace) -> int:
        """Open the store (an absent store is an OutputError) and print the table or the run."""
        from fortify.cli.output import print_run, print_runs
        from fortify.errors import OutputError
        from fortify.store import RunStore

        path = store_path(args, args.out)
        if not path.is_file():
            raise OutputError(f"no run store at {str(path)!r} (run something first, or pass --store PATH)")
        store = RunStore(path)
        if args.runs_cmd == "ls":
            print_runs(store, None if args.limit <= 0 else args.limit)
        else:
            print_run(store.get_run(args.run_id), as_json=args.json)
        return 0
