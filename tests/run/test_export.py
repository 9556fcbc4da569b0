import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from pneumo.errors import PneumoError
from pneumo.serving.export import ProbabilityModel, check_batch, export
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from tests.helpers import run_cli, sample_files


@pytest.fixture(scope="module")
def images():
    return sample_files("NORMAL")[:3] + sample_files("PNEUMONIA")[:2]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_real_images(tmp_path, trained_ckpt, images, fmt):
    path, _ = export(trained_ckpt, fmt, tmp_path, images)
    # the written file, run here on its own, against pneumo-predict's probabilities
    model = load_model(trained_ckpt)
    batch = check_batch(model, images).numpy()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["output_0"], {"input_0": batch})[0]
    else:
        with torch.inference_mode():
            got = torch.jit.load(str(path))(torch.from_numpy(batch)).numpy()
    served = [r.p_positive for r in predict(model, images)]
    np.testing.assert_allclose(got[:, model.positive_index], served, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # probabilities, softmax included
    assert (tmp_path / "labels.txt").read_text().splitlines() == ["NORMAL", "PNEUMONIA"]
    spec = json.loads((tmp_path / "preprocessing.json").read_text())
    assert spec["image_size"] == 64 and spec["mean"] == [0.485, 0.456, 0.406] and "threshold" in spec


def test_onnx_contract_names_and_dynamic_batch(tmp_path, trained_ckpt, images):
    path, _ = export(trained_ckpt, "onnx", tmp_path, images)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_0"] and [o.name for o in graph.output] == ["output_0"]
    model = load_model(trained_ckpt)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = check_batch(model, images)
    with torch.inference_mode():
        expected = ProbabilityModel.of(model)(batch).numpy()
    for size in (1, 5):
        out = session.run(["output_0"], {"input_0": batch[:size].numpy()})[0]
        assert out.shape == (size, 2)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)  # probabilities
        assert np.abs(out - expected[:size]).max() <= 1e-4


@pytest.mark.slow
def test_export_command_line(tmp_path, trained_ckpt):
    result = run_cli(
        "-m",
        "pneumo.cli.export",
        "--ckpt",
        str(trained_ckpt),
        "--format",
        "torchscript",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max |p_torchscript - p_pytorch| on 16 images" in result.stdout


@pytest.mark.slow
def test_export_refuses_a_foreign_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(PneumoError, match="not a pneumo checkpoint"):
        export(foreign, "onnx", tmp_path / "out")
    result = run_cli("-m", "pneumo.cli.export", "--ckpt", str(foreign))
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
