import json

import pytest
import torch

from tests.conftest import REPO, SAMPLE, run_cli

# Every test here runs the benchmark script in a child process.
pytestmark = pytest.mark.slow


MODES = ["model_bound", "baseline", "pneumo", "pneumo+compile", "pneumo+films", "predict", "startup"]


def test_benchmark_runs_every_mode_on_a_few_tiny_images():
    result = run_cli(
        str(REPO / "scripts" / "benchmark.py"),
        *("--data", str(SAMPLE), "--images", "8", "--val-images", "4", "--image-size", "32"),
        *("--batch-size", "4", "--predict-count", "4", "--workers", "1", "--threads", "1"),
        *("--compile-backend", "aot_eager", "--modes", ",".join(MODES)),
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert list(results) == MODES
    for mode in MODES:
        assert results[mode]["peak_pss_mb"] > 0 and results[mode]["main_rss_mb"] > 0, mode
    for mode in ("model_bound", "baseline", "pneumo", "pneumo+compile", "pneumo+films"):
        figures = results[mode]
        assert len(figures["epoch_s"]) == 2 and figures["images_per_s"] > 0, mode
        assert 0 < figures["startup_s"] < figures["run_s"], mode
    assert 0.0 <= results["pneumo+compile"]["val_auroc"] <= 1.0
    assert results["startup"]["images"] == 16 and results["startup"]["startup_s"] > 0
    assert {"pneumo/baseline", "pneumo/model_bound", "pneumo+compile/pneumo"} <= set(report)
    assert "compile_break_even_images" in report and "val_auroc pneumo+compile - pneumo" in report
    assert "pneumo/model_bound:" in result.stdout


def test_unknown_mode_is_named():
    result = run_cli(str(REPO / "scripts" / "benchmark.py"), "--data", str(SAMPLE), "--modes", "pneumo+fast")
    assert result.returncode != 0 and "'pneumo+fast' is not a mode" in result.stderr


def test_missing_data_folder_is_named(tmp_path):
    result = run_cli(str(REPO / "scripts" / "benchmark.py"), "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "nowhere: no such folder" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_clear_line():
    result = run_cli(str(REPO / "scripts" / "benchmark.py"), "--device", "cuda", "--data", str(SAMPLE))
    assert result.returncode == 2 and "sees no CUDA GPU" in result.stderr
