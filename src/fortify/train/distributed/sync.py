"""Synchronous data-parallel training (one worker per rank, all ranks step together).

Algorithm (mini-batch SGD with an all-reduced gradient, as in PyTorch's DistributedDataParallel,
Li et al. 2020, "PyTorch Distributed: experiences on accelerating data parallel training"):
every rank runs the ordinary :class:`fortify.train.Trainer` loop on the *same* permutation of the
training set; of each global batch of ``B = batch_size`` indices rank ``r`` of ``N`` takes the
strided shard ``idx[r::N]`` (DistributedSampler style, ``b_r`` rows) and runs the Task on it, so
the expensive adversarial-example generation is split ``N`` ways. Before the optimiser step the
ranks all-reduce ``sum_r b_r * grad_r`` together with the step statistics ``(b_r * loss_r, b_r,
correct_r, rows_r, grad_evals_r)`` and divide by ``B``; the result is the gradient of the mean loss
over the global batch, i.e. exactly the single-process gradient up to float rounding. Every rank
then applies the same optimiser step, so parameters stay identical (checked at the end).

Floating-point buffers (BatchNorm running statistics) are broadcast from rank 0 after each step
(DDP's ``broadcast_buffers``); BatchNorm *batch* statistics are synchronised over the ranks
(:mod:`.syncbn`), so models with BatchNorm train as on the global batch too (exactly so for
equal-sized shards).

Randomness: each rank reseeds the trainer's generator (passed to every task call) and torch's
global RNG from ``(seed, epoch, rank)`` at the start of every epoch, so ranks draw independent noise (PGD random
starts) and a resumed run continues exactly as an uninterrupted one. Rank 0 alone writes
checkpoints and draws the progress bar; every rank runs the callbacks (they may change the task,
e.g. the catastrophic-overfitting guard) on its identical model.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from fortify.train.distributed.common import Job, flatten, float_buffers, plain_state, trainable
from fortify.train.trainer import Trainer, derive_seed


class DataParallel:
    """The hook a data-parallel rank installs as ``trainer.parallel`` (rank ``rank`` of ``world_size``)."""

    def __init__(self, rank: int, world_size: int) -> None:
        """No communication here; the process group must already be initialised."""
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.steps = 0

    def sync_state(self, trainer: Trainer) -> None:
        """Rank 0's run state on every rank (:func:`fortify.train.distributed.env.sync_state`)."""
        from fortify.train.distributed import env

        try:
            env.sync_state(trainer)
        except RuntimeError as e:
            raise env.lost_peer(self.rank, "the start-up state broadcast", e) from None

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's rows ``idx[rank::world_size]`` of a global batch ``idx (B,)``."""
        return idx[self.rank::self.world_size]

    def start_epoch(self, trainer: Trainer, epoch: int) -> None:
        """Reseed the task generator and the global RNG from ``(seed, epoch, rank)``."""
        seed = trainer.config.seed
        trainer.generator.manual_seed(derive_seed(seed, 11, epoch, self.rank))
        torch.default_generator.manual_seed(derive_seed(seed, 12, epoch, self.rank))

    def all_reduce(self, trainer: Trainer, loss: float, b: int, correct: int, rows: int,
                   evals: int) -> tuple[float, int, int, int, int]:
        """Replace every gradient by the global-batch mean and return the global statistics.

        ``loss``: this shard's mean loss over ``b`` rows; ``correct``/``rows``: accuracy counts of
        the task's logits; ``evals``: gradient evaluations. Returns ``(mean loss, B, correct,
        rows, evals)`` summed over ranks. A parameter without a gradient on every rank keeps
        ``grad=None`` (the optimiser skips it, as in a single process).
        """
        params = trainable(trainer.model)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        head = [loss * b, b, correct, rows, evals] + [float(p.grad is not None) for p in params]
        k = len(head)
        # one float64 message: the gradient sum keeps more digits and a single collective cannot
        # interleave with another one (two concurrent async gloo all-reduces raced in testing)
        flat = torch.cat([torch.tensor(head, dtype=torch.float64, device=trainer.device),
                          flatten(grads).double() * float(b)])
        try:
            dist.all_reduce(flat)
            for buf in float_buffers(trainer.model):
                dist.broadcast(buf, 0)
        except RuntimeError as e:
            from fortify.train.distributed import env

            raise env.lost_peer(self.rank, f"the gradient all-reduce of step {trainer.global_step + 1}", e) from None
        stats, total_b = flat[:k], float(flat[1])
        flat = flat[k:] / total_b
        i = 0
        for p, has in zip(params, stats[5:].tolist()):
            n = p.numel()
            if has > 0:
                p.grad = flat[i:i + n].view_as(p).to(p.dtype).clone()
            i += n
        self.steps += 1
        s = stats.tolist()
        return s[0] / total_b, int(s[1]), int(s[2]), int(s[3]), int(s[4])


def check_identical(model: torch.nn.Module) -> float:
    """Max over ranks of ``max |theta_r - theta_0|`` (all-gathered flat state); 0.0 when identical."""
    mine = flatten([t for t in model.state_dict().values() if t.is_floating_point()])
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return max(float((g - gathered[0]).abs().max()) if g.numel() else 0.0 for g in gathered)


def gather_cpu(t0: float) -> list[float]:
    """CPU seconds (``time.process_time``) every rank spent since its ``t0``, rank order."""
    mine = torch.tensor([time.process_time() - t0], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        mine = mine.cuda()
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [float(t) for t in out]


def run(rank: int, job: Job) -> dict[str, Any] | None:
    """Train on rank ``rank`` of a ``--nproc`` launch: the worker's environment holds the env://
    variables (see :func:`fortify.train.distributed.launch._entry`), so the Trainer joins the group
    exactly as under torchrun. Rank 0 returns the result for the parent (others None)."""
    trainer = Trainer(job.model, job.task, job.config, checkpoint_dir=job.checkpoint_dir,
                      progress=job.progress and rank == 0, callbacks=job.callbacks)
    history = trainer.fit(job.train, job.val, resume=job.resume)
    if rank != 0:
        return None
    return {
        "state": {k: v.detach().clone() for k, v in job.model.state_dict().items()},
        "history": history,
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "grad_evals": trainer.grad_evals,
        "stopped": trainer.stopped,
        "task_state": trainer.task.state_dict(),
        "callbacks": [plain_state(cb) for cb in trainer.callbacks],
        "stats": dict(trainer.dist_stats),
    }


__all__ = ["DataParallel", "run", "check_identical", "gather_cpu"]
