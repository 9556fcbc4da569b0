"""Every probability that leaves pneumo is the calibrated one: predict (with and without TTA),
eval, the ONNX and TorchScript exports and preprocessing.json; a checkpoint written before
calibration existed keeps working as it did."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from pneumo.artifacts.checkpoint import read_checkpoint
from pneumo.data.preprocess import load_image, to_model_input, to_unit
from pneumo.data.transforms import TTA_VIEWS, tta_views
from pneumo.evaluation.report import evaluate
from pneumo.serving.export import check_batch, export
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from tests.helpers import sample_files

TEMPERATURE = 2.5
FILES = sample_files("NORMAL")[:3] + sample_files("PNEUMONIA")[:3]


def _with_calibration(source, target, calibration):
    checkpoint = read_checkpoint(source)
    if calibration is None:
        checkpoint["pneumo"].pop("calibration", None)
    else:
        checkpoint["pneumo"]["calibration"] = calibration
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="module")
def calibrated_ckpt(trained_ckpt, tmp_path_factory):
    calibration = {"method": "temperature", "temperature": TEMPERATURE, "fitted_on": "validation"}
    return _with_calibration(trained_ckpt, tmp_path_factory.mktemp("cal") / "best.ckpt", calibration)


def _network_logits(model, files, tta=False):
    x = to_unit(torch.stack([load_image(f, model.image_size) for f in files]))
    x = tta_views(x) if tta else x
    with torch.inference_mode():
        return model.net(to_model_input(x, model.mean, model.std))


def test_predict_divides_the_logits_by_the_stored_temperature(calibrated_ckpt):
    model = load_model(calibrated_ckpt)
    logits = _network_logits(model, FILES)
    expected = torch.softmax(logits / TEMPERATURE, 1)[:, model.positive_index]
    raw = torch.softmax(logits, 1)[:, model.positive_index]
    assert not torch.allclose(expected, raw, atol=1e-3)  # the temperature does change the figures
    got = torch.tensor([r.p_positive for r in predict(model, FILES)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # test-time augmentation: each view calibrated, then averaged
    views = torch.softmax(_network_logits(model, FILES, tta=True) / TEMPERATURE, 1)[:, model.positive_index]
    tta = torch.tensor([r.p_positive for r in predict(model, FILES, tta=True)])
    torch.testing.assert_close(tta, views.view(len(TTA_VIEWS), -1).mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_carry_the_temperature_in_the_graph(calibrated_ckpt, tmp_path, fmt):
    model = load_model(calibrated_ckpt)
    path, _ = export(calibrated_ckpt, fmt, tmp_path, FILES)
    batch = check_batch(model, FILES)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["output_0"], {"input_0": batch.numpy()})[0]
    else:
        with torch.inference_mode():
            got = torch.jit.load(str(path))(batch).numpy()
    served = [r.p_positive for r in predict(model, FILES)]
    np.testing.assert_allclose(got[:, model.positive_index], served, atol=1e-4)
    spec = json.loads((tmp_path / "preprocessing.json").read_text())
    assert spec["calibration"]["temperature"] == TEMPERATURE


def test_eval_reports_calibration_before_and_after(calibrated_ckpt, tiny_root, tmp_path):
    metrics = evaluate(str(calibrated_ckpt), str(tiny_root), "test", tmp_path)
    calibration = metrics["calibration"]
    assert calibration["temperature"] == TEMPERATURE
    for when in ("before", "after"):
        assert {"brier", "ece", "calibration_slope", "calibration_intercept"} <= calibration[when].keys()
    # the network's probabilities and the served ones are scored apart: the temperature did act
    assert calibration["before"]["brier"] != pytest.approx(calibration["after"]["brier"], abs=1e-6)
    assert (tmp_path / "reliability.png").is_file()


def test_a_checkpoint_without_calibration_serves_the_networks_own_probabilities(trained_ckpt, tmp_path):
    old = _with_calibration(trained_ckpt, tmp_path / "old.ckpt", None)
    model = load_model(old)
    assert model.meta.temperature == 1.0
    expected = torch.softmax(_network_logits(model, FILES), 1)[:, model.positive_index]
    got = torch.tensor([r.p_positive for r in predict(model, FILES)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    spec_dir = tmp_path / "exported"
    export(old, "torchscript", spec_dir, FILES)
    assert json.loads((spec_dir / "preprocessing.json").read_text())["calibration"]["temperature"] == 1.0
