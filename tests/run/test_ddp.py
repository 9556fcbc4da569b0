"""One run on several processes (DDP, CPU/gloo): the same figures as one process, one run directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torchmetrics.functional.classification import binary_auroc

from pneumo.artifacts.rundir import claim_run_dir
from pneumo.cli.launch import prepare_launch
from pneumo.data.dataset import EpochSampler
from pneumo.data.preprocess import to_model_input, to_unit
from pneumo.errors import PneumoError
from pneumo.model.calibration import fit_temperature
from pneumo.model.network import positive_probability
from pneumo.model.threshold import choose_threshold
from pneumo.serving.loading import load_model
from pneumo.training.build import build
from tests.helpers import FAST, REPO, free_port, make_cfg, run_cli, sample_files, scalars

EPOCHS = 2
DDP_CPU = ["trainer.accelerator=cpu", "trainer.strategy=ddp"]


@pytest.fixture
def odd_root(tmp_path: Path) -> Path:
    """train/ with 5 NORMAL and 4 PNEUMONIA films (unequal class weights), val/ with 7 films of
    other patients: an odd count, which a padding sampler would even out by validating one film
    twice."""
    root = tmp_path / "xray"
    normal, pneumonia = sample_files("NORMAL"), sample_files("PNEUMONIA")
    chosen = {
        ("train", "NORMAL"): normal[:4] + normal[7:],
        ("train", "PNEUMONIA"): pneumonia[4:],
        ("val", "NORMAL"): normal[4:7],
        ("val", "PNEUMONIA"): pneumonia[:4],
    }
    for (split, label), files in chosen.items():
        (root / split / label).mkdir(parents=True)
        for path in files:
            shutil.copy(path, root / split / label / path.name)
    return root


def _overrides(root: Path) -> list[str]:
    return [
        *FAST,
        f"data.root={root}",
        "data.min_val_images=5",
        "data.num_workers=0",
        f"trainer.max_epochs={EPOCHS}",
        "model.label_smoothing=0.1",
    ]


def _one_process_figures(run_dir: Path, overrides: list[str], scratch: Path) -> dict[str, float]:
    """val/loss, val/auroc and the threshold rule's pick, computed here in one process from the
    run's last.ckpt over the same validation films, all in one batch."""
    loaded = load_model(run_dir / "checkpoints" / "last.ckpt")
    cfg = make_cfg(scratch, overrides)
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    films = datamodule.val_set
    images = torch.stack([films[i][0] for i in range(len(films))])
    labels = torch.tensor(films.labels)
    with torch.no_grad():
        logits = loaded.net(to_model_input(to_unit(images)))
    loss = F.cross_entropy(
        logits, labels, weight=datamodule.class_weights(), label_smoothing=cfg.model.label_smoothing
    )
    positive = (labels == datamodule.positive_index).long()
    index = datamodule.positive_index
    temperature = fit_temperature(logits[:, index] - logits[:, 1 - index], positive)
    probs = positive_probability(logits, index, temperature)
    return {
        "val/loss": float(loss),
        "val/auroc": float(binary_auroc(probs, positive)),
        "temperature": temperature,
        "threshold": choose_threshold(
            probs, positive, cfg.model.threshold_method, cfg.model.target_sensitivity
        ),
        "films": len(films),
    }


def _check_one_run(run_dir: Path, output: str, overrides: list[str], scratch: Path) -> None:
    """One run directory as one process would leave it, with one process's figures."""
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoints", "tensorboard", "train.log"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    writers = {p.name.split(".")[-2] for p in (run_dir / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1, writers  # one process (rank zero) wrote TensorBoard
    # one epoch line an epoch, on the console and in train.log
    assert output.count("[pneumo.callbacks.epoch_report][INFO] - epoch ") == EPOCHS
    assert (run_dir / "train.log").read_text().count(
        "[pneumo.callbacks.epoch_report][INFO] - epoch "
    ) == EPOCHS

    expected = _one_process_figures(run_dir, overrides, scratch)
    assert expected["films"] == 7
    assert scalars(run_dir)["val/loss"][-1] == pytest.approx(expected["val/loss"], abs=1e-6)
    assert scalars(run_dir)["val/auroc"][-1] == pytest.approx(expected["val/auroc"], abs=1e-6)
    stored = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["pneumo"]
    assert stored["calibration"]["temperature"] == pytest.approx(expected["temperature"], rel=1e-5)
    assert scalars(run_dir)["val/temperature"][-1] == pytest.approx(expected["temperature"], rel=1e-5)
    assert stored["threshold"] == pytest.approx(expected["threshold"], abs=1e-6)


