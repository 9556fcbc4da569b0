"""Checking a dataset before an experiment trusts it: ``pneumo-data verify DATA_ROOT|MANIFEST``.

The folders and files are read by the rules training uses (``pneumo.data.dataset``: which
split folders a root has, which files are images, which are ignored; ``pneumo.data.manifest``
for a CSV manifest), so every folder or manifest problem that would stop training is reported
here as an error.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pneumo.data.dataset import DEFAULT_CLASSES, accepted_formats, list_split, split_dirs
from pneumo.data.manifest import Manifest, read_manifest
from pneumo.data.preprocess import BadImageError, read_grey
from pneumo.data.split import known_patient_name, patient_id
from pneumo.errors import printable


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


@dataclass(frozen=True)
class _Job:
    """A file to inspect: its split, class name and patient (``None``: from its name)."""

    path: Path
    split: str
    label: str
    patient: str | None = None


@dataclass
class Report:
    """The outcome of a verification; ``errors`` would corrupt an experiment, ``warnings`` not."""

    root: str
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # Unknown, missing, empty or unreadable class folders: each stops training.
    folder_errors: list[str] = field(default_factory=list)
    # Manifest rows training stops on (missing column, unknown label, missing file, ...).
    manifest_errors: list[str] = field(default_factory=list)
    # Manifest rows whose label maps to null (data.manifest.labels): left out, as training does.
    dropped_rows: int = 0
    bad_files: list[dict[str, str]] = field(default_factory=list)
    duplicates_within: list[list[str]] = field(default_factory=list)
    duplicates_across: list[list[str]] = field(default_factory=list)
    patients_across: dict[str, list[str]] = field(default_factory=dict)
    patients: int = 0
    # Where the patients come from: file names, or a manifest's patient column.
    patient_source: str = "file names"
    # Files whose names follow no known patient pattern: each counts as its own patient.
    unknown_patient_names: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)
    # why the ignored files are not films (hidden folder, other format, ...): files per reason
    ignored_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        found = []
        if self.folder_errors:
            found.append(f"{len(self.folder_errors)} class-folder problems (training stops on them)")
        if self.manifest_errors:
            found.append(f"{len(self.manifest_errors)} manifest problems (training stops on them)")
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
        if self.ignored_files:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.ignored_reasons.items())
            found.append(
                f"{len(self.ignored_files)} files ignored, as training ignores them "
                f"({reasons or 'not images, or outside the class folders'}); films are "
                f"{accepted_formats()} files"
            )
        return found

    def as_dict(self) -> dict:
        return {
            **self.__dict__,
            "errors": self.errors,
            "warnings": self.warnings,
            "ok": not self.errors,
        }


def _inspect(path: Path, split: str, label: str) -> FileInfo:
    """Fully decode and hash one file; a file that cannot be read gets its reason in ``error``,
    the very reason training and predict give (they decode with the same ``read_grey``)."""
    info = FileInfo(path, split, label, "")
    try:
        if path.is_file() and path.stat().st_size == 0:
            info.error = "zero-byte file"
            return info
        image = read_grey(path)  # a full decode: truncation only shows here
        if path.suffix.lower() == ".dcm":  # PIL cannot open DICOM; read_grey did, with pydicom
            info.mode = "DICOM"
        else:
            with Image.open(path) as original:
                info.mode = original.mode
        info.size = image.size
        info.sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    except BadImageError as err:
        info.error = str(err).removeprefix(printable(f"{path}: "))
    except OSError as err:  # the file changed or vanished between the decode and the hash
        info.error = f"cannot read ({err.strerror or err})"
    return info


def _folder_jobs(root: Path, report: Report) -> list[_Job]:
    """The files of a data root's split folders, as training lists them."""
    jobs: list[_Job] = []
    for split, split_dir in split_dirs(root).items():
        listing = list_split(split_dir, report.classes)
        report.folder_errors.extend(listing.problems)
        report.ignored_files.extend(str(path) for path in listing.ignored)
        for reason in listing.reasons.values():
            report.ignored_reasons[reason] = report.ignored_reasons.get(reason, 0) + 1
        jobs.extend(_Job(sample.path, split, report.classes[sample.label]) for sample in listing.samples)
    return jobs


def _manifest_jobs(manifest: Manifest, report: Report) -> list[_Job]:
    """The films of a manifest's rows, as training reads them (split ``train`` without a split column)."""
    listing = read_manifest(manifest, report.classes)
    report.manifest_errors.extend(listing.problems)
    report.dropped_rows = listing.dropped
    named = manifest.columns.patient
    if named:
        report.patient_source = f"column {named!r}"
    return [
        _Job(sample.path, split, report.classes[sample.label], patient if named else None)
        for sample, patient, split in zip(listing.samples, listing.patients, listing.splits)
    ]


def verify(
    source: str | Path | Manifest, classes: Sequence[str] = DEFAULT_CLASSES, threads: int = 4
) -> Report:
    """Read every file of a data root or manifest once and report what could harm an experiment.

    ``classes`` are the class names (``data.classes``); the splits, images, ignored files and
    patients are those training sees.
    """
    if isinstance(source, Manifest):
        report = Report(str(source.file), list(classes))
        jobs = _manifest_jobs(source, report)
    else:
        report = Report(str(source), list(classes))
        jobs = _folder_jobs(Path(source), report)
    with ThreadPoolExecutor(threads) as pool:
        infos = list(pool.map(lambda job: _inspect(job.path, job.split, job.label), jobs))

    counts: dict[str, Counter] = defaultdict(Counter)
    by_hash: dict[str, list[FileInfo]] = defaultdict(list)
    patient_splits: dict[str, set[str]] = defaultdict(set)
    for job, info in zip(jobs, infos):
        if info.error:
            report.bad_files.append({"path": str(info.path), "reason": info.error})
            continue
        counts[info.split][info.label] += 1
        by_hash[info.sha1].append(info)
        patient_splits[job.patient or patient_id(info.path)].add(info.split)
        if job.patient is None and not known_patient_name(info.path):
            report.unknown_patient_names.append(str(info.path))
        assert info.size is not None  # _inspect sets it for every file read without error
        size = f"{info.size[0]}x{info.size[1]}"
        report.sizes[size] = report.sizes.get(size, 0) + 1
        report.modes[info.mode] = report.modes.get(info.mode, 0) + 1
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


def verify_source(root: str, columns: dict | None = None, labels: dict | None = None) -> str | Manifest:
    """What ``verify`` reads at ``root``: a manifest (a file, or a .csv name) read with the given
    columns and label map (as ``data.manifest.columns`` and ``.labels``), else the data root."""
    if not (Path(root).is_file() or Path(root).suffix.lower() == ".csv"):
        return root
    manifest = Manifest.from_config({"file": root, "columns": columns or {}, "labels": labels})
    assert manifest is not None  # None only for a block without a file
    return manifest
