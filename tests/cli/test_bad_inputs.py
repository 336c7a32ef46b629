"""One table of bad command lines, across every verb (issue 20 item 6, issue 11 item 5).

Each case runs ``fortify.cli.main`` in-process from a fresh working folder and asserts the CLI's
contract for bad input: exit status 2, exactly one non-empty stderr line starting
``fortify: error:``, no traceback, the offending name or value in that line, and every file that
existed before (the working folder and the shared fixture files: models, recipes, a run store)
byte-identical afterwards. Cases that need the machine to fail (out of memory, a full disk) patch
the one function where that happens. Placeholders such as ``{model}`` name the fixture files below.
"""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import save_file

from fortify import models
from fortify.cli import main
from fortify.store import RunStore


@dataclass(frozen=True)
class Case:
    """A bad command line, the substrings its error line must contain, and optional environment/patch."""

    argv: tuple[str, ...]
    needles: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    patch: str | None = None  # a key of PATCHES


def case(line: str, *needles: str, env: dict[str, str] | None = None, patch: str | None = None,
         pending: str | None = None) -> Any:
    """``line`` is split on spaces (placeholders are formatted later); ``pending`` marks a case whose
    fix belongs to another module and has not landed yet (xfail, not strict: it passes once fixed)."""
    tags = [f"{k}={v}" for k, v in (env or {}).items()] + ([f"[{patch}]"] if patch else [])
    marks = [pytest.mark.xfail(reason=pending, strict=False)] if pending else []
    return pytest.param(Case(tuple(line.split(" ")), needles, env or {}, patch), id=" ".join([line[:90], *tags]),
                        marks=marks)