@pytest.mark.slow
def test_two_processes_on_one_machine_log_the_one_process_figures(tmp_path, odd_root):
    overrides = _overrides(odd_root)
    run_dir = tmp_path / "run"
    result = run_cli(
        "-m", "pneumo.cli.train", *overrides, *DDP_CPU, "trainer.devices=2", f"hydra.run.dir={run_dir}",
        fresh=True,  # Lightning starts rank 1 with this process's command line
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    _check_one_run(run_dir, result.stdout, overrides, tmp_path / "reference")


def _two_machines(overrides: list[str], run_dir: Path) -> list[subprocess.Popen]:
    """pneumo-train as two machines of one process each, started by torchrun, into ``run_dir``."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
                "-m", "pneumo.cli.train", *overrides, *DDP_CPU, "trainer.devices=1", "trainer.num_nodes=2",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip


@pytest.mark.slow
def test_two_machines_by_torchrun_share_one_run_directory(tmp_path, odd_root):
    overrides = _overrides(odd_root)
    run_dir = tmp_path / "run"
    nodes = _two_machines(overrides, run_dir)
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert " epoch " not in outputs[1]  # rank 1 prints warnings only
    _check_one_run(run_dir, outputs[0], overrides, tmp_path / "reference")


@pytest.mark.slow
def test_a_sweep_of_ddp_runs_in_one_process_is_refused_in_one_line(tmp_path, odd_root):
    result = run_cli(
        "-m", "pneumo.cli.train", "-m", *FAST, f"data.root={odd_root}", "data.min_val_images=5",
        *DDP_CPU, "trainer.devices=2",
        "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        # jobs by number: the overrides alone would name a folder longer than 255 characters
        "hydra.sweep.subdir=${hydra.job.num}",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: -m runs its jobs")
    assert "launcher=slurm" in result.stderr
    assert "GLOBAL_RANK" not in result.stdout + result.stderr  # no second process was started


def test_epoch_shards_are_disjoint_cover_the_epoch_and_change_order_each_epoch():
    """Lightning wraps EpochSampler in DistributedSamplerWrapper; set_epoch must reach it."""
    films = 24
    samplers = [EpochSampler(films, seed=7) for _ in range(2)]
    shards = [
        DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True, seed=0)
        for rank, sampler in enumerate(samplers)
    ]
    orders = []
    for epoch in (0, 1):
        for shard in shards:
            shard.set_epoch(epoch)
        assert [sampler.epoch for sampler in samplers] == [epoch, epoch]
        indices = [[index for index, _ in shard] for shard in shards]
        assert len(indices[0]) == len(indices[1]) == films // 2
        assert not set(indices[0]) & set(indices[1])
        assert sorted(indices[0] + indices[1]) == list(range(films))
        orders.append(indices)
    assert orders[0][0] != orders[1][0] and orders[0][1] != orders[1][1]


def test_ranks_above_zero_share_rank_zeros_directory_without_claiming_it(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with claim_run_dir(run_dir, None):  # rank zero holds it, alive
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
        monkeypatch.setenv("WORLD_SIZE", "2")

        monkeypatch.setenv("RANK", "1")
        args = prepare_launch([f"hydra.run.dir={run_dir}"])
        assert args[0] == f"hydra.run.dir={run_dir}"
        assert "hydra.output_subdir=null" in args and "hydra/job_logging=stdout" in args
        with pytest.raises(PneumoError, match="same hydra.run.dir"):
            prepare_launch(["seed=1"])  # a timestamped directory of its own

        monkeypatch.setenv("RANK", "0")
        with pytest.raises(PneumoError, match="being written by another run"):
            prepare_launch([f"hydra.run.dir={run_dir}"])
        with pytest.raises(PneumoError, match="same hydra.run.dir"):
            prepare_launch(["seed=1"])


class RankGoneThenInterrupt(L.Callback):
    """Fault injection for the test below: at the second step rank 1 dies, then rank 0 gets Ctrl-C."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < 1:
            return
        if trainer.global_rank == 1:
            os._exit(1)
        time.sleep(2)
        raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_saves_on_rank_zero_when_another_rank_is_gone(tmp_path, odd_root):
    run_dir = tmp_path / "run"
    fault = "+callbacks.fault._target_=tests.run.test_ddp.RankGoneThenInterrupt"
    nodes = _two_machines([*_overrides(odd_root), "trainer.max_epochs=5", fault], run_dir)
    output = nodes[0].communicate(timeout=240)[0]
    nodes[1].communicate(timeout=60)
    saved = run_dir / "checkpoints" / "interrupted.ckpt"
    assert f"interrupted: saved {saved}" in output, output[-3000:]
    assert torch.load(saved, weights_only=True)["global_step"] >= 1
