"""Small things tests make: CSV tables, a disk that is full, a free port, the scripts as modules,
``pneumo-data verify`` run in the test's own process."""

from __future__ import annotations

import csv
import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.data import REPO


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV table at ``path`` (its folder made): the header row, then ``rows``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


def disk_full(path: Path) -> Path:
    """Make the next write of ``path`` hit a full disk: its temporary file (``.NAME.partial``,
    which pneumo writes and renames into place) is a link to /dev/full."""
    partial = path.with_name(f".{path.name}.partial")
    partial.symlink_to("/dev/full")
    return partial


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` imported as the module ``NAME`` (registered, as a script that
    configures loggers by its own name expects)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def verify_command(capsys, *args: str) -> tuple[int, str]:
    """``pneumo-data verify ARGS`` in this process: (exit status, standard output)."""
    from pneumo.cli.data import main as data_main

    with pytest.raises(SystemExit) as stop:
        data_main(["verify", *args])
    return stop.value.code, capsys.readouterr().out
