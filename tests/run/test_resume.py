"""Resuming and reusing run directories: the figures of a resumed run are the whole run's."""

import os
import shutil
import time

import lightning as L
import pytest
import torch

from pneumo.artifacts.rundir import LOCK_NAME, claim_run_dir
from pneumo.errors import PneumoError
from pneumo.evaluation.report import evaluate
from pneumo.training.build import build
from pneumo.training.fit import train
from tests.helpers import (
    FAST,
    SAMPLE,
    fit_until_interrupted,
    make_cfg,
    make_tiny_root,
    run_cli,
    sample_files,
    scalars,
)

# A plateau schedule that halves the learning rate after any epoch that does not cut val/loss
# by half: on the 4 validation films of data/sample the rate moves after the second epoch.
BUMPY = [
    *FAST,
    f"data.root={SAMPLE}",
    "model.optimizer.lr=0.001",
    "model.scheduler.patience=0",
    "+model.scheduler.threshold=0.5",
    "callbacks.early_stopping.patience=100",
]
COSINE = [*FAST, f"data.root={SAMPLE}", "model/scheduler=cosine", "model.scheduler.T_max=4"]
# the averaged weights are what validation sees: they must resume as well as the raw ones
EMA = [*COSINE, "ablation=ema", "callbacks.weight_averaging.decay=0.5"]
# mixup's draws follow the seed, epoch and batch, not the process's random state
MIXUP = [*COSINE, "ablation=mixup"]
EPOCHS = 4


def _epoch(path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [BUMPY, COSINE, EMA, MIXUP], ids=["plateau", "cosine", "ema", "mixup"])
def test_run_resumed_after_the_learning_rate_moved_matches_an_uninterrupted_one(tmp_path, overrides):
    straight = tmp_path / "straight"
    train(make_cfg(straight, [*overrides, f"trainer.max_epochs={EPOCHS}"]))
    expected = scalars(straight)
    lr = expected["lr-AdamW"]
    # stop right after the first epoch whose scheduler step changed the learning rate
    stop = next(epoch for epoch in range(1, EPOCHS) if lr[epoch] != lr[epoch - 1])

    resumed = tmp_path / "resumed"
    train(make_cfg(resumed, [*overrides, f"trainer.max_epochs={stop}"]))
    last = resumed / "checkpoints" / "last.ckpt"
    assert _epoch(last) == stop - 1
    train(make_cfg(resumed, [*overrides, f"trainer.max_epochs={EPOCHS}", f"ckpt_path={last}"]))

    got = scalars(resumed)
    for tag in ("lr-AdamW", "val/loss"):
        assert got[tag] == pytest.approx(expected[tag], abs=1e-6), tag
    assert _epoch(last) == EPOCHS - 1
    assert _epoch(resumed / "checkpoints" / "best.ckpt") == _epoch(straight / "checkpoints" / "best.ckpt")


# A constant, too high learning rate: on data/sample the first epoch's val/loss stays the best.
ERRATIC = [
    *FAST,
    f"data.root={SAMPLE}",
    "model.optimizer.lr=0.003",
    "model/scheduler=none",
    "callbacks.early_stopping.patience=100",
]


