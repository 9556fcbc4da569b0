"""Shared fixtures: a tiny real-image dataset and one trained checkpoint (see tests/helpers/)."""

from __future__ import annotations

import os

# One intra-op thread, here and in every child process: 32 px batches of 4 gain nothing from
# more, and on a busy machine threads wait on each other (a 2-epoch run on the sample: 4 s with
# one thread, 23 s with two while another training ran on the same 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import FAST, SAMPLE, make_cfg, make_tiny_root  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """DATA_ROOT/train/{NORMAL,PNEUMONIA} with the 16 bundled X-rays, plus test/ with the same."""
    return make_tiny_root(tmp_path / "xray")


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real training run on the bundled sample; its best.ckpt."""
    from pneumo.training.fit import train

    out = tmp_path_factory.mktemp("run")
    cfg = make_cfg(out, [*FAST, f"data.root={SAMPLE}", "data.image_size=64", "trainer.max_epochs=3"])
    train(cfg)
    return out / "checkpoints" / "best.ckpt"