# ------------------------------------------------------------------------------------------- fixtures
def _state_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The shared fixture files: a good model in both formats and every kind of bad file."""
    w = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    net = models.create("mlp", in_shape=(1, 28, 28), num_classes=10).eval()
    model = models.save(net, w / "mlp.safetensors", {"dataset": "mnist-5k"})
    torch.save(net.state_dict(), w / "mlp.pt")
    nan = models.create("mlp", in_shape=(1, 28, 28), num_classes=10)
    with torch.no_grad():
        nan.state_dict()["1.weight"][0, 0] = float("nan")
    models.save(nan, w / "nan.safetensors", {"dataset": "mnist-5k"})
    inf = _state_of(net)
    inf["3.bias"][0] = float("inf")
    torch.save(inf, w / "inf.pt")
    save_file(_state_of(net), str(w / "nometa.safetensors"))
    blob = model.read_bytes()
    (w / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (w / "text.safetensors").write_text("this is not a model\n")
    (w / "empty.safetensors").write_bytes(b"")
    (w / "model.onnx").write_bytes(b"\x08\x07not really onnx")
    (w / "folder.safetensors").mkdir()
    torch.save([torch.zeros(3)], w / "list.pt")
    (w / "hostile.pt").write_bytes(pickle.dumps(_Hostile()))
    wide = models.create("mlp", in_shape=(1, 28, 28), num_classes=10, hidden=(64,))
    torch.save(wide.state_dict(), w / "wide.pt")
    recipes = {
        "empty.yaml": "", "comments.yaml": "# nothing but a comment\n", "list.yaml": "- train\n- evaluate\n",
        "malformed.yaml": "train:\n  epochs: [1,\n  lr: 0.1\n", "section.yaml": "bogus: {a: 1}\n",
        "key.yaml": "train: {epoch: 3}\n", "value.yaml": "train: {epochs: many}\n",
        "threat.yaml": "task: {name: pgd_at, args: {threat: 'linf:-1'}}\n", "scalar.yaml": "42\n",
        "tabs.yaml": "train:\n\tepochs: 3\n", "section-list.yaml": "train: [1, 2]\n",
    }
    for name, text in recipes.items():
        (w / name).write_text(text)
    (w / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (w / "blocker").write_text("a file where a folder is expected\n")
    store = RunStore(w / "fortify.db")
    run_id = store.start_run("train", argv=["train"], config={"train": {}}, seed=0, versions={})
    store.finish_run(run_id, "ok")
    (w / "notsqlite.db").write_text("not a database\n")
    out = {"W": str(w), "model": str(model), "done": run_id}
    out.update({p.name.replace(".", "_").replace("-", "_"): str(p) for p in w.iterdir()})  # {nan_safetensors}
    out.update({p.stem.replace("-", "_"): str(p) for p in w.glob("*.yaml")})  # recipes by stem: {empty}
    return out


class _Hostile:
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def _snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (SQLite's -wal/-shm side files excluded)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(("-wal", "-shm")):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------- resource-failure patches
def _memory_then_rollback(*_: object, **__: object) -> None:
    """What ``--threads 100000`` did: MemoryError inside a store transaction, then sqlite's
    'cannot rollback' raised while handling it."""
    try:
        raise MemoryError("Unable to allocate output buffer.")
    except MemoryError:
        raise sqlite3.OperationalError("cannot rollback - no transaction is active")


def _torch_oom(*_: object, **__: object) -> None:
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 1073741824000 bytes. Error code 12 (Cannot allocate memory)")


def _disk_full(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", "fortify-runs/x/report.json")


def _too_many_files(*_: object, **__: object) -> None:
    raise OSError(errno.EMFILE, "Too many open files")


def _plain_memory(*_: object, **__: object) -> None:
    raise MemoryError()


PATCHES: dict[str, tuple[str, str, Callable[..., None]]] = {
    "threads-memory-rollback": ("torch", "set_num_threads", _memory_then_rollback),
    "memory": ("fortify.pipeline", "run_pipeline", _plain_memory),
    "torch-oom": ("fortify.pipeline", "run_pipeline", _torch_oom),
    "disk-full": ("fortify.pipeline", "run_pipeline", _disk_full),
    "open-files": ("fortify.pipeline", "run_pipeline", _too_many_files),
}

_set_threads, _THREADS = torch.set_num_threads, torch.get_num_threads()

# ------------------------------------------------------------------------------------------------ table
T = "data.test_limit=20"  # cases that reach a stage evaluate at most 20 test images
CASES = [
    # -- top level --------------------------------------------------------------------------------
    case("nosuchverb", "unknown verb 'nosuchverb'", "evaluate"),
    case("RUN", "unknown verb 'RUN'"),
    case("--bogus", "--bogus"),
    case("runs", "runs", "ls,show"),
    case("runs nope", "'nope'"),
    case("runs ls --bogus", "--bogus"),
    # -- run: recipes -----------------------------------------------------------------------------
    case("run --recipe {W}/missing.yaml", "missing.yaml", "does not exist"),
    case("run --recipe nope", "unknown recipe 'nope'", "default"),
    case("run --recipe {empty}", "empty.yaml", "is empty"),
    case("run --recipe {comments}", "comments.yaml", "is empty"),
    case("run --recipe {list}", "list.yaml", "YAML mapping"),
    case("run --recipe {scalar}", "scalar.yaml", "YAML mapping"),
    case("run --recipe {malformed}", "malformed.yaml", "at line"),
    case("run --recipe {tabs}", "tabs.yaml", "at line 2"),
    case("run --recipe {binary}", "binary.yaml", "cannot read"),
    case("run --recipe {W}", "is a folder"),
    case("run --recipe {section}", "'bogus'", "allowed sections"),
    case("run --recipe {key}", "'train.epoch'", "epochs"),
    case("run --recipe {value}", "'many'", "train.epochs"),
    case("run --recipe {section_list}", "'train'", "mapping"),
    case("run --recipe {threat}", "task.args.threat=linf:-1", "eps"),
    case("run --recipe", "--recipe", "expected one argument"),
    # -- run: overrides ---------------------------------------------------------------------------
    case("run train.epoch=2", "'train.epoch'", "epochs"),
    case("run train.epochs=-1", "train.epochs", "-1"),
    case("run train.epochs=0", "train.epochs", "0"),
    case("run train.epochs=abc", "'abc'", "train.epochs"),
    case("run train.epochs=1.5", "1.5", "train.epochs"),
    case("run train.epochs=[1,", "train.epochs", "malformed"),
    case("run train.lr=-0.1", "train.lr", "-0.1"),
    case("run train.lr=abc", "'abc'", "train.lr"),
    case("run train.batch_size=0", "train.batch_size", "0"),
    case("run train.optimizer=rmsprop", "'rmsprop'", "sgd, adam"),
    case("run train.seed=abc", "'abc'", "train.seed"),
    case("run train.bogus=1", "'train.bogus'"),
    case("run data.name=nope", "unknown dataset 'nope'", "mnist-5k"),
    case("run data.train_limit=0", "data.train_limit", "0"),
    case("run data.test_limit=-5", "data.test_limit", "-5"),
    case("run data.bogus=1", "'data.bogus'"),
    case("run model.name=nope", "unknown model 'nope'", "small-cnn"),
    case("run model.args.bogus=1", "'model.args.bogus'"),
    case("run model.normalize=maybe", "'maybe'", "model.normalize"),
    case("run model.init=zeros", "'zeros'", "model.init"),
    case("run task.name=nope", "'nope'", "task.name"),
    case("run task.args.bogus=1", "'task.args.bogus'"),
    case("run task.args.threat=linf:-1", "task.args.threat=linf:-1", "eps"),
    case("run task.args.threat=linf:abc", "task.args.threat=linf:abc", "not a number"),
    case("run task.args.threat=l7:0.1", "task.args.threat=l7:0.1", "'l7'"),
    case("run task.args.threat=linf:nan", "task.args.threat=linf:nan"),
    case("run task.args.threat=linf:inf", "task.args.threat=linf:inf"),
    case("run task.args.threat=linf", "task.args.threat=linf"),
    case("run task.args.steps=0", "task.args.steps=0"),
    case("run task.args.steps=-3", "task.args.steps=-3"),
    case("run stages=[]", "'stages'"),
    case("run stages=[bogus]", "'bogus'", "stages"),
    case("run stages=[train,train]", "twice"),
    case("run stages=train", "'stages'"),
    case("run bogus.key=1", "'bogus'", "allowed sections"),
    case("run output.dir=[1,2]", "output.dir"),
    case("run robustness.threats=[linf:-1]", "robustness.threats", "-1"),
    case("run robustness.threats=[]", "robustness.threats"),
    case("run robustness.preset=nope", "'nope'"),
    case("run robustness.n=0", "robustness.n", "0"),
    case("run certify.method=nope", "'nope'"),
    case("run certify.threat=l7:1", "'l7'"),
    case("run compress.recipe=nope", "'nope'"),
    case("run oops", "'oops'", "key=value"),
    case("run =3", "'=3'", "empty key"),
    case("run train..epochs=3", "train..epochs=3", "empty key"),
    case("run train.epochs.x=3", "train.epochs"),
    # -- run: options -----------------------------------------------------------------------------
    case("run --seed abc", "--seed", "'abc'"),
    case("run --seed", "--seed"),
    case("run --threads 0", "--threads", "0"),
    case("run --threads -2", "--threads", "-2"),
    case("run --threads abc", "--threads", "'abc'"),
    case("run --threads 100000", "--threads", "100000", "cores"),
    case("run", "FORTIFY_THREADS", "'many'", env={"FORTIFY_THREADS": "many"}),
    case("run", "FORTIFY_THREADS", "0", env={"FORTIFY_THREADS": "0"}),
    case("run", "FORTIFY_THREADS", "99999", env={"FORTIFY_THREADS": "99999"}),
    case("run --bogus", "--bogus"),
    case("run -x", "-x"),
    case("run --out {blocker}/runs", "blocker", "not writable"),
    case("run --resume nope", "no run store", "--store"),
    case("run --resume nope --store {fortify_db}", "'nope'"),
    case("run --resume {done} --store {fortify_db}", "finished ok"),
    case("run --resume {done} --recipe default", "--resume", "--recipe"),
    case("run --resume {done} train.epochs=1", "--resume", "KEY=VALUE"),
    # -- train ------------------------------------------------------------------------------------
    case("train --model nope", "unknown model 'nope'"),
    case("train --dataset nope", "unknown dataset 'nope'"),
    case("train --epochs 0", "train.epochs", "0"),
    case("train --epochs -1", "train.epochs", "-1"),
    case("train --epochs x", "--epochs", "'x'"),
    case("train --nproc 0", "--nproc", "0"),
    case("train --nproc 100000", "--nproc", "100000", "cores"),
    case("train --nproc x", "--nproc", "'x'"),
    case("train train.nproc=100000", "train.nproc=100000", "cores"),
    case("train --mode ring", "'ring'", "sync"),
    case("train --max-staleness -1", "--max-staleness", "-1"),
    case("train --max-staleness 2", "--max-staleness", "async"),
    case("train --resume abc --nproc 2", "--resume", "--nproc"),
    case("train --threads 100000", "--threads", "100000"),
    case("train --recipe {empty}", "empty.yaml", "is empty"),
    case("train --recipe pgd-at-mnist-5k task.args.threat=linf:-1", "task.args.threat=linf:-1"),
    case("train --recipe pgd-at-mnist-5k task.args.threat=l7:0.3", "task.args.threat=l7:0.3", "'l7'"),
    case("train train.lr=abc", "'abc'", "train.lr"),
    # -- evaluate: the model file -----------------------------------------------------------------
    case("evaluate", "MODEL"),
    case("evaluate {W}/missing.safetensors", "missing.safetensors", "not found"),
    case("evaluate {folder_safetensors}", "folder.safetensors"),
    case("evaluate {empty_safetensors} " + T, "empty.safetensors", "not a safetensors file"),
    case("evaluate {text_safetensors} " + T, "text.safetensors"),
    case("evaluate {truncated_safetensors} " + T, "truncated.safetensors", "truncated"),
    case("evaluate {nometa_safetensors} " + T, "nometa.safetensors", "fortify metadata"),
    case("evaluate {nan_safetensors} " + T, "nan.safetensors", "'1.weight'", "NaN"),
    case("evaluate {inf_pt} --architecture mlp " + T, "inf.pt", "'3.bias'", "infinite"),
    case("evaluate {mlp_pt}", "mlp.pt", "--architecture NAME", "--architecture mlp"),
    case("evaluate {mlp_pt} --architecture nope " + T, "'nope'"),
    case("evaluate {mlp_pt} --architecture lenet5 " + T, "mlp.pt", "in the file", "the architecture expects"),
    case("evaluate {wide_pt} --architecture mlp " + T, "wide.pt", "is (64, 784) in the file",
         "the architecture expects (300, 784)"),
    case("evaluate {hostile_pt} --architecture mlp " + T, "hostile.pt", "refused"),
    case("evaluate {list_pt} --architecture mlp " + T, "list.pt", "state dict"),
    case("evaluate {model} --architecture mlp", "--architecture mlp", ".pt/.pth"),
    case("evaluate {model_onnx} " + T, "model.onnx"),
    case("evaluate {model} --dataset nope", "unknown dataset 'nope'"),
    case("evaluate {model} --dataset digits " + T, "digits", "(1, 8, 8)", "(1, 28, 28)"),
    # -- evaluate: robustness options -------------------------------------------------------------
    case("evaluate {model} --threat linf:-1", "robustness.threats", "-1"),
    case("evaluate {model} --threat linf:abc", "'linf:abc'", "not a number"),
    case("evaluate {model} --threat l7:0.1", "'l7'", "linf, l2, l1"),
    case("evaluate {model} --threat linf", "'linf'", "NORM:EPS"),
    case("evaluate {model} --threat :0.3", "unknown norm ''"),
    case("evaluate {model} --threat linf:nan", "robustness.threats", "nan"),
    case("evaluate {model} --threat linf:inf", "robustness.threats", "inf"),
    case("evaluate {model} --threat linf:0.3 --threat linf:0.3", "linf:0.3", "twice"),
    case("evaluate {model} --preset nope", "'nope'", "fast"),
    case("evaluate {model} --attacks nope", "'nope'"),
    case("evaluate {model} --n 0", "robustness.n", "0"),
    case("evaluate {model} --n -1", "robustness.n", "-1"),
    case("evaluate {model} --n abc", "--n", "'abc'"),
    case("evaluate {model} --budget -1", "budget", "-1"),
    case("evaluate {model} --budget abc", "--budget", "'abc'"),
    case("evaluate {model} --curve-points -1", "curve_points", "-1"),
    case("evaluate {model} robustness.bogus=1", "'robustness.bogus'"),
    case("evaluate {model} load.bogus=1", "'load.bogus'"),
    case("evaluate --resume nope", "no run store"),
    case("evaluate {model} --resume {done} --store {fortify_db}", "--resume", "MODEL"),
    case("evaluate {model} --threads 100000", "--threads", "100000"),
    case("evaluate {model} --recipe {comments}", "comments.yaml", "is empty"),
    # -- explain ----------------------------------------------------------------------------------
    case("explain", "MODEL"),
    case("explain {W}/missing.safetensors", "missing.safetensors", "not found"),
    case("explain {nan_safetensors}", "'1.weight'", "NaN"),
    case("explain {model} --methods nope", "'nope'", "saliency"),
    case("explain {model} --metrics nope", "'nope'", "deletion"),
    case("explain {model} --n 0", "explain.n", "0"),
    case("explain {model} --bogus", "--bogus"),
    case("explain {model} --methods gradcam --target-layer nolayer", "'nolayer'"),
    case("explain {model} --threads 100000", "--threads", "100000"),
    case("audit", "MODEL"),
    case("audit {W}/missing.safetensors", "missing.safetensors", "not found"),
    case("audit {model} --sections calibration,vibes", "'vibes'"),
    case("audit {model} --detectors nope", "'nope'", "mahalanobis"),
    case("audit {model} --ood-sets nope", "'nope'"),
    case("audit {model} --eps a", "--eps"),
    case("audit {model} --n 2", "audit.n"),
    case("scan", "MODEL"),
    case("scan {W}/missing.safetensors", "missing.safetensors", "not found"),
    case("scan {model} --detectors nope", "'nope'", "neural-cleanse"),
    case("scan {model} --n 2", "scan.n"),
    case("scan {model} --steps 0", "scan.steps"),
    case("scan {model} --threshold -1", "scan.threshold"),
    case("predict", "MODEL"),
    case("predict {W}/missing.safetensors --data x", "not found"),
    case("predict {model} --data {W}/missing.npy", "missing.npy", "does not exist"),
    case("predict {model} --data {W}/missing.npy --mips nope", "'nope'", "ivf"),
    # -- certify ----------------------------------------------------------------------------------
    case("certify", "MODEL"),
    case("certify {W}/missing.safetensors", "missing.safetensors", "not found"),
    case("certify {nan_safetensors} " + T, "'1.weight'", "NaN"),
    case("certify {mlp_pt}", "--architecture NAME"),
    case("certify {model} --method nope", "'nope'", "crown"),
    case("certify {model} --method milp --threat l2:0.1", "'milp'", "'l2'"),
    case("certify {model} --method smoothing --threat linf:0.1", "'smoothing'", "'linf'"),
    case("certify {model} --threat l7:1", "'l7'"),
    case("certify {model} --threat linf:-1", "certify.threat", "-1"),
    case("certify {model} --threat linf:abc", "'linf:abc'"),
    case("certify {model} --n 0", "certify.n", "0"),
    case("certify {model} --n x", "--n", "'x'"),
    case("certify {model} --curve-points 1", "certify.curve_points", "1"),
    case("certify {model} --eps-grid a,b", "certify.curve_eps"),
    case("certify {model} --eps-grid -1", "certify.curve_eps", "-1"),
    case("certify {model} --compare smoothing", "'smoothing'", "certify.compare"),
    case("certify {model} --compare nope", "'nope'"),
    case("certify {model} --method smoothing --sigma 0", "certify.sigma", "0"),
    case("certify {model} --method smoothing --samples 0", "certify.samples"),
    case("certify {model} --method smoothing --alpha 2", "certify.alpha", "2"),
    case("certify {model} --method milp --time-limit 0", "certify.time_limit", "0"),
    case("certify {model} --method milp --max-binaries 0", "certify.max_binaries", "0"),
    case("certify {model} --method milp --threat linf:0.3 --n 2 -q " + T, "unstable ReLUs", "max_binaries=200",
         "--max-binaries"),
    case("certify {model} certify.bogus=1", "'certify.bogus'"),
    case("certify {model} --threads 100000", "--threads", "100000"),
    # -- compress ---------------------------------------------------------------------------------
    case("compress", "MODEL"),
    case("compress {model}", "--recipe NAME", "robust-int8"),
    case("compress {model} --recipe nope", "'nope'"),
    case("compress {model} --recipe sparse --robust bogus", "'bogus'", "strong"),
    case("compress {model} --recipe sparse --threat linf:-1", "compress.threat", "-1"),
    case("compress {model} --recipe sparse --threat l7:1", "'l7'"),
    case("compress {model} --recipe sparse --n 0", "compress.n_robust", "0"),
    case("compress {model} --recipe sparse --n -1", "compress.n_robust", "-1"),
    case("compress {model} --recipe sparse --n x", "--n", "'x'"),
    case("compress {model} --recipe sparse compress.bogus=1", "'compress.bogus'"),
    case("compress {W}/missing.safetensors --recipe sparse", "missing.safetensors", "not found"),
    case("compress {nan_safetensors} --recipe sparse " + T, "'1.weight'", "NaN"),
    case("compress {mlp_pt} --recipe sparse", "--architecture NAME"),
    case("compress {model} --recipe sparse --dataset nope", "unknown dataset 'nope'"),
    case("compress {model} --recipe sparse --threads 100000", "--threads", "100000"),
    case("compress {model} --recipe sparse --recipe", "--recipe"),
    # -- export -----------------------------------------------------------------------------------
    case("export {model}", "--onnx"),
    case("export", "--onnx"),
    case("export --onnx", "MODEL"),
    case("export {model} --onnx --int8 int4", "'int4'", "dynamic"),
    case("export {model} --onnx --out {W}/missing/m.onnx", "m.onnx", "does not exist"),
    case("export {model} --onnx --out {blocker}/sub", "blocker", "cannot create"),
    case("export {model} --onnx --runs {blocker}/runs", "blocker", "not writable"),
    case("export {W}/missing.safetensors --onnx", "missing.safetensors", "not found"),
    case("export {nan_safetensors} --onnx " + T, "'1.weight'", "NaN"),
    case("export {truncated_safetensors} --onnx " + T, "truncated.safetensors"),
    case("export {mlp_pt} --onnx", "--architecture NAME"),
    case("export {model} --onnx export.n_check=0", "n_check", "0"),
    case("export {model} --onnx export.min_agreement=2", "export.min_agreement", "2"),
    case("export {model} --onnx export.bogus=1", "'export.bogus'"),
    case("export {model} --onnx --dataset nope", "unknown dataset 'nope'"),
    case("export {model} --onnx --threads 100000", "--threads", "100000"),
    case("export {model} --onnx --threads 0", "--threads", "0"),
    # -- runs -------------------------------------------------------------------------------------
    case("runs ls", "no run store"),
    case("runs ls --limit -1 --store {fortify_db}", "--limit", "-1"),
    case("runs ls --limit abc", "--limit", "'abc'"),
    case("runs ls --store {W}/missing.db", "missing.db"),
    case("runs show", "ID"),
    case("runs show nope --store {fortify_db}", "'nope'"),
    case("runs show {done} --store {W}/missing.db", "missing.db"),
    case("runs show {done} --json --bogus", "--bogus"),
    case("runs compare {done} --store {fortify_db}", "at least two"),
    case("runs compare {done} {done} --store {fortify_db}", "listed twice"),
    case("runs compare {done} nope --store {fortify_db}", "'nope'"),
    case("runs compare {done} {done} --store {W}/missing.db", "missing.db"),
    case("leaderboard --store {W}/missing.db", "missing.db"),
    case("leaderboard --threat sup:1 --store {fortify_db}", "--threat", "sup:1"),
    case("leaderboard --bogus", "--bogus"),
    # -- the machine's limits, at the edge --------------------------------------------------------
    case("run --threads 2", "out of memory", patch="threads-memory-rollback"),
    case("run data.train_limit=10", "out of memory", patch="memory"),
    case("evaluate {model}", "out of memory", patch="torch-oom"),
    case("run data.train_limit=10", "no space left", "report.json", patch="disk-full"),
    case("certify {model}", "too many open files", patch="open-files"),
]


@pytest.mark.parametrize("c", CASES)
def test_bad_input(c: Case, files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("precious\n")
    monkeypatch.chdir(work)
    monkeypatch.delenv("FORTIFY_STORE", raising=False)
    monkeypatch.delenv("FORTIFY_THREADS", raising=False)
    for k, v in c.env.items():
        monkeypatch.setenv(k, v)
    if c.patch is not None:  # (torch.set_num_threads may be one: the real one is kept in _set_threads)
        module, name, fn = PATCHES[c.patch]
        monkeypatch.setattr(module + "." + name, fn)
    argv = [a.format(**files) for a in c.argv]
    before = _snapshot(Path(files["W"]), work)
    try:
        rc = main(argv)
    finally:
        _set_threads(_THREADS)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (argv, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("fortify: error: "), lines
    assert not lines[0].startswith("fortify: error: fortify:"), lines[0]
    for needle in c.needles:
        assert needle.format(**files) in lines[0], (needle, lines[0])
    after = _snapshot(Path(files["W"]), work)
    assert {k: after.get(k) for k in before} == before, "a pre-existing file changed"


def test_the_table_covers_every_verb_with_at_least_130_cases() -> None:
    from fortify.cli import VERBS

    verbs = {p.values[0].argv[0] for p in CASES}
    assert set(VERBS.names()) <= verbs and len(CASES) >= 130


def test_a_real_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the machine's limits become one line: an unexpected error is not hidden."""
    monkeypatch.chdir(tmp_path)

    def bug(*_: object, **__: object) -> None:
        raise RuntimeError("index out of range in self")

    monkeypatch.setattr("fortify.pipeline.run_pipeline", bug)
    with pytest.raises(RuntimeError, match="index out of range"):
        main(["run", "data.train_limit=10"])


