"""scripts/benchmark.py: the report over child interpreters, each mode's figures, its memory figures.

One command-line run covers the report (children, ratios, compile break-even); the other modes
run here in the test's own interpreter, as a child does with ``--only``, which saves starting
an interpreter with torch for each.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, SAMPLE, load_script, run_cli

SCRIPT = REPO / "scripts" / "benchmark.py"
TINY = [
    *("--data", str(SAMPLE), "--images", "8", "--val-images", "4", "--image-size", "32"),
    *("--batch-size", "4", "--predict-count", "4", "--workers", "1", "--threads", "1"),
    *("--compile-backend", "aot_eager"),
]


benchmark = load_script("benchmark")  # a child runs it under that name too


def _assert_trained(figures: dict, mode: str) -> None:
    # a process holding torch and a ResNet18 takes well over 100 MB; its children count in the peak
    assert min(figures["main_rss_mb"], figures["peak_pss_mb"]) > 100, mode
    epochs, val_s = figures["epoch_s"], figures["val_s"]
    assert len(epochs) == 2 and len(val_s) == 2, mode
    # each epoch's validation is timed apart, inside its epoch
    assert all(0 < v < e for v, e in zip(val_s, epochs, strict=True)), mode
    # the rates are the last epoch's 8 training images (--images 8) over its time, with and
    # without its validation
    assert figures["images_per_s"] == pytest.approx(8 / epochs[-1]), mode
    assert figures["no_val_images_per_s"] == pytest.approx(8 / (epochs[-1] - val_s[-1])), mode
    # the time to the first batch and both epochs lie inside the run
    assert 0 < figures["startup_s"] < figures["run_s"] and sum(epochs) < figures["run_s"], mode


@pytest.mark.slow
def test_report_compares_pneumo_with_the_plain_loop_and_its_compiled_self():
    modes = ["baseline", "pneumo", "pneumo+compile"]
    # compiling takes minutes on a busy 2-core machine: a generous bound, not a timing test
    result = run_cli(str(SCRIPT), *TINY, "--modes", ",".join(modes), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(report["results"]) == modes
    for mode in modes:
        _assert_trained(report["results"][mode], mode)
    assert 0.0 <= report["results"]["pneumo+compile"]["val_auroc"] <= 1.0
    rate = {mode: report["results"][mode]["images_per_s"] for mode in modes}
    assert report["pneumo/baseline"] == pytest.approx(rate["pneumo"] / rate["baseline"])
    assert report["pneumo+compile/pneumo"] == pytest.approx(rate["pneumo+compile"] / rate["pneumo"])
    assert "compile_break_even_images" in report and "val_auroc pneumo+compile - pneumo" in report
    assert report["settings"]["seed"] == 42
    assert "pneumo/baseline:" in result.stdout


@pytest.mark.slow  # three modes, two of them training
def test_other_modes_run_one_after_another_in_one_interpreter():
    # startup first: pneumo+films must not see its clock marks
    startup = benchmark.run_mode(benchmark.parse_args([*TINY, "--only", "startup"]))
    assert startup["images"] == 16 and startup["startup_s"] > 0
    for mode in ("pneumo+films", "model_bound+bf16"):
        _assert_trained(benchmark.run_mode(benchmark.parse_args([*TINY, "--only", mode])), mode)


@pytest.mark.slow
def test_a_modes_own_peak_rss_is_its_own_not_its_launchers():
    held = bytearray(b"x" * (1536 << 20))  # the launcher's peak RSS grows past 1.5 GB
    figures = benchmark.run_in_child("predict", TINY)
    del held
    assert figures["images"] == 4 and figures["images_per_s"] > 0
    assert 0 < figures["main_rss_mb"] < 1536


def test_timings_take_each_epochs_validation_out_of_its_rate():
    # launched at 0, first batch at 2, epochs 10-30 and 30-40, validations of 4 s and 2 s
    figures = benchmark.timings(0.0, 2.0, [10.0, 30.0], 40.0, images=80, val_s=[4.0, 2.0])
    assert figures["epoch_s"] == [20.0, 10.0] and figures["images_per_s"] == 8.0
    assert figures["no_val_images_per_s"] == 10.0  # 80 images in the last epoch's 10 - 2 s
    assert figures["startup_s"] == 2.0 and figures["run_s"] == 40.0
    with pytest.raises(ValueError, match="1 validation times for 2 epochs"):
        benchmark.timings(0.0, 2.0, [10.0, 30.0], 40.0, images=80, val_s=[4.0])


def test_ratios_compare_pneumo_with_and_without_validation():
    results = {
        "model_bound+bf16": {"images_per_s": 100.0, "no_val_images_per_s": 110.0},
        "pneumo+bf16": {"images_per_s": 80.0, "no_val_images_per_s": 99.0},
        "model_bound": {"images_per_s": 50.0, "no_val_images_per_s": 55.0},
    }
    ratios = benchmark.ratios(results)
    assert ratios["pneumo+bf16/model_bound+bf16"] == pytest.approx(0.8)
    assert ratios["pneumo+bf16/model_bound+bf16 without validation"] == pytest.approx(0.9)
    assert ratios["model_bound+bf16/model_bound"] == pytest.approx(2.0)
    assert "pneumo+bf16/baseline+bf16" not in ratios  # no baseline ran


def test_peak_memory_counts_children_and_a_block_shorter_than_a_period():
    allocate = "import sys; b = b'x' * (200 << 20); print('ready', flush=True); sys.stdin.read()"
    with benchmark.PeakMemory() as memory:
        child = subprocess.Popen(
            [sys.executable, "-c", allocate], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline() == "ready\n"
    # this process's own share, read while the child still lives: a share read before the child
    # started drifts by tens of MB as other processes map and unmap the same libraries
    own_mb = benchmark._pss_kb(os.getpid()) / 1024
    child.communicate("")
    assert memory.peak_mb >= own_mb + 190


def test_unknown_mode_is_named():
    with pytest.raises(SystemExit, match="'pneumo\\+fast' is not a mode"):
        benchmark.parse_args(["--data", str(SAMPLE), "--modes", "pneumo+fast"])


def test_missing_data_folder_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        benchmark.parse_args(["--data", str(tmp_path / "nowhere")])
    assert stopped.value.code == 2 and "nowhere: no such folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_clear_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        benchmark.parse_args(["--device", "cuda", "--data", str(SAMPLE)])
    assert stopped.value.code == 2 and "sees no CUDA GPU" in capsys.readouterr().err
