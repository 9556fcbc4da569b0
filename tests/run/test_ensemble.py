"""pneumo-ensemble: two real members, averaged, used wherever a checkpoint is."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from pneumo import DISCLAIMER
from pneumo.artifacts.checkpoint import CheckpointMeta, read_checkpoint
from pneumo.cli.ensemble import main
from pneumo.cli.predict import main as predict_main
from pneumo.data.preprocess import preprocessing_spec
from pneumo.data.provenance import validation_samples
from pneumo.errors import PneumoError
from pneumo.evaluation.report import evaluate
from pneumo.model.network import Ensemble
from pneumo.model.threshold import choose_threshold
from pneumo.serving.ensemble import make_ensemble
from pneumo.serving.export import check_batch, export
from pneumo.serving.inference import predict
from pneumo.serving.jetson import write_model_dir
from pneumo.serving.loading import LoadedModel, load_model
from pneumo.training.fit import train
from tests.helpers import FAST, SAMPLE, make_cfg, run_cli, sample_files

# the same validation films for every member (data.seed), other weights (seed)
MEMBER = [*FAST, f"data.root={SAMPLE}", "data.seed=0"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep directory of two tiny runs on the bundled films, seeds 1 and 2."""
    root = tmp_path_factory.mktemp("sweep")
    for job, seed in enumerate((1, 2)):
        train(make_cfg(root / str(job), [*MEMBER, f"seed={seed}"]))
    return root


@pytest.fixture(scope="module")
def members(sweep: Path) -> list[Path]:
    return [sweep / job / "checkpoints" / "best.ckpt" for job in ("0", "1")]


@pytest.fixture(scope="module")
def ensemble(sweep: Path, members: list[Path]) -> tuple[Path, dict]:
    """The ensemble of the sweep, written beside it; its path and printed figures."""
    out = sweep / "ensemble.ckpt"
    return out, make_ensemble([sweep], out)


def member_probabilities(members: list[Path], files: list[Path], tta: bool = False) -> np.ndarray:
    """P(pneumonia) of each file (columns) by each member's network applied alone (rows),
    uncalibrated: the ensemble averages the networks' own probabilities."""
    rows = []
    for member in members:
        model = load_model(member)
        raw = LoadedModel(model.net, replace(model.meta, calibration=None), model.path)
        rows.append([r.p_positive for r in predict(raw, files, tta=tta)])
    return np.array(rows)


def calibrated(mean: np.ndarray, temperature: float) -> np.ndarray:
    """The ensemble's served probability: the members' mean, recalibrated by its temperature
    (``softmax(log(mean) / T)`` over the two classes)."""
    high, low = mean ** (1 / temperature), (1 - mean) ** (1 / temperature)
    return high / (high + low)


def test_ensemble_probability_is_the_members_mean(ensemble, members):
    files = sample_files("NORMAL") + sample_files("PNEUMONIA")
    model = load_model(ensemble[0])
    assert isinstance(model.net, Ensemble) and not model.net.training
    each = member_probabilities(members, files)
    assert np.abs(each[0] - each[1]).max() > 1e-3  # two different models, so the mean is a mean
    temperature = model.meta.temperature
    got = [r.p_positive for r in predict(model, files)]
    np.testing.assert_allclose(got, calibrated(each.mean(axis=0), temperature), atol=1e-6)


def test_threshold_is_chosen_on_the_shared_validation_films(ensemble, members):
    path, figures = ensemble
    checkpoint = read_checkpoint(path)
    model = load_model(path)
    samples = validation_samples(model.meta, SAMPLE, path)
    mean = member_probabilities(members, [s.path for s in samples]).mean(axis=0)
    probs = torch.tensor(calibrated(mean, model.meta.temperature))
    targets = torch.tensor([int(s.label == model.positive_index) for s in samples])
    assert targets.unique().numel() == 2  # a real curve, not the 0.5 of one class
    assert model.threshold == pytest.approx(choose_threshold(probs, targets), abs=1e-6)
    assert figures["ensemble"]["threshold"] == model.threshold
    recorded = checkpoint["pneumo"]["ensemble"]["members"]
    assert [m["file"] for m in recorded] == [str(m) for m in members]
    assert [m["threshold"] for m in recorded] == [load_model(m).threshold for m in members]
    assert list(figures) == [str(m) for m in members] + ["ensemble"]
    assert all(k.startswith(("members.0.", "members.1.")) for k in checkpoint["state_dict"])


def test_pneumo_eval_reads_the_ensemble(ensemble, tmp_path):
    path, figures = ensemble
    metrics = evaluate(str(path), str(SAMPLE), "val", tmp_path)
    assert metrics["n"] == figures["ensemble"]["n"]
    assert metrics["auroc"] == pytest.approx(figures["ensemble"]["auroc"], abs=1e-6)
    assert metrics["threshold"] == load_model(path).threshold


def test_onnx_export_averages_inside_the_graph(ensemble, members, tmp_path):
    images = sample_files("NORMAL")[:2] + sample_files("PNEUMONIA")[:2]
    onnx_path, difference = export(ensemble[0], "onnx", tmp_path, images)
    assert difference <= 1e-4
    batch = check_batch(load_model(ensemble[0]), images)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["output_0"], {"input_0": batch.numpy()})[0]
    with torch.inference_mode():
        # the members' own probabilities, averaged, then calibrated by the ensemble's temperature
        mean = torch.stack([torch.softmax(load_model(m).net(batch), 1) for m in members]).mean(0)
        expected = torch.softmax(mean.log() / load_model(ensemble[0]).meta.temperature, 1)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_torchscript_export_passes_its_parity_check(ensemble, tmp_path):
    films = sample_files("PNEUMONIA")[:2]
    path, _ = export(ensemble[0], "torchscript", tmp_path, films)
    model = load_model(ensemble[0])
    with torch.inference_mode():
        got = torch.jit.load(str(path))(check_batch(model, films))[:, model.positive_index]
    np.testing.assert_allclose(got.numpy(), [r.p_positive for r in predict(model, films)], atol=1e-4)


