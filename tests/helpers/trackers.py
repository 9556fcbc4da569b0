"""Reading what a run logged to its trackers, with each tracker's own client or file format."""

from __future__ import annotations

import csv
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

# A W&B run file (run-ID.wandb) is a LevelDB-style log, as wandb's former Python reader
# (wandb.sdk.internal.datastore) read it: a 7-byte file header (":W&B", magic, version), then
# 32 KiB blocks of records, each with a 7-byte header (checksum, length, type) before its bytes;
# a record that does not fit a block is cut into FIRST, MIDDLE... LAST pieces, and a block's last
# bytes are padding when fewer than a header's are left. Each record is a protobuf Record of
# wandb.proto.wandb_internal_pb2.
_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class WandbRun:
    """What an offline W&B run recorded: its project and group, config, history rows, summary
    and the exit status it was finished with."""

    project: str = ""
    group: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    def curve(self, key: str) -> list[float]:
        """The values of ``key`` in history order (one a logging call that had it)."""
        return [row[key] for row in self.history if key in row]


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] in (b"", b":W&B"), f"{path} is not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + _HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:
            pos += left
            continue
        _, length, kind = _HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # the rest of the block is padding
            pos += left
            continue
        chunk = data[pos + _HEADER.size : pos + _HEADER.size + length]
        pos += _HEADER.size + length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(pending + chunk)
    return records


def _finished_records(path: Path, timeout: float) -> list:
    """The records of a finished run's file, which ends with its exit record: W&B's service
    process may still be writing them for a moment after ``finish()`` has returned."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        records = []
        for raw in _records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_run(offline_run_dir: Path, timeout: float = 30.0) -> WandbRun:
    """Read the ``run-ID.wandb`` file of a finished offline run (``RUN/wandb/offline-run-*``)."""
    (path,) = Path(offline_run_dir).glob("run-*.wandb")
    run = WandbRun()

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    for record in _finished_records(path, timeout):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.project, run.group = record.run.project, record.run.run_group
        elif kind == "config":
            run.config.update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's CSV log (``RUN/csv/version_0/metrics.csv``), empty cells as ``""``."""
    with (Path(run_dir) / "csv" / "version_0" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))
