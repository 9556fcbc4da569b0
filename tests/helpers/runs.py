"""Running pneumo in tests: small fast settings, composed configs, child processes, Ctrl-C."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from omegaconf import DictConfig

from pneumo.training.config import compose_config
from tests.helpers.data import REPO

# Small and fast: 32 px images, scratch weights, no progress bar.
FAST = [
    "model.weights=null",
    "data.image_size=32",
    "data.batch_size=4",
    "data.val_fraction=0.25",
    "callbacks.progress_bar=null",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=2",
    # the figures tests compare do not depend on the machine's bfloat16 units
    "trainer.precision=32-true",
]


def make_cfg(output_dir: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose a config as the entry point would, with its run directory at ``output_dir``."""
    return compose_config(overrides, output_dir, config_name)


def fit_until_interrupted(trainer, model, datamodule) -> None:
    """Fit until a callback raises KeyboardInterrupt, as Ctrl-C would, and Lightning exits."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
            trainer.fit(model, datamodule=datamodule)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C from then on


def run_cli(
    *args: str,
    cwd: Path = REPO,
    timeout: int = 300,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Run a command-line entry point in a child process, capturing its output, as
    ``python ARGS`` would: ``-m MODULE ...`` and ``SCRIPT.py ...`` in a child of a fork server
    that has imported torch, Lightning and pneumo once (a fresh interpreter spends about 5 s on
    those imports alone); anything else, ``fresh``, or an ``env`` that changes what an
    interpreter reads as it starts, in a fresh interpreter. ``env``: the environment, this
    process's by default. A forked command finds those modules imported already: a test of
    what a command imports, or of what it prints while importing, asks for ``fresh``."""
    forked = args[0] == "-m" or args[0].endswith(".py")
    # (torch itself adds TORCHINDUCTOR_CACHE_DIR and the like to this process's environment)
    changed = env is not None and _read_at_start(env) != _read_at_start(os.environ)
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    if fresh or not forked or changed:
        return subprocess.run(
            [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    with tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        child = _FORK_SERVER.Process(target=_command, args=(args, str(cwd), env, str(out), str(err)))
        timed_out = left = True
        try:
            child.start()
            child.join(timeout)
            timed_out = child.is_alive()
            # as subprocess.run waits for the end of the output, a command's own children must end
            left = timed_out or not _group_ended(child.pid, deadline=time.monotonic() + 30)
        finally:
            if timed_out or left:  # or this test was stopped: nothing of the command outlives it
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(ValueError, AttributeError):
                    child.kill()  # not yet its group's leader
            with contextlib.suppress(ValueError, AssertionError):
                child.join(60)
        output, errors = out.read_bytes(), err.read_bytes()
        if timed_out:
            raise subprocess.TimeoutExpired([sys.executable, *args], timeout, output, errors)
        assert not left, f"{args}: its processes still ran after it ended: {errors[-2000:]!r}"
        return subprocess.CompletedProcess(
            [sys.executable, *args], child.exitcode, _text(output), _text(errors)
        )


def _text(output: bytes) -> str:
    """Output as ``subprocess.run(text=True)`` gives it: decoded, newlines translated."""
    return output.decode().replace("\r\n", "\n").replace("\r", "\n")


def _read_at_start(env: Mapping[str, str]) -> dict[str, str]:
    """The variables an interpreter, torch, its thread pools or the locale read once, at start."""
    prefixes = ("PYTHON", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "PYTORCH_", "LC_", "LANG")
    named = ("TMPDIR", "TZ", "MPLBACKEND")
    return {k: v for k, v in env.items() if k.startswith(prefixes) or k in named}


def _group_ended(pgid: int, deadline: float) -> bool:
    """Whether every process of the group ``pgid`` has ended (a zombie, awaiting its parent's
    wait, has), waiting until ``deadline``."""
    while True:
        running = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                running = running or (int(fields[2]) == pgid and fields[0] != "Z")
        if not running:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# what every command imports, loaded once in the server its children are forked from
_FORK_SERVER = multiprocessing.get_context("forkserver")
_FORK_SERVER.set_forkserver_preload(
    [
        "torch",
        "torchvision",
        "lightning",
        "hydra",
        "pneumo.training.fit",
        "pneumo.serving.loading",
        "tests.helpers",
    ]
)


def _command(args: tuple[str, ...], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the child, a process group of its own: ``python ARGS`` run in ``cwd`` with ``env``,
    its output into two files; its exit status is multiprocessing's (SystemExit's code, 1 for an
    uncaught exception). Processes that start a session of their own (W&B's service) are not
    waited for."""
    os.setpgid(0, 0)
    # the command's own processes (DataLoader workers) start as in production: forked
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    # as a fresh interpreter under a UTF-8 locale sets them, unbuffered (PYTHONUNBUFFERED)
    sys.stdout = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    sys.stdout.reconfigure(write_through=True)
    sys.stderr.reconfigure(write_through=True)
    try:
        if args[0] == "-m":
            sys.path.insert(0, cwd)
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(args[0]).resolve().parent))
            sys.argv = list(args)
            runpy.run_path(args[0], run_name="__main__")
    finally:
        # what the interpreter does at its exit: wait for the command's threads, then atexit
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
