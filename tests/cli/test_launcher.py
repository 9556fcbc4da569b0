"""Sweep jobs through Hydra's submitit launcher: as SLURM jobs on paper (as local processes:
tests/run/test_tracking.py, whose parallel jobs share one MLflow store)."""

import os

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.helpers import FAST, SAMPLE, run_cli

TINY = [*FAST, f"data.root={SAMPLE}", "data.num_workers=0", "trainer.max_epochs=1"]


def _launcher(overrides: list[str]) -> dict:
    """``hydra.launcher`` of pneumo-train's config, resolved as the launcher receives it."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pneumo.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_jobs_ask_for_the_trainers_nodes_and_devices():
    launcher = _launcher(["launcher=slurm", "trainer.devices=4", "++trainer.num_nodes=2"])
    assert launcher["_target_"].endswith("SlurmLauncher")
    # one task a GPU on every node: a job can itself train with DDP, its ranks read from SLURM
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    # the settings a cluster asks for are keys with defaults, to override per cluster
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] > 0
    assert launcher["cpus_per_task"] > 0 and launcher["mem_gb"] > 0


@pytest.mark.slow
def test_slurm_sweep_writes_an_sbatch_script_with_the_request(tmp_path):
    # No cluster here: a stand-in sbatch keeps the script submitit hands it and refuses the job
    # (submitit only checks that srun exists).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "sbatch": f'cp "$1" {tmp_path}/submitted.sh\necho "no cluster here" >&2\nexit 1',
        "srun": "exit 1",
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    result = run_cli(
        "-m", "pneumo.cli.train", "-m", "launcher=slurm", *TINY, "trainer.devices=4",
        "++trainer.num_nodes=2", "hydra.launcher.partition=short", "hydra.launcher.timeout_min=30",
        "seed=1,2", f"hydra.sweep.dir={tmp_path}/sweep",
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0  # the stand-in refused the job
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=short", "--time=30",
                 "--array=0-1%2"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, line
    assert "srun" in script and "submitit" in script
