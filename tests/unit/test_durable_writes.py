"""Files written whole or not at all, and flushed to the disk: a writer killed between writing
and renaming leaves the earlier file whole and nothing partial under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pneumo.artifacts import output
from pneumo.artifacts.checkpoint import AtomicCheckpointIO, ctrl_c_after
from pneumo.artifacts.output import write_text_atomically
from pneumo.errors import PneumoError
from tests.helpers.data import REPO

# Writes the new version of FILE as pneumo does, but stops between the write and the rename
# (the test's own hook in place of ``publish``) and waits there to be killed.
WRITER = """
import sys, time
from pathlib import Path
import torch
from pneumo.artifacts import output
from pneumo.artifacts.checkpoint import AtomicCheckpointIO

def stop_before_rename(source, destination):
    print("written", flush=True)
    time.sleep(120)

output.publish = stop_before_rename
kind, path = sys.argv[1], Path(sys.argv[2])
if kind == "checkpoint":
    AtomicCheckpointIO().save_checkpoint({"weights": torch.full((1000,), 2.0)}, path)
else:
    output.write_text_atomically(path, '{"auroc": 0.5}\\n')
"""


@pytest.mark.parametrize("kind", ["checkpoint", "metrics"])
def test_a_writer_killed_between_write_and_rename_leaves_the_old_file_whole(tmp_path, kind):
    path = tmp_path / ("last.ckpt" if kind == "checkpoint" else "metrics.json")
    if kind == "checkpoint":
        AtomicCheckpointIO().save_checkpoint({"weights": torch.full((1000,), 1.0)}, path)
    else:
        write_text_atomically(path, '{"auroc": 0.9}\n')
    before = path.read_bytes()

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, kind, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
        partial = path.with_name(f".{path.name}.partial")
        assert partial.stat().st_size > 0  # the new version is on disk under its temporary name
    finally:
        writer.send_signal(signal.SIGKILL)  # no handler, no finally: as a power cut leaves it
        writer.wait(timeout=60)

    assert writer.returncode == -signal.SIGKILL
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, partial.name])
    if kind == "checkpoint":
        assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.full((1000,), 1.0))
        AtomicCheckpointIO().save_checkpoint({"weights": torch.full((1000,), 3.0)}, path)
        assert torch.load(path, weights_only=True)["weights"][0] == 3.0  # the next save goes through
    else:
        write_text_atomically(path, '{"auroc": 0.7}\n')
        assert path.read_text() == '{"auroc": 0.7}\n'
    assert not partial.exists()


def test_the_file_reaches_the_disk_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    synced: list[tuple[str, list[str]]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # records what each fsync flushed, then flushes it
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((target.name, sorted(p.name for p in tmp_path.iterdir())))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name a descriptor's file")
    monkeypatch.setattr(output.os, "fsync", fsync)
    write_text_atomically(tmp_path / "preds.csv", "path,p\n")
    # the temporary file synced while it is the only name, then the folder holding the final name
    assert synced == [(".preds.csv.partial", [".preds.csv.partial"]), (tmp_path.name, ["preds.csv"])]


class _CtrlCOnWrite:
    """The file torch.save writes to, on which Ctrl-C comes at the writes numbered ``at``."""

    def __init__(self, file, at: tuple[int, ...], hits: list[int]) -> None:
        self.file, self.at, self.hits, self.writes = file, at, hits, 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes in self.at:
            self.hits.append(self.writes)
            signal.raise_signal(signal.SIGINT)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal (a background job ignores it)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _save_hit_by_ctrl_c(
    monkeypatch, path, checkpoint, at=(3,), then: Exception | None = None
) -> BaseException | None:
    """Save as a run does, Ctrl-C coming at the writes ``at`` (``then``: the save fails after
    them, as a full disk does when the file is flushed); what the save raised, if anything
    (caught here: a KeyboardInterrupt let out would stop pytest itself)."""
    real_save, hits = torch.save, []

    def save(obj, file) -> None:
        real_save(obj, _CtrlCOnWrite(file, at, hits))
        if then is not None:
            raise then

    monkeypatch.setattr(torch, "save", save)
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    except BaseException as raised:  # noqa: BLE001
        return raised
    finally:
        assert hits, "no Ctrl-C came: torch.save wrote fewer times than the test expects"
    return None


def test_ctrl_c_during_a_checkpoint_write_stops_once_the_file_is_whole(tmp_path, monkeypatch, ctrl_c_raises):
    path = tmp_path / "last.ckpt"
    checkpoint = {"weights": torch.arange(200_000, dtype=torch.float32), "epoch": 7}
    # before: KeyboardInterrupt inside the write left torch's zip writer mid-record (RuntimeError)
    raised = _save_hit_by_ctrl_c(monkeypatch, path, checkpoint)
    assert type(raised) is KeyboardInterrupt  # still a Ctrl-C: the run stops (Lightning saves, exits)
    saved = torch.load(path, weights_only=True)  # whole
    assert saved["epoch"] == 7 and torch.equal(saved["weights"], checkpoint["weights"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C acts again at once
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_second_ctrl_c_stops_a_save_at_once(tmp_path, monkeypatch, ctrl_c_raises):
    raised = _save_hit_by_ctrl_c(monkeypatch, tmp_path / "last.ckpt", {"w": torch.ones(200_000)}, at=(3, 4))
    assert type(raised) is KeyboardInterrupt  # a stuck disk cannot hold the user
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert list(tmp_path.iterdir()) == []  # the save did not finish: nothing partial left


def test_a_save_that_fails_with_a_ctrl_c_held_says_why_and_stops(
    tmp_path, monkeypatch, ctrl_c_raises, caplog
):
    full = OSError(28, "No space left on device")
    raised = _save_hit_by_ctrl_c(monkeypatch, tmp_path / "last.ckpt", {"w": torch.ones(9)}, then=full)
    # the Ctrl-C stops the run (pneumo-search would go on to its next trial after a failed one)
    assert type(raised) is KeyboardInterrupt and isinstance(raised.__cause__, PneumoError)
    assert "no space left on device writing" in caplog.text  # and the failure is said
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_during_a_save_made_while_the_run_stops_is_dropped(tmp_path, monkeypatch, ctrl_c_raises):
    with ctrl_c_after(deliver=False):  # as SaveOnInterrupt saves interrupted.ckpt
        raised = _save_hit_by_ctrl_c(monkeypatch, tmp_path / "interrupted.ckpt", {"epoch": 7})
    assert raised is None
    assert torch.load(tmp_path / "interrupted.ckpt", weights_only=True)["epoch"] == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
