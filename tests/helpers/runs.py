"""Running pneumo in tests: small fast settings, composed configs, child processes, Ctrl-C."""

from __future__ import annotations

import atexit
import locale
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
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
    those imports alone); anything else, or ``fresh``, in a fresh interpreter (a command whose
    own launcher re-runs ``sys.argv``, as Lightning's DDP does). ``env``: the environment, this
    process's by default."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    if fresh or not (args[0] == "-m" or args[0].endswith(".py")):
        return subprocess.run(
            [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    with tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        child = _FORK_SERVER.Process(target=_command, args=(args, str(cwd), env, str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            output, errors = out.read_bytes(), err.read_bytes()
            raise subprocess.TimeoutExpired([sys.executable, *args], timeout, output, errors)
        encoding = locale.getpreferredencoding(False)
        return subprocess.CompletedProcess(
            [sys.executable, *args],
            child.exitcode,
            out.read_text(encoding=encoding),
            err.read_text(encoding=encoding),
        )


# what every command imports, loaded once in the server its children are forked from
_FORK_SERVER = multiprocessing.get_context("forkserver")
_FORK_SERVER.set_forkserver_preload(
    ["torch", "torchvision", "lightning", "hydra", "pneumo.training.fit", "pneumo.serving.loading"]
)


def _command(args: tuple[str, ...], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the child: ``python ARGS`` run in ``cwd`` with ``env``, its output into two files;
    its exit status is multiprocessing's (SystemExit's code, 1 for an uncaught exception)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    encoding = locale.getpreferredencoding(False)
    sys.stdout = open(1, "w", encoding=encoding, closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
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
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
