import json

from tests.conftest import REPO, SAMPLE, run_cli


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
