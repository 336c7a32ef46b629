"""``run_pipeline``: create the run (store row + folder), run the stages in order, record the outcome."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console

from fortify import progress
from fortify.errors import ConfigError, OutputError
from fortify.pipeline.base import STAGES, RunContext, StageResult, run_device
from fortify.store import new_run_id, package_versions

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from fortify.config import Config
    from fortify.store import RunStore


def prepare_out_dir(out: str | Path) -> Path:
    """Create the runs folder; an unwritable location raises OutputError (nothing else is touched)."""
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{new_run_id()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output directory {str(p)!r} is not writable: {e.strerror or e}") from None
    return p


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else ""
    return f"{type(e).__name__}: {text}" if not text or not hasattr(e, "__module__") or \
        not type(e).__module__.startswith("fortify") else text


def write_report_files(ctx: RunContext, *, status: str, error: str | None = None, html: bool = True) -> Path:
    """Write ``report.json`` (and ``report.html`` unless ``html`` is False) for the context's current state."""
    from fortify.report import build_report, write_html, write_json

    if not ctx.versions:
        ctx.versions = package_versions()
    report = build_report(ctx, status=status, error=error)
    path = write_json(report, ctx.path("report.json"))
    if html:
        write_html(report, ctx.run_dir)
    return path


def run_pipeline(
    config: "Config",
    *,
    verb: str = "run",
    argv: Sequence[str] = (),
    store: "RunStore | None" = None,
    stages: Sequence[str] | None = None,
    model: "nn.Module | None" = None,
    console: Console | None = None,
    quiet: bool = False,
    resume: str | None = None,
) -> RunContext:
    """Run ``stages`` (default ``config.stages``) in order and return the finished context.

    The run is recorded in ``store`` (if given) as ``running`` before the first stage, then
    ``ok``, or ``failed`` with the error's first line; a failure re-raises the exception after
    writing a ``report.json`` with what was measured so far. Files already written are kept.
    ``model`` (optional) is used instead of building one from ``config.model``. ``resume`` (a run
    id in ``store``) continues that run in its folder: the run is marked ``running`` again and the
    train stage continues from the last epoch checkpoint.

    Device: every stage runs on :func:`fortify.pipeline.base.run_device` (``train.device``; default the
    given model's device, else cuda when available, else cpu), checked before anything is written: a
    given ``model`` elsewhere (or split over devices) is a ConfigError naming both, never moved. The
    device is recorded with the run (``versions["device"]`` in the run store and report, next to torch's
    version).
    """
    if not config.complete:  # parsed before the stages registered their sections: validate it all now
        from fortify.config import resolve

        config = resolve(config.raw)
    names = list(config.stages if stages is None else stages)
    if not names:
        raise ConfigError("the pipeline needs at least one stage")
    classes = [STAGES.get(n) for n in names]
    device = run_device(config, model)
    out = prepare_out_dir(config.output.dir)
    from fortify.train.device import describe

    versions = {**package_versions(), "device": describe(device)}
    cfg_dict = config.to_dict()
    cfg_dict["stages"] = names
    if resume is not None:
        if store is None:
            raise ConfigError("resuming a run needs the run store it was recorded in")
        run_id = store.resolve(resume)
        store.reopen_run(run_id, argv=list(argv))
    elif store is not None:
        run_id = store.start_run(verb, argv=list(argv), config=cfg_dict, seed=config.seed, versions=versions)
    else:
        run_id = new_run_id()
    run_dir = out / run_id
    ctx = RunContext(config=config, run_dir=run_dir, run_id=run_id, verb=verb, store=store,
                     console=console or progress.log_console(), quiet=quiet, model=model, versions=versions,
                     stages=names, resume=resume is not None)
    ctx._device = device
    t_start = time.perf_counter()
    beat = store.keep_alive(run_id) if store is not None else None  # liveness for `runs ls` (interrupted)
    try:
        try:
            run_dir.mkdir(parents=True, exist_ok=resume is not None)
            (run_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2, default=str) + "\n")
        except OSError as e:
            raise OutputError(f"cannot create run folder {str(run_dir)!r}: {e.strerror or e}") from None
        if store is not None:
            store.set_run_dir(run_id, run_dir)
        ctx.add_artefact("config", run_dir / "config.json", kind="config")
        with progress.enabled(not quiet):  # long steps inside stages show bars / periodic log lines
            for name, cls in zip(names, classes):
                ctx.stage = name
                t0 = time.perf_counter()
                result = cls().run(ctx)
                if result is None:  # a stage with nothing to hand on (e.g. written before results existed)
                    result = StageResult()
                if not isinstance(result, StageResult):
                    raise TypeError(f"stage {name!r} returned {type(result).__name__}, not a StageResult")
                ctx.results[name] = result
                ctx.timing[name] = time.perf_counter() - t0
                ctx.log_metrics({"seconds": ctx.timing[name]})
        ctx.stage = ""
        ctx.timing["total"] = time.perf_counter() - t_start
        ctx.log_metrics({"total_seconds": ctx.timing["total"]}, stage="run")
        if "report" in names:  # the report stage ran before the total was known: refresh it
            sec = config.section("report")
            write_report_files(ctx, status="ok", html=bool(getattr(sec, "html", True)))
    except BaseException as e:  # noqa: BLE001 - record every failure, then re-raise it unchanged
        line = _first_line(e) if not isinstance(e, KeyboardInterrupt) else "interrupted"
        ctx.timing["total"] = time.perf_counter() - t_start
        if store is not None:
            try:
                store.finish_run(run_id, "failed", f"[{ctx.stage or 'setup'}] {line}")
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        if run_dir.is_dir():
            try:
                write_report_files(ctx, status="failed", error=f"[{ctx.stage or 'setup'}] {line}")
            except Exception:  # noqa: BLE001
                pass
        raise
    finally:
        if beat is not None:
            beat.stop()
    if store is not None:
        store.finish_run(run_id, "ok")
    return ctx


def stage_help() -> list[tuple[str, str]]:
    """``(name, one-line help)`` of every registered stage."""
    return [(n, STAGES.help(n)) for n in STAGES.names()]


def describe(ctx: RunContext) -> dict[str, Any]:
    """A short summary of a finished run (for printing)."""
    return {"run_id": ctx.run_id, "run_dir": str(ctx.run_dir), "metrics": ctx.metrics, "timing": ctx.timing}
