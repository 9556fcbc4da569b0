"""A deployment client written from preprocessing.json alone agrees with pneumo-predict."""

import json

import pytest

from pneumo.data.dataset import list_films
from pneumo.serving.export import export
from pneumo.serving.inference import predict
from pneumo.serving.loading import load_model
from tests.helpers import REPO, SAMPLE, run_cli, sample_files

# Runs the client as a script, then fails if it pulled in pneumo or PyTorch.
ALONE = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
    "leaked = sorted({m.split('.')[0] for m in sys.modules} & {'pneumo', 'torch'}); "
    "assert not leaked, f'the client imported {leaked}'"
)


@pytest.mark.slow
def test_onnx_client_matches_predict_on_full_resolution_films(tmp_path, trained_ckpt):
    model_path, _ = export(trained_ckpt, "onnx", tmp_path, sample_files("NORMAL")[:1])
    client = REPO / "scripts" / "onnx_client.py"
    result = run_cli("-c", ALONE, str(client), str(model_path), str(SAMPLE), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    by_path = {row["path"]: row for row in json.loads(result.stdout)}
    model = load_model(trained_ckpt)
    rows = predict(model, list_films([SAMPLE]).files)
    assert len(rows) == len(by_path) == 16
    for row in rows:
        theirs = by_path[row.path]
        assert abs(theirs["p_pneumonia"] - row.p_positive) <= 1e-4, row.path
        if abs(row.p_positive - model.threshold) > 1e-4:  # runtimes differ by ~1e-7 on a tie
            assert theirs["label"] == row.label, row.path
