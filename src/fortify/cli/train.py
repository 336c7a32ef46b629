"""``fortify train``: train and save a model (stages train, evaluate, save, report)."""
from __future__ import annotations

import argparse
from typing import ClassVar

from fortify.cli.base import add_resume_option, add_run_options, build_raw, register_verb, run_with_config

TRAIN_STAGES = ("train", "evaluate", "save", "report")


@register_verb
class TrainVerb:
    """``fortify train``: stages train, evaluate, save, report."""
    name: ClassVar[str] = "train"
    help: ClassVar[str] = "train a model from a recipe and save it with its clean accuracy and a report"
    description = ("Train the recipe's model on its dataset and task, then evaluate clean test accuracy, save "
                   "the model (safetensors + JSON metadata) and a report; other stages of the recipe are skipped.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The common run options, ``--resume`` and the shortcuts ``--model``, ``--dataset``, ``--epochs``."""
        add_run_options(parser)
        add_resume_option(parser)
        parser.add_argument("--model", dest="model_name", metavar="NAME", default=None,
                            help="architecture (same as model.name=NAME)")
        parser.add_argument("--dataset", metavar="NAME", default=None, help="dataset (same as data.name=NAME)")
        parser.add_argument("--epochs", type=int, default=None, help="epochs (same as train.epochs=N)")

    def run(self, args: argparse.Namespace) -> int:
        """Train, evaluate, save and report (or resume a recorded train run)."""
        extra = []
        if args.model_name is not None:
            extra.append(f"model.name={args.model_name}")
        if args.dataset is not None:
            extra.append(f"data.name={args.dataset}")
        if args.epochs is not None:
            extra.append(f"train.epochs={args.epochs}")
        return run_with_config(args, self.name, args.argv, build_raw(args, extra) if args.resume is None else {},
                               stages=TRAIN_STAGES)