@pytest.mark.slow
def test_resume_without_a_run_dir_continues_in_place_and_keeps_the_best_epoch(tmp_path):
    run = tmp_path / "run"
    train(make_cfg(run, [*ERRATIC, "trainer.max_epochs=2"]))
    best_before = scalars(run)["val/loss"]
    best_epoch = min(range(2), key=best_before.__getitem__)
    assert best_epoch == 0 and _epoch(run / "checkpoints" / "best.ckpt") == best_epoch

    result = run_cli(
        "-m", "pneumo.cli.train", *ERRATIC, f"trainer.max_epochs={EPOCHS}",
        f"ckpt_path={run}/checkpoints/last.ckpt", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()  # no second, timestamped run directory
    losses = scalars(run)["val/loss"]
    assert len(losses) == EPOCHS and losses[:2] == best_before
    assert min(range(EPOCHS), key=losses.__getitem__) == best_epoch  # the later epochs were worse
    assert _epoch(run / "checkpoints" / "best.ckpt") == best_epoch
    assert _epoch(run / "checkpoints" / "last.ckpt") == EPOCHS - 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert f"the run continues in {run}" in (run / "train.log").read_text()
    # this launch records its config in .hydra/resume_DATE/, beside the first launch's
    assert [p.name[:7] for p in (run / ".hydra").iterdir() if p.is_dir()] == ["resume_"]


@pytest.mark.slow
def test_new_run_into_a_directory_holding_a_run_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)  # Hydra's own files alone are not a run
    (run / ".hydra" / "config.yaml").write_text("seed: 42\n")
    (run / "train.log").write_text("")
    overrides = [*FAST, f"data.root={SAMPLE}", "trainer.max_epochs=1"]
    train(make_cfg(run, overrides))
    best = run / "checkpoints" / "best.ckpt"
    written = best.stat().st_mtime_ns

    with pytest.raises(PneumoError, match=rf"already holds a run.*ckpt_path={run}/checkpoints/last\.ckpt"):
        train(make_cfg(run, overrides))
    result = run_cli("-m", "pneumo.cli.train", *overrides, f"hydra.run.dir={run}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "already holds a run" in errors[0]
    assert best.stat().st_mtime_ns == written and not (run / "checkpoints" / "best-v1.ckpt").exists()
    assert (run / ".hydra" / "config.yaml").read_text() == "seed: 42\n"  # refused before Hydra wrote

    logs_only = tmp_path / "logs_only"
    shutil.copytree(run / "tensorboard", logs_only / "tensorboard")
    with pytest.raises(PneumoError, match="TensorBoard logs"):
        train(make_cfg(logs_only, overrides))


def test_run_into_a_directory_being_written_is_refused_unless_its_writer_is_gone(tmp_path):
    run = tmp_path / "run"
    lock = run / LOCK_NAME
    overrides = [*FAST, f"data.root={SAMPLE}", "trainer.max_epochs=1"]
    with claim_run_dir(run, None):  # a live run holds the directory
        with pytest.raises(PneumoError, match=rf"being written by another run \(process {os.getpid()} on "):
            train(make_cfg(run, overrides))
        assert not (run / "checkpoints").exists() and lock.is_file()

    lock.write_text("process 1 on elsewhere, started 2026-12-06T00:00:00+00:00\n")  # a killed run's
    train(make_cfg(run, overrides))  # nobody holds its lock: the file alone does not refuse
    assert (run / "checkpoints" / "last.ckpt").is_file() and not lock.exists()


@pytest.fixture
def trained_on_tiny_root(tmp_path, tiny_root):
    """One epoch on tiny_root (validation: 4 of its 16 training films); the run directory."""
    run = tmp_path / "run"
    train(make_cfg(run, [*FAST, f"data.root={tiny_root}", "trainer.max_epochs=1"]))
    return run


def test_eval_on_val_uses_the_recorded_files_and_names_missing_ones(
    tmp_path, tiny_root, trained_on_tiny_root
):
    ckpt = trained_on_tiny_root / "checkpoints" / "best.ckpt"
    recorded = torch.load(ckpt, weights_only=True)["pneumo"]["val_files"]
    assert len(recorded) == 4 and all(path.startswith("train/") for path, _ in recorded)
    assert sorted(label for _, label in recorded) == ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]

    # new patients in train/ would change a rebuilt split; the recorded one stays
    for index, source in enumerate(sample_files("NORMAL")):
        shutil.copy(source, tiny_root / "train" / "NORMAL" / f"IM-{9000 + index}-0001.jpeg")
    metrics = evaluate(str(ckpt), str(tiny_root), "val", tmp_path / "eval")
    assert metrics["n"] == 4 and metrics["n_negative"] == 2

    older = torch.load(ckpt, weights_only=True)
    del older["pneumo"]["val_files"]  # a checkpoint written before the list was recorded
    torch.save(older, tmp_path / "older.ckpt")
    # its split cannot be rebuilt exactly (the patient rule was corrected since): refused
    with pytest.raises(PneumoError, match="did not record its validation files"):
        evaluate(str(tmp_path / "older.ckpt"), str(tiny_root), "val", tmp_path / "eval_old")
    resume = [*FAST, f"data.root={tiny_root}", f"ckpt_path={tmp_path / 'older.ckpt'}"]
    with pytest.raises(PneumoError, match="cannot resume: .*older.ckpt was written by an older pneumo"):
        train(make_cfg(tmp_path / "resumed_old", resume))

    (tiny_root / recorded[0][0]).unlink()
    with pytest.raises(PneumoError, match=rf"1 of the 4 validation files .* missing .*\({recorded[0][0]}\)"):
        evaluate(str(ckpt), str(tiny_root), "val", tmp_path / "eval_missing")


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """One epoch on a tiny_root of its own, shared by the refused resumes (each checks it
    trained nothing): the run directory and the data root."""
    root = make_tiny_root(tmp_path_factory.mktemp("data") / "xray")
    run = tmp_path_factory.mktemp("one_epoch") / "run"
    train(make_cfg(run, [*FAST, f"data.root={root}", "trainer.max_epochs=1"]))
    return run, root


