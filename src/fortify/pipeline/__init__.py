"""The main job as a list of stages: :data:`STAGES`, :class:`RunContext`, :func:`run_pipeline`.

Every stage lives in ``fortify/pipeline/stages/``, one module per stage (``train``, ``load``,
``evaluate``, ``robustness``, ``certify``, ``compress`` and ``export``, ``save``, ``report``): the
application imports the pillars, never the reverse. Each module registers its stages with
:func:`register_stage` and is imported here, so its stages (and their recipe sections) are found by
the config, the CLI and the tests.
"""
from __future__ import annotations

import importlib
import pkgutil

from fortify.pipeline.base import STAGES, RunContext, Stage, register_stage
from fortify.pipeline.run import prepare_out_dir, run_pipeline, write_report_files

from fortify.pipeline import stages as _builtin  # noqa: E402  (registers the built-in stages)

for _m in pkgutil.iter_modules(_builtin.__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{_builtin.__name__}.{_m.name}")



__all__ = ["STAGES", "RunContext", "Stage", "register_stage", "run_pipeline", "prepare_out_dir",
           "write_report_files"]
