"""A run cut short never reports success: real signals sent to a real pneumo-train process.

SIGTERM (what SLURM and most schedulers send), Ctrl-C, SIGUSR1 (SLURM's warning before a
time limit) and trainer.max_time each end the run with a non-zero status and one line that
says so, with the command that resumes it; under SLURM with slurm.requeue=true the job is
requeued and, started again, resumes by itself.
"""

import os
import shlex
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, SAMPLE, run_cli, start_training, wait_for_checkpoint

# A fake SLURM job of one task: what Lightning and pneumo read to know they run under SLURM.
SLURM_JOB = {
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "pneumo-test",
    "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "localhost",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _fake_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding an ``scontrol`` that records its arguments (``requeue JOBID``) in a file."""
    fake_bin, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (fake_bin / "scontrol").chmod(0o755)
    return fake_bin, calls


def _stop_line(stderr: str) -> str:
    """The one line saying the run stopped short."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("stopped by ")]
    return line


def _resume_command(line: str) -> list[str]:
    """The command the line gives, as arguments of ``python -m pneumo.cli.train``."""
    words = shlex.split(line.split("resume with: ", 1)[1].split(" (trainer.max_time")[0])
    assert words[0] == "pneumo-train"
    return words[1:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "status", "named"),
    [
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGINT, 130, "Ctrl-C (SIGINT)"),
        (signal.SIGUSR1, 138, "SIGUSR1"),
        (signal.SIGHUP, 129, "SIGHUP"),  # the terminal or SSH connection closed
    ],
    ids=["SIGTERM", "SIGINT", "SIGUSR1", "SIGHUP"],
)
def test_a_signal_stops_the_run_non_zero_with_the_command_that_resumes_it(tmp_path, signum, status, named):
    run_dir = tmp_path / "run"
    fake_bin, calls = _fake_scontrol(tmp_path)
    # SIGUSR1 under SLURM without slurm.requeue: the run stops and stays stopped (no requeue)
    env = _env(**SLURM_JOB, PATH=f"{fake_bin}:{os.environ['PATH']}") if signum == signal.SIGUSR1 else None
    process = start_training(run_dir, "trainer.max_epochs=200", env=env)
    wait_for_checkpoint(run_dir, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    line = _stop_line(stderr)
    saved = run_dir / "checkpoints" / "interrupted.ckpt"
    assert saved.is_file()
    assert (
        line.startswith(f"stopped by {named} after ")
        and "of 200 epochs, before the schedule finished" in line
    )
    assert line.endswith(f"ckpt_path={saved} hydra.run.dir={run_dir}")
    assert f"resume with: pneumo-train {' '.join(FAST)} data.root={SAMPLE} " in line  # as it was run
    assert not calls.exists()  # requeue was not asked for
    assert not (run_dir / "run.lock").exists()  # the directory is free again
    # the resume command of the line, run as it is (with a shorter schedule), continues the run
    if signum == signal.SIGTERM:
        again = [
            a if a != "trainer.max_epochs=200" else "trainer.max_epochs=2" for a in _resume_command(line)
        ]
        resumed = run_cli("-m", "pneumo.cli.train", *again, env=_env())
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming from {saved}" in resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_max_time_exits_non_zero_and_a_finished_schedule_zero(tmp_path):
    run_dir = tmp_path / "timed"
    process = start_training(run_dir, "trainer.max_epochs=200", "trainer.max_time=00:00:00:02")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-3000:]
    line = _stop_line(stderr)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line.startswith("stopped by trainer.max_time=00:00:00:02 after ") and "of 200 epochs" in line
    # the elapsed time is restored on resume: the command lifts the limit and says why
    assert f"trainer.max_time=null ckpt_path={last} hydra.run.dir={run_dir}" in line
    assert "trainer.max_time=00:00:00:02" not in line.split("resume with: ")[1].split(" (")[0]
    assert line.endswith("(trainer.max_time counts the whole run, resumes included)")
    # a time limit the schedule finishes within is a success
    finished = start_training(tmp_path / "finished", "trainer.max_epochs=1", "trainer.max_time=00:01:00:00")
    _, stderr = finished.communicate(timeout=300)
    assert finished.returncode == 0, stderr[-3000:]
    assert "stopped by" not in stderr


@pytest.mark.slow
def test_slurm_requeue_on_sigusr1_and_the_requeued_job_resumes_by_itself(tmp_path):
    run_dir = tmp_path / "run"
    fake_bin, calls = _fake_scontrol(tmp_path)
    env = _env(**SLURM_JOB, PATH=f"{fake_bin}:{os.environ['PATH']}")
    command = ("trainer.max_epochs=4", "slurm.requeue=true")
    process = start_training(run_dir, *command, env=env)
    wait_for_checkpoint(run_dir, process)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 138, stderr[-3000:]
    saved = run_dir / "checkpoints" / "interrupted.ckpt"
    line = _stop_line(stderr)
    assert f"saved {saved}; SLURM requeues the job (slurm.requeue=true)" in line
    assert calls.read_text().split() == ["requeue", "4242"]  # Lightning's SLURMEnvironment asked SLURM
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # interrupted.ckpt supersedes Lightning's copy
    # SLURM starts the job again with its first command line
    again = start_training(run_dir, *command, env={**env, "SLURM_RESTART_COUNT": "1"})
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert f"resuming {saved}" in stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


@pytest.mark.slow
def test_slurm_requeue_needs_a_named_run_directory(tmp_path):
    result = run_cli(
        "-m",
        "pneumo.cli.train",
        *FAST,
        f"data.root={SAMPLE}",
        "slurm.requeue=true",
        cwd=tmp_path,
        env=_env(**SLURM_JOB),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: slurm.requeue=true: a requeued job runs its command line again, so name the run's "
        "directory, e.g. hydra.run.dir=outputs/train/runs/$SLURM_JOB_ID, and it continues there"
    ]
