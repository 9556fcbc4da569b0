"""The run lock, between real processes: one run per directory, and a killed run frees it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumo.artifacts.rundir import LOCK_NAME, check_run_dir, claim_run_dir, remove_unused_run_dir
from tests.helpers import FAST, SAMPLE, run_cli
from tests.helpers.data import REPO

# A process that claims RUN once GO exists, prints "proceeds" and holds the claim until STOP
# exists (300 s at most), or prints its one-line refusal and exits 2.
CLAIMANT = """
import sys, time
from pathlib import Path
from pneumo.artifacts.rundir import claim_run_dir
from pneumo.errors import PneumoError
run, go, stop = (Path(a) for a in sys.argv[1:4])
while not go.exists():
    time.sleep(0.01)
try:
    with claim_run_dir(run, None):
        print("proceeds", flush=True)
        deadline = time.monotonic() + 300
        while not stop.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
except PneumoError as err:
    print(f"error: {err}", flush=True)
    sys.exit(2)
"""


def _claimant(run: Path, go: Path, stop: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMANT, str(run), str(go), str(stop)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(process: subprocess.Popen) -> str:
    """The first line ``process`` prints: a claimant prints within seconds, or exits (300 s at
    most holding), so this never waits unbounded."""
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_of_two_processes_starting_runs_on_one_directory_exactly_one_proceeds(tmp_path):
    run, go, stop = tmp_path / "run", tmp_path / "go", tmp_path / "stop"
    processes = [_claimant(run, go, stop) for _ in range(2)]
    time.sleep(0.5)  # both started, both waiting on GO (importing pneumo takes longer; fine)
    go.touch()
    try:
        first = [_wait_for_line(p) for p in processes]
    finally:
        stop.touch()
        codes = [p.wait(timeout=60) for p in processes]
    assert sorted(codes) == [0, 2]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert first[winner] == "proceeds"
    refusal = first[loser]
    holder = f"(process {processes[winner].pid} on {socket.gethostname()}, started "
    assert refusal.startswith(f"error: {run} is being written by another run {holder}")
    assert refusal.endswith("wait for it to end or train into a new directory")
    assert processes[loser].stdout.read() == ""  # one line, no traceback
    assert not (run / LOCK_NAME).exists()  # the winner let go and removed it


@pytest.mark.slow  # starts pneumo-train
def test_a_killed_runs_lock_is_free_and_the_command_line_refuses_a_held_one_in_one_line(tmp_path):
    run, go, stop = tmp_path / "run", tmp_path / "go", tmp_path / "stop"
    go.touch()
    holder = _claimant(run, go, stop)
    try:
        assert _wait_for_line(holder) == "proceeds"
        result = run_cli("-m", "pneumo.cli.train", *FAST, f"data.root={SAMPLE}", f"hydra.run.dir={run}")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(errors) == 1 and f"process {holder.pid} on " in errors[0], result.stderr
        assert not (run / "checkpoints").exists()

        holder.send_signal(signal.SIGKILL)  # no finally runs: the lock file stays, naming it
        holder.wait(timeout=30)
    finally:
        stop.touch()
        if holder.poll() is None:
            holder.kill()
    assert f"process {holder.pid} on " in (run / LOCK_NAME).read_text()
    check_run_dir(run, None)  # the kernel let go of the lock with its process: not refused
    with claim_run_dir(run, None):
        assert f"process {os.getpid()} on " in (run / LOCK_NAME).read_text()
    assert not (run / LOCK_NAME).exists()


def test_a_refused_runs_folder_goes_but_no_other_folder_does(tmp_path):
    def hydra_left(name: str) -> Path:
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text("seed: 42\n")
        (folder / "train.log").write_text("error: model.optimizer.lr=-1 is not valid\n")
        return folder

    refused = hydra_left("refused")
    assert remove_unused_run_dir(refused) and not refused.exists()
    # anything beside Hydra's files: an earlier run's, or the user's own
    mine = hydra_left("mine")
    (mine / "notes.txt").write_text("mine")
    assert not remove_unused_run_dir(mine) and (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in mine.iterdir()) == [".hydra", "notes.txt", "train.log"]
    assert not remove_unused_run_dir(tmp_path / "never_made")
    (tmp_path / "empty").mkdir()  # not Hydra's: nothing says a run was refused there
    assert not remove_unused_run_dir(tmp_path / "empty") and (tmp_path / "empty").is_dir()
