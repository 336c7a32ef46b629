"""``fortify run``: the whole pipeline of a recipe (default: train, accuracy, robustness, certify, compress,
save, report)."""
from __future__ import annotations

import argparse
from typing import ClassVar

from fortify.cli.base import add_resume_option, add_run_options, build_raw, register_verb
from fortify.cli.train import run_ranked


@register_verb
class RunVerb:
    """``fortify run``: every stage of the recipe."""
    name: ClassVar[str] = "run"
    help: ClassVar[str] = ("run a recipe's whole pipeline (default: robust-train small-cnn on mnist-5k, evaluate, "
                           "attack, certify, compress, save, report)")
    description = ("Run every stage listed in the recipe's 'stages' in order and record the run. With no arguments: "
                   "train small-cnn (normalised) on mnist-5k with fortify's efficient robust recipe (PGD adversarial "
                   "training at linf 0.3 with eps and attack-steps ramps), measure clean test accuracy, robust "
                   "accuracy under linf 0.3 (fast attack cascade + sanity checks + curves), CROWN-certified accuracy "
                   "at linf 0.1, compress it (channel pruning, fine-tuning, int8 ONNX) with measured size and "
                   "latency, and save model, report.json and report.html in fortify-runs/<run-id>/. "
                   "`--recipe standard-mnist-5k` trains without adversarial examples. Under torchrun "
                   "(torchrun --nproc_per_node=N -m fortify run ...) the train stage is data-parallel over the "
                   "ranks and rank 0 runs the other stages and writes everything.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The common run options (``--device`` among them) plus ``--resume``."""
        add_run_options(parser)
        add_resume_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Run the recipe's pipeline (or resume a recorded run)."""
        return run_ranked(args, self.name, build_raw(args) if args.resume is None else {}, None)
