"""``python -m fortify``: the ``fortify`` command line; also what ``torchrun --nproc_per_node=N -m fortify train ...``
runs on every rank (see :mod:`fortify.train.distributed.env`)."""
from __future__ import annotations

import sys

from fortify.cli import main

if __name__ == "__main__":
    sys.exit(main())
