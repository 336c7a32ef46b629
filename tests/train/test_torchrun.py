"""torchrun-native training (fortify.train.distributed.env): the real ``torchrun -m fortify train`` with
2 ranks on 127.0.0.1 (gloo) equals one process at the same global batch and writes from rank 0 only;
BatchNorm models train with synchronised statistics; a checkpoint resumes with another world size; a
failure on a rank is one line naming it. The library tests use the ``--nproc`` launcher, which starts
its workers with torchrun's variables, so they run the same Trainer path."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from fortify.train import Trainer, train
from fortify.train import checkpoint as ckpt
from fortify.train.distributed import env, fit

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")
ROOT = Path(__file__).resolve().parents[2]
CFG = dict(optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="cosine")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blobs(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 2.0], [-2.0, -2.0]])
    y = torch.arange(n) % 3
    return centers[y] + 0.4 * torch.randn(n, 2, generator=g), y


def mlp(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    mid: list[nn.Module] = [nn.BatchNorm1d(16)] if bn else []
    return nn.Sequential(nn.Linear(2, 16), *mid, nn.ReLU(), nn.Linear(16, 3))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_torchrun_cli_two_ranks_equal_one_process_and_only_rank0_writes(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 -m fortify train`` on 64 mnist-5k images (LeNet-300-100, global
    batch 32, 2 epochs): one run folder and one store row, checkpoints from rank 0, and the saved
    weights equal the same recipe trained in one process (max |diff| printed for the report)."""
    ov = ["data.train_limit=64", "data.test_limit=32", "model.name=mlp", "train.epochs=2", "train.batch_size=32"]
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "fortify", "train", "--recipe", "standard-mnist-5k", *ov,
           "--out", str(out), "-q"]
    e = {**os.environ, "FORTIFY_THREADS": "1", "FORTIFY_DIST_TIMEOUT": "120", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1 and (out / "fortify.db").is_file()
    assert ckpt.complete_epochs(runs[0] / "checkpoints") == [1, 2]
    assert not list(tmp_path.glob("fortify-rank*"))  # rank 1 created nothing
    from fortify.store import RunStore

    rows = RunStore(out / "fortify.db", readonly=True).list_runs()
    assert [r.status for r in rows] == ["ok"]
    two = load_file(str(runs[0] / "model.safetensors"))
    one = fit("standard-mnist-5k", overrides=ov, world_size=1).model.state_dict()
    diff = max_diff({k: v for k, v in two.items()}, {k: v for k, v in one.items()})
    print(f"torchrun 2 ranks vs 1 process: max |param diff| = {diff:.3g}")
    assert diff < 1e-5


def _own_group(rank: int, port: int, out: str) -> None:
    """A user's script: it initialises the group itself, then calls fit twice (both distributed)."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        net = mlp()
        for _ in range(2):
            t = Trainer(net, "standard", dict(epochs=1, batch_size=32, **CFG), progress=False)
            t.fit(blobs(64))
            assert t.dist_stats["world_size"] == 2 and dist.is_initialized()  # the caller's group is kept
        if rank == 0:
            torch.save(net.state_dict(), out)
    finally:
        dist.destroy_process_group()


def test_a_group_the_caller_initialised_is_used_by_every_fit(tmp_path: Path) -> None:
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("forkserver")
    port, out = free_port(), str(tmp_path / "rank0.pt")
    procs = [ctx.Process(target=_own_group, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    ref = mlp()
    for _ in range(2):
        train(ref, blobs(64), epochs=1, batch_size=32, progress=False, **CFG)
    assert max_diff(torch.load(out, weights_only=True), ref.state_dict()) < 1e-5


def test_batchnorm_model_uses_synchronised_statistics_and_equals_one_process() -> None:
    x, y = blobs(64)
    res = fit(mlp(bn=True), (x, y), world_size=2, mode="sync", epochs=2, batch_size=32, **CFG)
    ref = mlp(bn=True)
    train(ref, (x, y), epochs=2, batch_size=32, progress=False, **CFG)
    assert res.stats["synced_batchnorms"] == 1 and res.stats["backend"] == "gloo"
    # weights and running statistics equal the global-batch run (per-shard statistics would not)
    assert max_diff(res.model.state_dict(), ref.state_dict()) < 1e-5
    bn = res.model[1]
    assert int(bn.num_batches_tracked) == 4


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resume_with_a_different_world_size(first: int, second: int, tmp_path: Path) -> None:
    x, y = blobs(64)
    cfg = dict(epochs=2, batch_size=16, **CFG)
    full = Trainer(mlp(), "standard", dict(cfg, nproc=first), checkpoint_dir=tmp_path / "a", progress=False)
    full.fit((x, y))
    part = tmp_path / "b"
    Trainer(mlp(), "standard", dict(cfg, nproc=first), checkpoint_dir=part, progress=False).fit((x, y))
    for p in ckpt.paths(part, 2):
        p.unlink()  # as if killed during epoch 2
    resumed = Trainer(mlp(seed=7), "standard", dict(cfg, nproc=second), checkpoint_dir=part, progress=False)
    hist = resumed.fit((x, y), resume=True)
    assert [h["epoch"] for h in hist] == [1, 2] and resumed.global_step == full.global_step == 8
    assert max_diff(resumed.model.state_dict(), full.model.state_dict()) < 1e-5
    assert ckpt.complete_epochs(part) == [1, 2]


def test_a_failing_rank_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun's variables, rank 1's own error (here a bad config) is ``fortify: error: rank 1: ...``."""
    from fortify.cli import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    assert env.env_world() == (1, 2) and env.current_rank() == 1
    rc = main(["train", "train.epochs=0", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("fortify: error: rank 1: "), err
    assert "epochs" in err[0] and not any(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(Exception, match="RANK=2 WORLD_SIZE=2"):
        env.env_world()
