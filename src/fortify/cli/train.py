"""``fortify train``: train and save a model (stages train, accuracy, save, report).

Under torchrun (``torchrun --nproc_per_node=N -m fortify train --recipe R``; ``--nnodes``/``--rdzv-*`` are
torchrun's) every rank runs this verb: rank 0 runs the whole pipeline (run folder, run store, checkpoints,
progress, report), ranks > 0 only the train stage's data-parallel fit and write nothing
(:func:`run_ranked`); a failure on any rank is one ``fortify: error: rank R: ...`` line.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

from fortify.cli.base import (UsageError, add_resume_option, add_run_options, build_raw, register_verb, run_with_config,
                              set_threads, store_path)
from fortify.errors import FortifyError, WorkerError

TRAIN_STAGES = ("train", "accuracy", "save", "report")


@register_verb
class TrainVerb:
    """``fortify train``: stages train, accuracy, save, report."""
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
        parser.add_argument("--nproc", type=int, default=None, metavar="N",
                            help="worker processes on torch.distributed (gloo, CPU, 127.0.0.1), same as "
                                 "train.nproc=N; the global batch stays train.batch_size. Multi-node or GPU: run "
                                 "this command under torchrun instead (torchrun --nproc_per_node=N -m fortify "
                                 "train ...), which takes precedence over --nproc")
        parser.add_argument("--mode", choices=("sync", "async", "producers"), default=None,
                            help="sync: data-parallel, all-reduced gradients (default); async: parameter "
                                 "server applying each worker's gradient as it arrives; producers: N processes "
                                 "generate adversarial examples for one trainer (train.dist_mode)")
        parser.add_argument("--max-staleness", type=int, default=None, metavar="K",
                            help="async / producers only: drop gradients (examples) more than K updates old "
                                 "(train.max_staleness)")

    def run(self, args: argparse.Namespace) -> int:
        """Train, evaluate, save and report (or resume a recorded train run)."""
        extra = self._distributed_overrides(args)  # --device: a run option (cli.base.device_overrides)
        if args.model_name is not None:
            extra.append(f"model.name={args.model_name}")
        if args.dataset is not None:
            extra.append(f"data.name={args.dataset}")
        if args.epochs is not None:
            extra.append(f"train.epochs={args.epochs}")
        return run_ranked(args, self.name, build_raw(args, extra) if args.resume is None else {}, TRAIN_STAGES)

    @staticmethod
    def _distributed_overrides(args: argparse.Namespace) -> list[str]:
        """``train.nproc`` / ``train.dist_mode`` / ``train.max_staleness`` from the flags, checked."""
        given = [f for f, v in (("--nproc", args.nproc), ("--mode", args.mode),
                                ("--max-staleness", args.max_staleness)) if v is not None]
        if given and args.resume is not None:
            raise UsageError(f"--resume continues a run with its recorded config: drop {', '.join(given)}")
        if args.nproc is not None and args.nproc < 1:
            raise UsageError(f"--nproc must be an integer >= 1, got {args.nproc}")
        if args.nproc is not None:
            from fortify.errors import ConfigError
            from fortify.validation import check_threads

            try:
                check_threads(args.nproc, name="--nproc")  # each worker is a process with its own thread
            except ConfigError as e:
                raise UsageError(str(e)) from None
        if args.max_staleness is not None and args.max_staleness < 0:
            raise UsageError(f"--max-staleness must be an integer >= 0, got {args.max_staleness}")
        if args.max_staleness is not None and args.mode not in ("async", "producers"):
            raise UsageError("--max-staleness applies to --mode async only")
        out = []
        if args.nproc is not None:
            out.append(f"train.nproc={args.nproc}")
        if args.mode is not None:
            out.append(f"train.dist_mode={args.mode}")
        if args.max_staleness is not None:
            out.append(f"train.max_staleness={args.max_staleness}")
        return out


def _follow(args: argparse.Namespace, verb: str, raw: dict[str, Any], rank: int) -> int:
    """A rank > 0 under torchrun: the train stage's fit only, no run folder, store row or checkpoint."""
    from fortify.pipeline import RunContext, resolve
    from fortify.pipeline.stages.train import TrainStage

    if args.resume is not None:
        from fortify.store import RunStore

        path = store_path(args, getattr(args, "out", None))
        cfg = resolve(RunStore(path, readonly=True).get_run(args.resume).config)
    else:
        cfg = resolve({**raw, "stages": ["train"]})
    set_threads(args)
    unused = Path(tempfile.gettempdir()) / f"fortify-rank{rank}-never-written"
    ctx = RunContext(config=cfg, run_dir=unused, run_id=f"rank{rank}", verb=verb, store=None, quiet=True,
                     resume=args.resume is not None)
    ctx.stage = "train"
    TrainStage().run(ctx)
    return 0


def _ranked(e: BaseException, rank: int) -> FortifyError:
    """``e`` as a fortify error whose message starts with ``rank R:`` (its own type when possible)."""
    msg = " ".join(str(e).split())
    if msg.startswith(f"rank {rank}:"):
        return e if isinstance(e, FortifyError) else WorkerError(msg)
    if isinstance(e, FortifyError):
        try:
            return type(e)(f"rank {rank}: {msg}")
        except TypeError:
            pass
    return WorkerError(f"rank {rank}: {type(e).__name__}: {msg}")


def run_ranked(args: argparse.Namespace, verb: str, raw: dict[str, Any], stages: Sequence[str] | None) -> int:
    """:func:`run_with_config` on rank 0 (or without torchrun); the train stage only on ranks > 0."""
    from fortify.train.distributed import env

    world = env.env_world()
    if world is None:
        return run_with_config(args, verb, args.argv, raw, stages=stages)
    rank = world[0]
    try:
        if rank == 0:
            return run_with_config(args, verb, args.argv, raw, stages=stages)
        return _follow(args, verb, raw, rank)
    except FortifyError as e:
        raise _ranked(e, rank) from None
    except Exception as e:  # noqa: BLE001 - one line naming the rank instead of a traceback per rank
        raise _ranked(e, rank) from e
