"""Shared matplotlib plumbing for every figure fortify writes (Agg backend, no display needed).

``plt = pyplot()`` selects the Agg backend and returns ``matplotlib.pyplot``; ``save_figure``
writes a figure (creating the folder), always closes it, and turns an unwritable destination into
:class:`fortify.errors.OutputError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fortify.errors import OutputError


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported lazily: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (png/svg/pdf by suffix) and close it, also when writing fails."""
    plt = pyplot()
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(dest, dpi=dpi)
    except OSError as e:
        raise OutputError(f"cannot write figure {dest}: {e}") from None
    finally:
        plt.close(fig)
    return dest
