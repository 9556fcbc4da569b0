"""scripts/benchmark.py: the report over child interpreters, each mode's figures, its memory figures.

One command-line run covers the report (children, ratios; its summary is tested apart); the other modes
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
def test_report_compares_pneumo_with_the_plain_loop():
    # compiling itself: tests/run/test_compile.py; the report's compile figures: the test below
    modes = ["baseline", "pneumo"]
    result = run_cli(str(SCRIPT), *TINY, "--modes", ",".join(modes), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(report["results"]) == modes
    for mode in modes:
        _assert_trained(report["results"][mode], mode)
    rate = {mode: report["results"][mode]["images_per_s"] for mode in modes}
    assert report["pneumo/baseline"] == pytest.approx(rate["pneumo"] / rate["baseline"])
    assert report["settings"]["seed"] == 42
    assert "pneumo/baseline:" in result.stdout
    assert report["machine_limit"]["train_gflop_per_image"] > 0


def test_the_summary_holds_ratios_compile_break_even_and_the_auroc_each_variant_moved():
    results = {
        "pneumo": {"images_per_s": 50.0, "epoch_s": [20.0, 20.0], "val_auroc": 0.90},
        "pneumo+compile": {"images_per_s": 100.0, "epoch_s": [30.0, 10.0], "val_auroc": 0.91},
        "pneumo+bf16": {"images_per_s": 80.0, "epoch_s": [12.0, 12.0], "val_auroc": 0.88},
    }
    summary = benchmark.summarise(results)
    assert summary["pneumo+compile/pneumo"] == pytest.approx(2.0)
    # 10 s more in the first epoch, 1/50 - 1/100 = 0.01 s saved an image: even after 1000
    assert summary["compile_break_even_images"] == pytest.approx(1000.0)
    assert summary["val_auroc pneumo+compile - pneumo"] == pytest.approx(0.01)
    assert summary["val_auroc pneumo+bf16 - pneumo"] == pytest.approx(-0.02)


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
    assert figures["net_images_per_s"] > 0 and figures["served_net_images_per_s"] > 0
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
        "predict": {"images_per_s": 30.0, "net_images_per_s": 40.0, "served_net_images_per_s": 56.0},
    }
    ratios = benchmark.ratios(results)
    assert ratios["predict served_net/net"] == pytest.approx(1.4)
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


# -- the machine's limit: its arithmetic, fast and without training ----------------------------
LIMIT = {"matmul_gflops_fp32": 350.0, "matmul_gflops_bf16": 2100.0, "train_gflop_per_image": 3.5}


def test_a_training_image_costs_three_forward_passes_but_the_first_layers_input_gradient():
    from torchvision.models import ResNet18_Weights

    # torchvision's published cost of a ResNet18 forward pass at 224 px, in multiply-adds
    forward = 2 * ResNet18_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9
    # the backward pass costs two forwards, less the gradient of the images, which nothing needs:
    # the first convolution's, 112 x 112 outputs x 64 channels x 3 x 7 x 7 multiply-adds
    first_conv_input_gradient = 2 * 112 * 112 * 64 * 3 * 7 * 7
    flops = benchmark.training_flops_per_image(224)
    assert flops == pytest.approx(3 * forward - first_conv_input_gradient, rel=2e-3)
    # convolutions scale with the pixels; only the 2-class head does not
    assert benchmark.training_flops_per_image(448) / flops == pytest.approx(4.0, rel=1e-4)


def test_matmul_rate_is_the_median_timed_product_after_the_warm_ups():
    # each product's start and end by a stand-in clock: two warm-ups (100 s each, not counted),
    # then products of 1, 4 and 2 s, whose median is 2 s
    ticks = iter([0.0, 100.0, 100.0, 200.0, 200.0, 201.0, 201.0, 205.0, 205.0, 207.0])
    rate = benchmark.matmul_gflops("cpu", torch.float32, size=100, repeats=3, clock=lambda: next(ticks))
    assert rate == pytest.approx(2 * 100**3 / 2.0 / 1e9)


def test_a_mode_is_a_fraction_of_the_limit_in_its_own_precision():
    assert benchmark.limit_fraction(50.0, LIMIT, "fp32") == pytest.approx(0.5)  # 175 of 350 GFLOP/s
    assert benchmark.limit_fraction(120.0, LIMIT, "bf16") == pytest.approx(0.2)  # 420 of 2100
    assert benchmark.mode_precision("model_bound+bf16+batch64", "32") == "bf16"
    assert benchmark.mode_precision("pneumo", "32") == "fp32"
    assert benchmark.mode_precision("pneumo", "bf16") == "bf16"  # --precision bf16 (a GPU's run)
    results = {
        "model_bound": {"images_per_s": 50.0, "epoch_s": [1.0, 1.0]},
        "model_bound+bf16": {"images_per_s": 120.0, "epoch_s": [1.0, 1.0]},
        "predict": {"images_per_s": 100.0},  # inference on full-resolution films: no training FLOPs
    }
    benchmark.limit_fractions(results, LIMIT, "32")
    assert results["model_bound"]["machine_limit_fraction"] == pytest.approx(0.5)
    assert results["model_bound+bf16"]["machine_limit_fraction"] == pytest.approx(0.2)
    assert "machine_limit_fraction" not in results["predict"]


def test_numbered_variants_set_threads_and_batch_size_and_compare_with_the_mode_without_them():
    args = benchmark.parse_args(["--data", str(SAMPLE), "--modes", "model_bound+bf16+batch64+threads1"])
    base, variants = benchmark.parse_mode("model_bound+bf16+batch64+threads1")
    changed = benchmark.with_variants(args, variants)
    assert base == "model_bound" and changed.batch_size == 64 and changed.threads == 1
    assert changed.precision == "bf16" and args.batch_size == 32
    # every mode's optimizer is pneumo's fused AdamW but under +unfused, torch's default loop
    assert changed.fused and not benchmark.with_variants(args, ["unfused"]).fused
    assert "model.optimizer.fused=false" in benchmark.pneumo_overrides(
        benchmark.with_variants(args, ["unfused"]), SAMPLE
    )
    for wrong in ("model_bound+batch0", "model_bound+threads", "model_bound+batch64x"):
        with pytest.raises(SystemExit, match="is not a mode"):
            benchmark.parse_mode(wrong)
    ratios = benchmark.ratios(
        {"model_bound+bf16": {"images_per_s": 100.0}, "model_bound+bf16+batch64": {"images_per_s": 110.0}}
    )
    assert ratios["model_bound+bf16+batch64/model_bound+bf16"] == pytest.approx(1.1)


def test_compile_payoff_of_any_mode_against_the_same_mode_eager():
    results = {
        "model_bound+bf16": {"images_per_s": 100.0, "epoch_s": [10.0, 10.0]},
        # 50 s more in the first epoch, then 1/100 - 1/125 = 0.002 s saved an image
        "model_bound+bf16+compile": {"images_per_s": 125.0, "epoch_s": [60.0, 8.0]},
        "pneumo": {"images_per_s": 50.0, "epoch_s": [20.0, 20.0]},
        "pneumo+compile": {"images_per_s": 40.0, "epoch_s": [50.0, 25.0]},  # slower: never pays
    }
    payoff = benchmark.compile_payoff(results, "model_bound+bf16+compile")
    assert payoff["compile_first_epoch_extra_s model_bound+bf16+compile"] == pytest.approx(50.0)
    assert payoff["compile_break_even_images model_bound+bf16+compile"] == pytest.approx(25000.0)
    assert benchmark.compile_payoff(results, "pneumo+compile") == {
        "compile_first_epoch_extra_s": 30.0,
        "compile_break_even_images": None,
    }