# ------------------------------------------------------------------------------- wording, positive side
def test_export_out_accepts_a_folder_or_a_file(files: dict[str, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "exported" / "float"  # created, like every verb's --out DIR
    runs = tmp_path / "runs"
    assert main(["export", files["model"], "--onnx", "--out", str(folder), "--runs", str(runs), "-q",
                 "export.n_check=8", T]) == 0
    assert (folder / "model.onnx").is_file()
    assert f"{folder / 'model.onnx'}:" in capsys.readouterr().out
    dest = tmp_path / "named.onnx"
    assert main(["export", files["model"], "--onnx", "--out", str(dest), "--runs", str(runs), "-q",
                 "export.n_check=8", T]) == 0
    assert dest.is_file() and not (tmp_path / "named.onnx" / "model.onnx").exists()
    for run_dir in (p for p in runs.iterdir() if p.is_dir()):  # report.html like every other file: 0644
        for f in run_dir.rglob("*"):
            if f.is_file():
                assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~_umask(), f


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_compress_help_lists_every_robust_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from fortify.compress.measure import ROBUST_MODES

    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    robust = text.rsplit("--robust MODE", 1)[1].split("--no-latency", 1)[0]
    assert all(m in robust for m in ROBUST_MODES), robust


def test_eps_covering_the_box_is_a_warning_in_the_summary(files: dict[str, str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", files["model"], "--threat", "linf:5", "--n", "4", "--curve-points", "0", "--no-sanity",
               "--out", str(tmp_path / "runs"), "data.test_limit=8", "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    out = [ln for ln in cap.out.splitlines() if ln.startswith("warning: ")]
    assert len(out) == 1 and out[0].startswith("warning: robustness.threats[0] linf:5: eps 5 >= 1")
    assert "covers every input" in out[0]
    assert any(ln.startswith("fortify: warning: robustness.threats[0] linf:5") for ln in cap.err.splitlines())
