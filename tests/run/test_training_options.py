"""Training options end to end, each checked on a real short run on the bundled X-rays at 32 px.

One run serves the first three tests: class-balanced sampling, the sensitivity threshold rule
and a constant learning rate, on a training set with four times more pneumonia than normal
films. A recording callback keeps what the model actually received and predicted.
"""

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from pneumo.model.calibration import fit_temperature
from pneumo.model.network import positive_probability
from pneumo.model.threshold import CUT_OFF_MARGIN, choose_threshold, is_positive
from pneumo.training.fit import train
from tests.helpers import FAST, SAMPLE, make_cfg, sample_files, scalars

TARGET_SENSITIVITY = 0.75
LR = 0.0005
EPOCHS = 3


class Recorder(L.Callback):
    """Write, at the end of a fit, what the model received and predicted, to ``path`` (JSON).

    ``train_labels``: the labels of every training batch, by epoch, as they reached the model;
    ``train_set``: the labels of the training set; ``val``: P(pneumonia) and label of every
    validation film, by epoch, computed by the model under validation.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.train_labels: dict[int, list[int]] = defaultdict(list)
        self.val: dict[int, dict[str, list]] = defaultdict(lambda: {"logits": [], "targets": []})
        self.train_set: list[int] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_set = list(trainer.datamodule.train_set.labels)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train_labels[trainer.current_epoch].extend(batch[1].tolist())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            return
        with torch.no_grad():
            logits = pl_module(batch[0])
        record = self.val[trainer.current_epoch]
        record["logits"].extend(logits.tolist())
        record["targets"].extend(batch[1].tolist())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"train_labels": self.train_labels, "train_set": self.train_set, "val": self.val}
        Path(self.path).write_text(json.dumps(record))


def recorded(overrides: list[str], run_dir: Path) -> list[str]:
    """``overrides`` plus the Recorder, writing ``run_dir/recorded.json``."""
    return [
        *overrides,
        f"+callbacks.recorder._target_={Recorder.__module__}.Recorder",
        f"+callbacks.recorder.path={run_dir / 'recorded.json'}",
    ]


def imbalanced_root(root: Path) -> Path:
    """4 NORMAL and 16 PNEUMONIA real films: each pneumonia film as it is and, as another
    patient, cropped by a tenth of each side (other pixels, so no two films predict alike)."""
    for name in ("NORMAL", "PNEUMONIA"):
        (root / name).mkdir(parents=True)
    for path in sample_files("NORMAL")[:4]:
        shutil.copy(path, root / "NORMAL" / path.name)
    for index, path in enumerate(sample_files("PNEUMONIA")):
        shutil.copy(path, root / "PNEUMONIA" / path.name)
        with Image.open(path) as film:
            width, height = film.size
            cropped = film.crop((width // 10, height // 10, width - width // 10, height - height // 10))
            cropped.save(root / "PNEUMONIA" / f"person{8000 + index}_bacteria_1.jpeg")
    return root


@pytest.fixture(scope="module")
def options_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run: balance=sampler, threshold_method=sensitivity, scheduler none; its directory."""
    base = tmp_path_factory.mktemp("options")
    run_dir = base / "run"
    overrides = [
        *FAST,
        f"data.root={imbalanced_root(base / 'data')}",
        "data.val_fraction=0.4",
        "data.balance=sampler",
        "model.threshold_method=sensitivity",
        f"model.target_sensitivity={TARGET_SENSITIVITY}",
        "model/scheduler=none",
        f"model.optimizer.lr={LR}",
        f"trainer.max_epochs={EPOCHS}",
        "callbacks.early_stopping.patience=100",
    ]
    train(make_cfg(run_dir, recorded(overrides, run_dir)))
    return run_dir


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "recorded.json").read_text())


def test_sampler_feeds_both_classes_about_equally_from_an_imbalanced_set(options_run):
    record = _record(options_run)
    train_set = record["train_set"]
    assert train_set.count(0) / len(train_set) <= 0.25  # the set itself: 1 NORMAL in 5 or fewer
    epochs = record["train_labels"]
    assert sorted(epochs) == [str(e) for e in range(EPOCHS)]
    for labels in epochs.values():
        assert len(labels) == len(train_set) and set(labels) == {0, 1}  # an epoch draws the set's size
    received = [label for labels in epochs.values() for label in labels]
    assert 0.35 <= received.count(0) / len(received) <= 0.65


def test_sensitivity_rule_stores_the_threshold_chosen_on_that_epochs_validation(options_run):
    best = torch.load(options_run / "checkpoints" / "best.ckpt", weights_only=True)
    val = _record(options_run)["val"][str(best["epoch"])]
    logits, targets = torch.tensor(val["logits"]), torch.tensor(val["targets"])
    # calibrated by the temperature fitted on this very epoch's validation films
    temperature = best["pneumo"]["calibration"]["temperature"]
    assert temperature == pytest.approx(fit_temperature(logits[:, 1] - logits[:, 0], targets), rel=1e-5)
    probs = positive_probability(logits, 1, temperature)
    threshold = best["pneumo"]["threshold"]
    expected = choose_threshold(probs, targets, "sensitivity", TARGET_SENSITIVITY)
    assert threshold == pytest.approx(expected, abs=1e-6)
    # the same cut-off found by hand: the k-th highest P(pneumonia) among the pneumonia films,
    # stored just below it (never lower than halfway to the next film)
    positives = sorted(probs[targets == 1].tolist(), reverse=True)
    cut = positives[math.ceil(TARGET_SENSITIVITY * len(positives)) - 1]
    below = max((p for p in probs.tolist() if p < cut), default=-1.0)
    assert threshold == pytest.approx(max(cut - CUT_OFF_MARGIN, (cut + below) / 2, 0.0), abs=1e-7)
    sensitivity = is_positive(probs[targets == 1], threshold).float().mean().item()
    assert sensitivity >= TARGET_SENSITIVITY


def test_without_a_scheduler_the_learning_rate_stays_constant(options_run):
    assert scalars(options_run)["lr-AdamW"] == pytest.approx([LR] * EPOCHS)
    assert torch.load(options_run / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"] == []


@pytest.mark.slow
def test_seeded_runs_with_loader_workers_are_identical(tmp_path):
    def curves(name: str, workers: int) -> dict[str, list[float]]:
        run_dir = tmp_path / name
        train(make_cfg(run_dir, [*FAST, f"data.root={SAMPLE}", f"data.num_workers={workers}"]))
        found = scalars(run_dir)
        return {tag: found[tag] for tag in ("train/loss", "val/loss", "val/auroc")}

    first = curves("workers_a", 2)
    assert first == curves("workers_b", 2)
    assert first == curves("no_workers", 0)
