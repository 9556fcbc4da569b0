"""Checking a dataset before an experiment trusts it: ``pneumo-data verify DATA_ROOT``."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pneumo.data.preprocess import BadImageError, read_grey
from pneumo.data.split import known_patient_name, patient_id
from pneumo.errors import PneumoError

SPLITS = ("train", "val", "test")
# Smaller than this a side, an "X-ray" carries no diagnostic detail: warn.
MIN_SIDE = 32


@dataclass
class FileInfo:
    """What one file turned out to be."""

    path: Path
    split: str
    label: str
    sha1: str
    size: tuple[int, int] | None = None
    mode: str = ""
    error: str = ""


@dataclass
class Report:
    """The outcome of a verification; ``errors`` would corrupt an experiment, ``warnings`` not."""

    root: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    bad_files: list[dict[str, str]] = field(default_factory=list)
    duplicates_within: list[list[str]] = field(default_factory=list)
    duplicates_across: list[list[str]] = field(default_factory=list)
    patients_across: dict[str, list[str]] = field(default_factory=dict)
    patients: int = 0
    # Files whose names follow no known patient pattern: each counts as its own patient.
    unknown_patient_names: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    tiny_images: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        found = []
        if self.bad_files:
            found.append(f"{len(self.bad_files)} unreadable files")
        if self.duplicates_across:
            found.append(f"{len(self.duplicates_across)} files duplicated across splits")
        if self.patients_across:
            found.append(f"{len(self.patients_across)} patients in more than one split")
        return found

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.duplicates_within:
            found.append(f"{len(self.duplicates_within)} groups of identical files within a split")
        if self.unknown_patient_names:
            found.append(
                f"{len(self.unknown_patient_names)} file names carry no known patient ID "
                "(each is treated as its own patient)"
            )
        if self.tiny_images:
            found.append(f"{len(self.tiny_images)} images smaller than {MIN_SIDE} px a side")
        if self.ignored_files:
            found.append(f"{len(self.ignored_files)} non-image files ignored")
        return found

    def as_dict(self) -> dict:
        return {
            **self.__dict__,
            "errors": self.errors,
            "warnings": self.warnings,
            "ok": not self.errors,
        }


def _inspect(path: Path, split: str, label: str) -> FileInfo:
    data = path.read_bytes()
    info = FileInfo(path, split, label, hashlib.sha1(data).hexdigest())
    if not data:
        info.error = "zero-byte file"
        return info
    try:
        image = read_grey(path)  # a full decode: truncation only shows here
        with Image.open(path) as original:
            info.mode = original.mode
        info.size = image.size
    except BadImageError as err:
        info.error = str(err).removeprefix(f"{path}: ")
    return info


def _layout(root: Path) -> list[tuple[str, Path]]:
    """(split name, split folder) pairs; a folder of class folders is one split, 'train'."""
    if not root.is_dir():
        raise PneumoError(f"data root not found: {root}")
    splits = [(name, root / name) for name in SPLITS if (root / name).is_dir()]
    return splits or [("train", root)]


def verify(root: str | Path, threads: int = 4) -> Report:
    """Read every file under ``root`` once and report what could harm an experiment."""
    root = Path(root)
    report = Report(str(root))
    jobs: list[tuple[Path, str, str]] = []
    for split, split_dir in _layout(root):
        for path in sorted(split_dir.rglob("*")):
            if not path.is_file():
                continue
            label = path.relative_to(split_dir).parts[0] if path.parent != split_dir else ""
            if path.name.startswith(".") or path.name.lower() in ("thumbs.db", "desktop.ini") or not label:
                report.ignored_files.append(str(path))
            else:
                jobs.append((path, split, label))
    with ThreadPoolExecutor(threads) as pool:
        infos = list(pool.map(lambda job: _inspect(*job), jobs))

    counts: dict[str, Counter] = defaultdict(Counter)
    by_hash: dict[str, list[FileInfo]] = defaultdict(list)
    patient_splits: dict[str, set[str]] = defaultdict(set)
    for info in infos:
        if info.error:
            report.bad_files.append({"path": str(info.path), "reason": info.error})
            continue
        counts[info.split][info.label] += 1
        by_hash[info.sha1].append(info)
        patient_splits[patient_id(info.path)].add(info.split)
        if not known_patient_name(info.path):
            report.unknown_patient_names.append(str(info.path))
        size = f"{info.size[0]}x{info.size[1]}"
        report.sizes[size] = report.sizes.get(size, 0) + 1
        report.modes[info.mode] = report.modes.get(info.mode, 0) + 1
        if min(info.size) < MIN_SIDE:
            report.tiny_images.append(str(info.path))
    report.counts = {split: dict(sorted(c.items())) for split, c in counts.items()}
    for group in by_hash.values():
        if len(group) > 1:
            paths = [str(i.path) for i in group]
            target = (
                report.duplicates_across if len({i.split for i in group}) > 1 else report.duplicates_within
            )
            target.append(paths)
    report.patients = len(patient_splits)
    report.patients_across = {p: sorted(s) for p, s in sorted(patient_splits.items()) if len(s) > 1}
    report.sizes = dict(sorted(report.sizes.items(), key=lambda kv: -kv[1]))
    return report
