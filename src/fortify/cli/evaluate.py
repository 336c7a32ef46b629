"""``fortify evaluate``: clean accuracy of a saved model on a dataset (stages load, evaluate, report)."""
from __future__ import annotations

import argparse
from typing import ClassVar

from fortify.cli.base import _quote, add_run_options, build_raw, register_verb, run_with_config

EVALUATE_STAGES = ("load", "evaluate", "report")


@register_verb
class EvaluateVerb:
    """``fortify evaluate MODEL``: stages load, evaluate, report."""
    name: ClassVar[str] = "evaluate"
    help: ClassVar[str] = "measure the clean test accuracy of a saved model on a dataset"
    description = ("Load MODEL (a .safetensors file written by fortify, or a plain .pt state dict with "
                   "--architecture) and measure its clean accuracy on the test split of --dataset (default: the "
                   "dataset recorded in the model file). The run is recorded and gets a report.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """MODEL, the common run options, ``--dataset`` and ``--architecture``."""
        parser.add_argument("model_path", metavar="MODEL", help="model file (.safetensors, or .pt/.pth state dict)")
        add_run_options(parser)
        parser.add_argument("--dataset", metavar="NAME", default=None,
                            help="dataset to evaluate on (default: the one recorded in the model file)")
        parser.add_argument("--architecture", metavar="NAME", default=None,
                            help="architecture of a .pt/.pth state dict (same as load.architecture=NAME)")

    def run(self, args: argparse.Namespace) -> int:
        """Evaluate MODEL on ``--dataset`` (default: the dataset recorded in the model file)."""
        extra = [f"load.path={_quote(args.model_path)}"]
        if args.architecture is not None:
            extra.append(f"load.architecture={args.architecture}")
        if args.dataset is not None:
            extra.append(f"data.name={args.dataset}")
        elif not any(o.split("=", 1)[0].strip() == "data.name" for o in args.overrides):
            extra += _dataset_of(args.model_path)
        return run_with_config(args, self.name, args.argv, build_raw(args, extra), stages=EVALUATE_STAGES)


def _dataset_of(path: str) -> list[str]:
    """``["data.name=<dataset recorded in the model file>"]`` when there is a known one."""
    from fortify import models
    from fortify.data import DATASETS

    if not path.lower().endswith(".safetensors"):
        return []
    ds = models.read_meta(path).get("dataset")  # a corrupt file fails here: ModelFileError
    return [f"data.name={ds}"] if isinstance(ds, str) and ds in DATASETS else []
