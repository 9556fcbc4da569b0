import json

import pytest
import torch

from tests.conftest import REPO, SAMPLE, run_cli

# Every test here runs the benchmark script in a child process.
pytestmark = pytest.mark.slow


def test_benchmark_runs_every_mode_on_a_few_tiny_images():
    result = run_cli(
        str(REPO / "scripts" / "benchmark.py"),
        "--data",
        str(SAMPLE),
        "--images",
        "8",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--predict-count",
        "4",
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert set(results) == {"model_bound", "baseline", "pneumo", "predict", "scaling", "cache_full"}
    for mode in ("model_bound", "baseline", "pneumo", "predict"):
        assert results[mode]["images_per_s"] > 0 and results[mode]["peak_rss_mb"] > 0
    assert set(results["scaling"]["epoch_s"]) == {"2", "4", "8"}
    assert results["cache_full"]["images"] == 16
    assert set(report["ratios"]) == {"pneumo/baseline", "pneumo/model_bound"}
    assert "pneumo/model_bound:" in result.stdout


def test_missing_data_folder_is_named(tmp_path):
    result = run_cli(str(REPO / "scripts" / "benchmark.py"), "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "nowhere: no such folder" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_clear_line():
    result = run_cli(str(REPO / "scripts" / "benchmark.py"), "--device", "cuda", "--data", str(SAMPLE))
    assert result.returncode == 2 and "sees no CUDA GPU" in result.stderr
