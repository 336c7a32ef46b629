"""``fortify run``: the whole pipeline of a recipe (default: train, evaluate, save, report)."""
from __future__ import annotations

import argparse
from typing import ClassVar

from fortify.cli.base import add_resume_option, add_run_options, build_raw, register_verb, run_with_config


@register_verb
class RunVerb:
    """``fortify run``: every stage of the recipe."""
    name: ClassVar[str] = "run"
    help: ClassVar[str] = "run a recipe's whole pipeline (default: train small-cnn on mnist-5k, evaluate, save, report)"
    description = ("Run every stage listed in the recipe's 'stages' in order and record the run. With no arguments: "
                   "train small-cnn (normalised) on mnist-5k with the standard task, measure clean test accuracy, "
                   "save model, report.json and report.html in fortify-runs/<run-id>/.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The common run options plus ``--resume``."""
        add_run_options(parser)
        add_resume_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Run the recipe's pipeline (or resume a recorded run)."""
        return run_with_config(args, self.name, args.argv, build_raw(args) if args.resume is None else {})