def _resume_refused(run, tiny_root, *overrides: str, match: str) -> None:
    """Resuming ``run``'s last.ckpt with ``overrides`` stops with ``match`` before training."""
    last = run / "checkpoints" / "last.ckpt"
    resume = [*FAST, f"data.root={tiny_root}", "trainer.max_epochs=3", f"ckpt_path={last}", *overrides]
    with pytest.raises(PneumoError, match=match):
        train(make_cfg(run, resume))
    assert _epoch(last) == 0 and len(scalars(run)["val/loss"]) == 1  # nothing trained


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("seed=7", "seed=7, but it was trained with seed=42"),
        ("data.val_fraction=0.5", "data.val_fraction=0.5, but it was trained with data.val_fraction=0.25"),
        ("data.min_val_images=2", "data.min_val_images=2, but it was trained with data.min_val_images=100"),
        ("data.image_size=64", "data.image_size=64, but it was trained with data.image_size=32"),
        ("data.classes=[PNEUMONIA,NORMAL]", r"data.classes=\['PNEUMONIA', 'NORMAL'\], but it was trained"),
        # not the split, but the averaged weights a resume would start without
        ("ablation=ema", r"weight_averaging=\{.*EMAWeightAveraging.*\}, but it was trained with .*=null"),
        # best.ckpt and early stopping keep their state per monitored figure
        ("monitor.metric=val/auroc", "metric=val/auroc, but it was trained with monitor.metric=val/loss"),
    ],
)
def test_resume_with_a_setting_that_changes_the_split_is_refused(one_epoch_run, override, named):
    _resume_refused(*one_epoch_run, override, match=named)


def test_resume_on_data_that_gives_another_validation_split_is_refused(tiny_root, trained_on_tiny_root):
    for index, source in enumerate(sample_files("NORMAL")):
        shutil.copy(source, tiny_root / "train" / "NORMAL" / f"IM-{9000 + index}-0001.jpeg")
    _resume_refused(trained_on_tiny_root, tiny_root, match=r"validation split under data.root=.*xray differs")


class _Interrupt(L.Callback):
    """Ctrl-C once in the second epoch: after one of its training batches, within or between
    validation batches, after validation's metrics, or while the epoch's checkpoint is written."""

    def __init__(self, during: str, batch: int = 0) -> None:
        self.during, self.batch = during, batch

    def _stop(self, trainer, during: str) -> None:
        if self.during == during and trainer.current_epoch == 1 and not trainer.sanity_checking:
            self.during = None  # once: SaveOnInterrupt's own save calls on_save_checkpoint too
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch:
            self._stop(trainer, "training")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1 and self.during == "validation step":  # in the second batch's forward pass

            def stop(*_):
                hook.remove()
                self._stop(trainer, "validation step")

            hook = pl_module.net.register_forward_hook(stop)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self._stop(trainer, "between validation batches")

    def on_validation_epoch_end(self, trainer, pl_module):
        self._stop(trainer, "validation end")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._stop(trainer, "checkpoint")


