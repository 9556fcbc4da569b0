"""Files written whole or not at all, and flushed to the disk: a writer killed between writing
and renaming leaves the earlier file whole and nothing partial under the final name."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pneumo.artifacts import output
from pneumo.artifacts.checkpoint import AtomicCheckpointIO
from pneumo.artifacts.output import write_text_atomically
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


class _CtrlCWhileSaved:
    """Pickled inside torch.save, as its writes go on: Ctrl-C comes at that moment."""

    def __reduce__(self):
        signal.raise_signal(signal.SIGINT)
        return (collections.OrderedDict, ([("epoch", 7)],))


def test_ctrl_c_during_a_checkpoint_save_stops_once_the_file_is_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    weights = torch.arange(200_000, dtype=torch.float32)
    with pytest.raises(KeyboardInterrupt):  # still a Ctrl-C: the run stops (Lightning saves, exits)
        AtomicCheckpointIO().save_checkpoint({"weights": weights, "mark": _CtrlCWhileSaved()}, path)
    saved = torch.load(path, weights_only=True)  # whole, not a torch.save cut off mid-record
    assert saved["mark"] == {"epoch": 7} and torch.equal(saved["weights"], weights)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C acts again at once
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
