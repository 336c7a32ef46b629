"""Shared by the device tests: the devices of this machine and the CLI's one-line-error contract."""
from __future__ import annotations

import pytest
import torch

from fortify.cli import main
from fortify.train import device as fdevice

#: the device kinds usable here (cpu first); every device test is parametrised over them
DEVICES = fdevice.available()


def unavailable_device() -> str:
    """A CUDA device this machine lacks: ``cuda`` without a GPU, else one index past the last GPU."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI on ``argv``; assert exit status 2 and exactly one ``fortify: error:`` line on stderr."""
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("fortify: error: "), err
    return err[0]
