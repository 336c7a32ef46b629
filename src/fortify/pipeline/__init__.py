"""The main job as a list of stages: :data:`STAGES`, :class:`RunContext`, :func:`run_pipeline`.

Built-in stages (``fortify/pipeline/stages/``): ``train``, ``load``, ``evaluate``, ``save``,
``report``. A pillar adds stages by registering them with :func:`register_stage` in a module
``fortify/<pillar>/stages.py``; every such module is imported here, so its stages (and their
recipe sections) are found by the config, the CLI and the tests without touching this package.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from fortify.pipeline.base import STAGES, RunContext, Stage, register_stage
from fortify.pipeline.run import prepare_out_dir, run_pipeline, write_report_files

from fortify.pipeline import stages as _builtin  # noqa: E402  (registers the built-in stages)

for _m in pkgutil.iter_modules(_builtin.__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{_builtin.__name__}.{_m.name}")



def import_pillar_stages(root: Path, package: str) -> list[str]:
    """Import ``<package>.<sub>.stages`` for every sub-package of ``root`` that has a ``stages.py``.

    Returns the module names imported (alphabetical). Called once for ``fortify`` at import time.
    """
    done = []
    for m in sorted(pkgutil.iter_modules([str(root)]), key=lambda m: m.name):
        if m.ispkg and m.name != "pipeline" and (root / m.name / "stages.py").is_file():
            importlib.import_module(f"{package}.{m.name}.stages")
            done.append(f"{package}.{m.name}.stages")
    return done


import_pillar_stages(Path(__file__).resolve().parent.parent, "fortify")

__all__ = ["STAGES", "RunContext", "Stage", "register_stage", "run_pipeline", "prepare_out_dir",
           "write_report_files", "import_pillar_stages"]
