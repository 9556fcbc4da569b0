"""trainer.precision=auto: bf16 where the hardware computes it, fp32 elsewhere, an explicit value kept."""

import logging
from pathlib import Path

import pytest

from pneumo.hardware import auto_precision, cpu_flags
from pneumo.training.build import build, resolve_precision
from tests.helpers import FAST, SAMPLE, make_cfg


@pytest.mark.parametrize(
    ("accelerator", "flags", "cuda_bf16", "expected"),
    [
        ("cpu", {"avx2", "avx512f", "avx512_bf16"}, None, "bf16-mixed"),
        ("cpu", {"avx2", "amx_bf16", "amx_tile"}, None, "bf16-mixed"),
        ("cpu", {"avx2", "avx512f"}, None, "32-true"),  # bf16 would be emulated: slower
        ("cpu", set(), None, "32-true"),  # flags not listed (macOS, Windows)
        ("gpu", set(), True, "bf16-mixed"),
        ("cuda", set(), False, "32-true"),  # e.g. a pre-Ampere GPU
        ("mps", {"avx512_bf16"}, None, "32-true"),
    ],
)
def test_auto_resolves_from_the_hardware(accelerator, flags, cuda_bf16, expected):
    precision, why = auto_precision(accelerator, flags=flags, cuda_bf16=cuda_bf16)
    assert precision == expected and why


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\nbugs\t: spectre\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed"])
def test_an_explicit_precision_is_never_overridden(tmp_path, explicit):
    cfg = make_cfg(tmp_path, [*FAST, f"data.root={SAMPLE}", f"trainer.precision={explicit}"])
    resolve_precision(cfg)
    assert cfg.trainer.precision == explicit


def test_auto_reaches_the_trainer_and_the_checkpoint_config(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pneumo")
    cfg = make_cfg(tmp_path, [*FAST, f"data.root={SAMPLE}", "trainer.precision=auto"])
    # the rule, stated here: bfloat16 on a CPU that has bfloat16 units (Linux lists them in
    # /proc/cpuinfo's flags), fp32 on any other
    info = Path("/proc/cpuinfo")
    flags = set(info.read_text().split()) if info.is_file() else set()
    expected = "bf16-mixed" if flags & {"avx512_bf16", "amx_bf16"} else "32-true"
    _, _, trainer = build(cfg)
    assert cfg.trainer.precision == expected  # what run_metadata records in every checkpoint
    assert trainer.precision == expected
    assert f"trainer.precision=auto: {expected}" in caplog.text


def test_a_resume_keeps_the_precision_its_checkpoint_was_trained_in(tmp_path, trained_ckpt):
    # trained_ckpt was trained in 32-true (tests' FAST settings), whatever this machine offers
    overrides = [*FAST, f"data.root={SAMPLE}", "trainer.precision=auto", f"ckpt_path={trained_ckpt}"]
    cfg = make_cfg(tmp_path, overrides)
    resolve_precision(cfg)
    assert cfg.trainer.precision == "32-true"


def test_float16_mixed_precision_on_a_cpu_is_refused_in_one_line(tmp_path):
    # Lightning would train in bf16-mixed instead while the checkpoints recorded 16-mixed
    from pneumo.errors import PneumoError
    from pneumo.training.settings import check_train_config

    for precision in ("16-mixed", "16"):
        overrides = [*FAST, f"data.root={SAMPLE}", "trainer.accelerator=cpu"]
        overrides.append(f"trainer.precision={precision}")
        with pytest.raises(PneumoError, match=rf"^trainer.precision={precision} needs a GPU: .* use trainer"):
            check_train_config(make_cfg(tmp_path, overrides))
    check_train_config(make_cfg(tmp_path, [*FAST, f"data.root={SAMPLE}", "trainer.precision=bf16-mixed"]))
