import glob
import math

import pytest
import torch

from pneumo.training.fit import train
from tests.helpers import FAST, REPO, SAMPLE, make_cfg, make_tiny_root, run_cli, scalars

TAGS = {
    "train/loss",
    "train/auroc",
    "train/at_0.5/acc",
    "val/loss",
    "val/auroc",
    "val/at_0.5/acc",
    "val/at_0.5/sensitivity",
    "val/at_0.5/specificity",
    "val/threshold",
    "val/at_threshold/acc",
    "val/at_threshold/sensitivity",
    "val/at_threshold/specificity",
    "time/train_epoch_s",
    "time/val_epoch_s",
    "lr-AdamW",
}


def test_short_run_logs_tensorboard_and_writes_checkpoints(tmp_path, tiny_root):
    cfg = make_cfg(tmp_path, [*FAST, f"data.root={tiny_root}"])
    results = train(cfg)
    curves = scalars(tmp_path)
    assert curves.keys() >= TAGS
    assert len(curves["val/loss"]) == 2 and all(t > 0 for t in curves["time/train_epoch_s"])
    assert "best/val/loss" in curves  # the best epoch's figure, also in the HPARAMS tab
    assert "best/val/loss" in results
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        meta = checkpoint["pneumo"]
        assert meta["classes"] == ["NORMAL", "PNEUMONIA"]
        assert meta["preprocessing"]["image_size"] == 32
        assert meta["config"]["data"]["root"] == str(tiny_root)
        assert 0.0 <= meta["threshold"] <= 1.0


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path, tiny_root):
    overrides = [
        *FAST,
        f"data.root={tiny_root}",
        "trainer.max_epochs=8",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
    ]
    train(make_cfg(tmp_path, overrides))
    assert len(scalars(tmp_path)["val/loss"]) == 2  # epoch 1 sets the best, epoch 2 fails: stop


@pytest.mark.parametrize("name", ["quickstart", "kermany_cpu", "kermany"])
def test_experiment_presets_overfit_a_few_batches_and_log_every_figure(tmp_path, name):
    tiny = [
        f"experiment={name}",
        *FAST,
        f"data.root={SAMPLE}",
        "data.num_workers=0",
        # two batches again and again, without augmentation: the loss must fall
        "debug=overfit",
        "trainer.max_epochs=12",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        # the earliest patients of the 16 bundled films hold one pneumonia patient: too few to
        # validate on (the holdout itself: tests/unit/test_split.py)
        *(["data.val_holdout=random"] if name == "kermany_cpu" else []),
    ]
    results = train(make_cfg(tmp_path, tiny))
    curves = scalars(tmp_path)
    # the preset's loss, schedule and weight averaging ran through every epoch's logs
    assert curves.keys() >= TAGS
    loss = curves["train/loss"]
    assert len(loss) == 12 and all(math.isfinite(v) for v in loss)
    assert min(loss[-3:]) < 0.8 * loss[0], loss  # it learns the eight films it sees
    assert results["train/loss"] == pytest.approx(loss[-1], rel=1e-5)


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_named_directory(tmp_path):
    result = run_cli(
        "-m",
        "pneumo.cli.train",
        "-m",
        *FAST,
        f"data.root={SAMPLE}",
        "trainer.max_epochs=1",
        "data.batch_size=4,8",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted({p.split("/")[-3] for p in glob.glob(f"{tmp_path}/*/tensorboard/events.*")})
    assert len(runs) == 2
    assert runs[0].startswith("0_") and "data.batch_size=4" in runs[0]
    assert runs[1].startswith("1_") and "data.batch_size=8" in runs[1]


@pytest.mark.slow
def test_config_key_typo_is_one_clear_line(tmp_path):
    result = run_cli("-m", "pneumo.cli.train", "data.batchsize=8", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "batchsize" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_data_root_is_one_clear_line(tmp_path):
    result = run_cli(
        "-m", "pneumo.cli.train", *FAST, f"data.root={tmp_path}/none", f"hydra.run.dir={tmp_path}/run"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"{tmp_path}/none" in lines[0] and "quickstart" in lines[0]


@pytest.mark.slow
def test_jetson_style_command_line(tmp_path):
    # the original command line, on folders named with spaces, commas, equals signs and accents
    data = make_tiny_root(tmp_path / "x-rays, 2024 =final= é")
    model_dir = tmp_path / "models" / "xray, v=2"
    result = run_cli(
        str(REPO / "scripts" / "train.py"),
        f"--model-dir={model_dir}",
        str(data),
        "--epochs=1",
        "--batch-size=4",
        "--workers=1",
        "--resolution=32",
        "--no-pretrained",
        "--lr=0.001",
        "data.val_fraction=0.25",
        "trainer.precision=32-true",
        "callbacks.progress_bar=null",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (model_dir / "labels.txt").read_text() == "NORMAL\nPNEUMONIA\n"
    best = torch.load(model_dir / "model_best.pth.tar", weights_only=True)
    assert best["arch"] == "resnet18" and best["num_classes"] == 2 and best["resolution"] == 32
    assert "fc.weight" in best["state_dict"]
    assert (model_dir / "resnet18.onnx").is_file()
    config = torch.load(model_dir / "checkpoints" / "best.ckpt", weights_only=True)["pneumo"]["config"]
    assert config["model"]["optimizer"]["lr"] == 0.001 and config["data"]["num_workers"] == 1
    output = result.stdout + result.stderr
    for said in ("run directory: ", "wrote ", "pneumo is a research tool"):
        lines = [line for line in output.splitlines() if said in line]
        assert lines and len(lines) == len(set(lines)), lines  # each message once
