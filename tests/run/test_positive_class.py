"""A column that names what it holds: with data.positive_class=NORMAL no output calls its
probability pneumonia's, not pneumo-predict's rows, preprocessing.json, nor the ONNX client's."""

import csv
import json

import pytest

from pneumo.cli.predict import main as predict_main
from pneumo.serving.export import export
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from pneumo.training.fit import train
from tests.helpers import FAST, REPO, SAMPLE, make_cfg, run_cli, sample_files


@pytest.fixture(scope="module")
def normal_positive(tmp_path_factory: pytest.TempPathFactory):
    """A short run whose positive class is NORMAL; its best.ckpt."""
    out = tmp_path_factory.mktemp("normal_positive")
    train(make_cfg(out, [*FAST, f"data.root={SAMPLE}", "data.positive_class=NORMAL", "trainer.max_epochs=1"]))
    return out / "checkpoints" / "best.ckpt"


def test_predict_rows_name_the_positive_class_and_never_pneumonia(tmp_path, normal_positive):
    out = tmp_path / "p.csv"
    predict_main(["--ckpt", str(normal_positive), str(SAMPLE), "--out", str(out)])
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and "p_pneumonia" not in rows[0]
    assert {r["positive_class"] for r in rows} == {"NORMAL"}
    model = load_model(normal_positive)
    for row in rows:
        assert (row["label"] == "NORMAL") == (float(row["p_positive"]) >= model.threshold)
    predict_main(["--ckpt", str(normal_positive), str(SAMPLE), "--out", str(tmp_path / "p.json")])
    assert all("p_pneumonia" not in r for r in json.loads((tmp_path / "p.json").read_text()))


def test_preprocessing_json_names_the_column_it_calls_p(tmp_path, normal_positive):
    pytest.importorskip("onnx")
    model_path, _ = export(normal_positive, "onnx", tmp_path, sample_files("NORMAL")[:1])
    spec = json.loads((tmp_path / "preprocessing.json").read_text())
    assert spec["classes"] == ["NORMAL", "PNEUMONIA"] and spec["positive_class"] == "NORMAL"
    assert spec["positive_index"] == 0 and spec["p"].startswith("P(NORMAL): column 0")
    assert "column 0, the positive class NORMAL" in spec["output_meaning"]
    assert "pneumonia" not in json.dumps({k: spec[k] for k in ("p", "output_meaning", "positive_if")}).lower()
    # the deployment client written from that file alone reads the same column, and names it
    client = REPO / "scripts" / "onnx_client.py"
    result = run_cli(str(client), str(model_path), str(SAMPLE), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    served = {
        r.path: r.p_positive for r in predict(load_model(normal_positive), sorted(SAMPLE.glob("*/*.jpeg")))
    }
    assert len(rows) == 16
    for row in rows:
        assert row["positive_class"] == "NORMAL" and "p_pneumonia" not in row
        assert abs(row["p_positive"] - served[row["path"]]) <= 1e-4
