"""A diverged run stops in one line, and no command accepts what it would have left behind."""

import re

import pytest
import torch

from pneumo.cli.export import main as export_main
from pneumo.cli.predict import main as predict_main
from pneumo.errors import PneumoError
from pneumo.serving.export import check_batch, check_parity, export_torchscript
from pneumo.serving.loading import load_model
from tests.helpers import FAST, SAMPLE, run_cli, sample_files


@pytest.mark.slow
def test_a_run_with_a_runaway_learning_rate_stops_in_one_line(tmp_path):
    result = run_cli(
        "-m",
        "pneumo.cli.train",
        *FAST,
        f"data.root={SAMPLE}",
        "model.optimizer.lr=1e6",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert re.search(r"non-finite .* at epoch 0.*model\.optimizer\.lr", errors[0]), errors[0]
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()


@pytest.fixture(params=["weight", "threshold"])
def diverged_ckpt(request, tmp_path, trained_ckpt):
    """A real checkpoint with one NaN weight, or a NaN threshold, as a diverged run leaves."""
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    if request.param == "weight":
        checkpoint["state_dict"]["net.layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    else:
        checkpoint["pneumo"]["threshold"] = float("nan")
    path = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, path)
    return path


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_predict_and_export_refuse_a_diverged_checkpoint(tmp_path, diverged_ckpt, capsys):
    with pytest.raises(PneumoError, match=r"diverged\.ckpt holds a? ?non-finite"):
        load_model(diverged_ckpt)
    for main, args in (
        (predict_main, [str(SAMPLE)]),
        (export_main, ["--format", "torchscript", "--out", str(tmp_path / "exported")]),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["--ckpt", str(diverged_ckpt), *args])
        assert stop.value.code == 2
        line = _one_error_line(capsys)
        assert str(diverged_ckpt) in line and "non-finite" in line and "model.optimizer.lr" in line
    assert not (tmp_path / "exported" / "preprocessing.json").exists()


@pytest.mark.slow
def test_eval_refuses_a_checkpoint_with_a_nan_weight(tmp_path, trained_ckpt):
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    checkpoint["state_dict"]["net.fc.bias"][1] = float("inf")
    torch.save(checkpoint, tmp_path / "diverged.ckpt")
    result = run_cli(
        "-m",
        "pneumo.cli.evaluate",
        f"ckpt_path={tmp_path / 'diverged.ckpt'}",
        f"data.root={SAMPLE.parent}",
        "data.split=sample",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged.ckpt holds non-finite weights" in errors[0]


def test_export_parity_check_fails_on_nan(tmp_path, trained_ckpt):
    model = load_model(trained_ckpt)
    with torch.no_grad():
        model.net.fc.bias.fill_(float("nan"))  # both runtimes then answer NaN
    path = export_torchscript(model, tmp_path / "resnet18.pt")
    with pytest.raises(PneumoError, match=r"disagrees with PyTorch: max \|dp\| = nan"):
        check_parity(model, "torchscript", path, check_batch(model, sample_files("NORMAL")[:2]))