class _CountValidationBatches(L.Callback):
    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def on_validation_batch_end(self, trainer, *args, **kwargs):
        if not trainer.sanity_checking:
            self.seen[trainer.current_epoch] = self.seen.get(trainer.current_epoch, 0) + 1


# 6 training and 2 validation batches an epoch, a learning rate that moves every epoch
SIX_BATCHES = [*COSINE, "data.batch_size=2", "trainer.max_epochs=3"]
TWICE = ["+trainer.val_check_interval=0.5"]  # validation after batches 3 and 6


def _schedule(run_dir) -> tuple[float, int]:
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return saved["optimizer_states"][0]["param_groups"][0]["lr"], saved["lr_schedulers"][0]["last_epoch"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The learning rate and scheduler step that a run without interruption ends with."""
    schedules = {}

    def schedule(extra: list[str]) -> tuple[float, int]:
        key = tuple(extra)
        if key not in schedules:
            run_dir = tmp_path_factory.mktemp("whole")
            train(make_cfg(run_dir, [*SIX_BATCHES, *extra]))
            schedules[key] = _schedule(run_dir)
        return schedules[key]

    return schedule


@pytest.mark.slow
@pytest.mark.parametrize(
    "interrupt, extra, done, validated",
    [
        (("training", 0), [], 1, {1: 2, 2: 2}),
        (("training", 5), [], 6, {1: 2, 2: 2}),  # the last batch's end: weight averaging's update
        (("validation step",), [], 6, {1: 2, 2: 2}),
        (("between validation batches",), [], 6, {1: 2, 2: 2}),
        (("validation end",), [], 6, {1: 2, 2: 2}),
        (("checkpoint",), [], None, {2: 2}),  # epoch 1 was validated: the resume goes on to epoch 2
        (("training", 3), TWICE, 4, {1: 2, 2: 4}),  # the mid-epoch validation is not repeated
    ],
    ids=[
        "training",
        "last batch's end",
        "validation step",
        "between validation batches",
        "validation end",
        "checkpoint",
        "after a mid-epoch validation",
    ],
)
def test_run_interrupted_anywhere_in_an_epoch_resumes_and_times_it_from_the_resume(
    tmp_path, caplog, uninterrupted, interrupt, extra, done, validated
):
    overrides = [*SIX_BATCHES, *extra]
    run_dir = tmp_path / "run"
    datamodule, model, trainer = build(make_cfg(run_dir, overrides), [_Interrupt(*interrupt)])
    fit_until_interrupted(trainer, model, datamodule)
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    shutil.rmtree(run_dir / "tensorboard")  # only the resumed process's figures are read below
    started = time.perf_counter()
    with caplog.at_level("INFO", logger="pneumo.callbacks.epoch_report"):
        train(
            make_cfg(run_dir, [*overrides, f"ckpt_path={interrupted}"]),
            [counted := _CountValidationBatches()],
        )
    elapsed = time.perf_counter() - started
    # the interrupted epoch's validation ran again, whole (Lightning alone would skip it, and
    # early stopping stop for want of val/loss, or score its first batches again), and once
    assert counted.seen == validated
    assert _schedule(run_dir) == uninterrupted(extra)  # one learning-rate step an epoch
    times = scalars(run_dir)["time/train_epoch_s"]
    # before the fix, epoch 1 was timed from the clock's origin (hours)
    assert len(times) == len(validated) and all(0 <= t < elapsed for t in times), (times, elapsed)
    assert ("resumes after batch" in caplog.text) == (done is not None)
    assert done is None or f"epoch 1 resumes after batch {done} of 6" in caplog.text
