"""The main job as a list of stages: :data:`STAGES`, :class:`RunContext`, :func:`run_pipeline`.

Every stage lives in ``fortify/pipeline/stages/``, one module per stage (``train``, ``load``,
``accuracy``, ``robustness``, ``certify``, ``compress`` and ``export``, ``save``, ``report``): the
application imports the pillars, never the reverse. Each module registers its stage with
:func:`register_stage` (which declares its recipe section to :mod:`fortify.config`) and returns a
typed :class:`StageResult` (:mod:`fortify.pipeline.results`); :mod:`fortify.pipeline.checks` registers
the configuration checks that need the pillars. Importing this package is what makes
:func:`fortify.config.resolve` validate every section; :func:`load_config` and :func:`resolve` here
are the same functions, named where the application lives.
"""
from __future__ import annotations

import importlib
import pkgutil

from fortify.config import load_config, resolve
from fortify.pipeline import checks as _checks  # noqa: F401  (registers the name / argument checks)
from fortify.pipeline.base import STAGES, RunContext, Stage, StageResult, StageResultError, register_stage
from fortify.pipeline.run import prepare_out_dir, run_pipeline, write_report_files

from fortify.pipeline import stages as _builtin  # noqa: E402  (registers the built-in stages)

for _m in pkgutil.iter_modules(_builtin.__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{_builtin.__name__}.{_m.name}")


__all__ = ["STAGES", "RunContext", "Stage", "StageResult", "StageResultError", "register_stage", "run_pipeline",
           "prepare_out_dir", "write_report_files", "load_config", "resolve"]