def rewritten(member: Path, out: Path, **meta) -> Path:
    """A copy of a real member whose metadata says otherwise in ``meta``."""
    checkpoint = torch.load(member, map_location="cpu", weights_only=True)
    for key, value in meta.items():
        checkpoint["pneumo"][key] = value
    torch.save(checkpoint, out)
    return out


def test_members_that_differ_are_refused_naming_file_and_key(members, tmp_path):
    meta = read_checkpoint(members[1])["pneumo"]
    preprocessing = {**meta["preprocessing"], "image_size": 64}
    larger = rewritten(members[1], tmp_path / "larger.ckpt", preprocessing=preprocessing)
    with pytest.raises(PneumoError, match=r"larger.ckpt has preprocessing.image_size = 64, but .* has 32"):
        make_ensemble([members[0], larger], tmp_path / "out.ckpt")
    other_films = rewritten(members[1], tmp_path / "films.ckpt", val_files=meta["val_files"][1:])
    with pytest.raises(PneumoError, match=r"films.ckpt has val_files = \d+ files, but .*data.val_holdout"):
        make_ensemble([members[0], other_films], tmp_path / "out.ckpt")
    config = {**meta["config"], "model": {**meta["config"]["model"], "threshold_method": "sensitivity"}}
    other_rule = rewritten(members[1], tmp_path / "rule.ckpt", config=config)
    with pytest.raises(PneumoError, match="model.threshold_method = 'sensitivity', but .* has 'youden'"):
        make_ensemble([members[0], other_rule], tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_fewer_than_two_members_or_one_twice_is_refused(members, tmp_path):
    with pytest.raises(PneumoError, match="at least two members, got 1"):
        make_ensemble([members[0].parents[1]], tmp_path / "out.ckpt")  # a run directory
    with pytest.raises(PneumoError, match="given twice"):
        make_ensemble([members[0], members[0].parents[1]], tmp_path / "out.ckpt")
    with pytest.raises(PneumoError, match="is one of the members"):
        make_ensemble(members, members[1])
    copy = tmp_path / "copy.ckpt"
    shutil.copy(members[0], copy)  # the same bytes under another name
    with pytest.raises(PneumoError, match=r"copy.ckpt holds the same weights as .*a copy of one model"):
        make_ensemble([members[0], copy], tmp_path / "out.ckpt")


def test_uses_that_need_one_network_refuse_the_ensemble(ensemble, members, tmp_path, capsys):
    path = ensemble[0]
    with pytest.raises(PneumoError, match="resuming training needs one trained network"):
        train(make_cfg(tmp_path / "resume", [*MEMBER, "seed=1", f"ckpt_path={path}"]))
    with pytest.raises(PneumoError, match="model_best.pth.tar needs one trained network"):
        write_model_dir(path, tmp_path / "jetson")
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--ckpt", str(path), str(SAMPLE), "--cam", str(tmp_path / "cams")])
    assert exit_info.value.code == 2
    refusal = capsys.readouterr().err.strip().splitlines()
    assert len(refusal) == 1 and refusal[0].endswith(
        "Grad-CAM (--cam) needs one trained network; run --cam with one of its members"
    )
    with pytest.raises(PneumoError, match="an ensemble member needs one trained network"):
        make_ensemble([path, *members], tmp_path / "nested.ckpt")


def test_help_ends_with_the_disclaimer(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip().endswith(DISCLAIMER)


@pytest.mark.slow
def test_command_line(sweep, tmp_path):
    out = tmp_path / "ens.ckpt"
    result = run_cli("-m", "pneumo.cli.ensemble", str(sweep / "0"), str(sweep / "1"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"member 2: {sweep / '1' / 'checkpoints' / 'best.ckpt'}" in result.stdout
    assert "ensemble" in result.stdout and "auroc" in result.stdout and out.is_file()
    assert f"wrote {out} (2 members" in result.stdout
    refused = run_cli("-m", "pneumo.cli.ensemble", str(sweep / "0"), "--out", str(tmp_path / "one.ckpt"))
    best = sweep / "0" / "checkpoints" / "best.ckpt"
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: an ensemble needs at least two members, got 1 ({best}); "
        "give more checkpoints, or a sweep directory"
    ]


@pytest.mark.parametrize(
    ("members", "held", "match"),
    [
        ([], 0, "ensemble is not a list of two members or more"),
        (
            [{"file": "a.ckpt", "threshold": 0.5}] * 1000,
            1,
            "lists 1000 ensemble members, but it holds the weights of 1",
        ),
    ],
)
def test_a_malformed_ensemble_file_is_refused_in_one_line(tmp_path, members, held, match):
    # before any member network is built: the list alone could ask for any number of them
    meta = CheckpointMeta(
        ["NORMAL", "PNEUMONIA"], "PNEUMONIA", preprocessing_spec(32), ensemble={"members": members}
    )
    state = {f"members.{k}.fc.bias": torch.zeros(2) for k in range(held)}
    torch.save({"pneumo": meta.as_dict(), "state_dict": state}, tmp_path / "forged.ckpt")
    with pytest.raises(PneumoError, match=match):
        load_model(tmp_path / "forged.ckpt")
