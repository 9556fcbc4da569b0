"""Reading a run's TensorBoard files, as a user's TensorBoard would."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar curve of a run's ``tensorboard/`` files, by tag, in logging order."""
    accumulator = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def scalar_steps(run_dir: Path) -> dict[str, list[int]]:
    """The x value (step) of every point of each scalar curve of a run's ``tensorboard/`` files."""
    accumulator = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [e.step for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
