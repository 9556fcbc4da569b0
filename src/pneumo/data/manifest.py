"""A CSV manifest as a data source: one row per film, naming its file, label and patient.

Public chest X-ray sets (NIH ChestX-ray14, RSNA Pneumonia, CheXpert) ship a table, not class
folders; ``pneumo-data import`` turns each into a manifest, and ``data.manifest`` reads it
into the same ``Sample`` list the class folders give, with each film's patient from its own
column. Paths are relative to the manifest's folder, so a manifest travels with its images.
Row numbers in messages count the header as row 1, as a spreadsheet shows them.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.data.dataset import Sample, conflict_message, label_conflict_groups
from pneumo.data.split import patient_id
from pneumo.errors import PneumoError

log = logging.getLogger(__name__)

# The values of a manifest's split column.
SPLIT_VALUES = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestColumns:
    """Which columns hold each film's path, label and patient (``data.manifest.columns``).

    ``patient=None`` reads the patient from the file name, as for class folders;
    ``split=None`` means every row is for training, with validation carved by patient.
    """

    path: str = "path"
    label: str = "label"
    patient: str | None = "patient"
    split: str | None = None

    def named(self) -> dict[str, str]:
        """``{setting: column name}`` for the columns in use."""
        return {key: name for key, name in vars(self).items() if name is not None}


@dataclass(frozen=True)
class Manifest:
    """A manifest file and how to read it (``data.manifest``).

    ``labels`` maps each value of the label column to a class name, or to ``None`` to drop
    the row (uncertain findings, say); without it the values must be the class names.
    """

    file: Path
    columns: ManifestColumns = field(default_factory=ManifestColumns)
    labels: dict[str, str | None] | None = None

    @property
    def folder(self) -> Path:
        """The folder the manifest's paths are relative to."""
        return self.file.parent

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> Manifest | None:
        """The ``data.manifest`` block as a ``Manifest``; ``None`` when no file is set."""
        if not block or block.get("file") is None:
            return None
        unknown = set(block) - {"file", "columns", "labels"}
        if unknown:
            raise PneumoError(f"data.manifest has no key {sorted(unknown)[0]!r}: use file, columns, labels")
        columns = dict(block.get("columns") or {})
        names = set(vars(ManifestColumns()))
        if set(columns) - names:
            raise PneumoError(
                f"data.manifest.columns has no key {sorted(set(columns) - names)[0]!r}: use "
                f"{', '.join(sorted(names))}"
            )
        for key in ("path", "label"):
            if not columns.get(key, getattr(ManifestColumns, key)):
                raise PneumoError(f"data.manifest.columns.{key} is empty: name the column that holds it")
        labels = block.get("labels")
        named = {key: None if name is None else str(name) for key, name in columns.items()}
        path, label = named.get("path", ManifestColumns.path), named.get("label", ManifestColumns.label)
        assert path is not None and label is not None  # an empty path or label column is refused above
        return cls(
            Path(str(block["file"])),
            ManifestColumns(
                path,
                label,
                patient=named.get("patient", ManifestColumns.patient),
                split=named.get("split", ManifestColumns.split),
            ),
            None if labels is None else {str(k): None if v is None else str(v) for k, v in labels.items()},
        )

    def check_labels(self, classes: Sequence[str]) -> None:
        """Refuse a label map that names a class not in ``classes``."""
        for value, name in (self.labels or {}).items():
            if name is not None and name not in classes:
                raise PneumoError(
                    f"data.manifest.labels maps {value!r} to {name!r}, which is not one of data.classes "
                    f"({', '.join(classes)}); map it to one of them, or to null to drop those rows"
                )


@dataclass
class ManifestListing:
    """A manifest read row by row: the kept films, and every problem found.

    ``samples``, ``patients``, ``splits`` and ``rows`` (the row numbers) run in parallel, one
    entry per kept row; ``dropped`` counts the rows whose label maps to ``None``.
    """

    samples: list[Sample] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    dropped: int = 0
    problems: list[str] = field(default_factory=list)

    def split(self, name: str) -> tuple[list[Sample], list[str]]:
        """The samples of one split, with their patients."""
        rows = [i for i, split in enumerate(self.splits) if split == name]
        return [self.samples[i] for i in rows], [self.patients[i] for i in rows]


def _cell(row: dict[str | None, Any], column: str) -> str:
    """A row's value in ``column``, stripped; '' for a short row."""
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


class _RowReader:
    """Checks one manifest row at a time, adding its film or its problems to a listing."""

    def __init__(self, manifest: Manifest, classes: Sequence[str], listing: ManifestListing) -> None:
        self.manifest = manifest
        self.classes = list(classes)
        self.listing = listing
        self.first_row: dict[str, int] = {}  # the film's real path -> row that listed it

    def problem(self, row: int, column: str, text: str) -> None:
        self.listing.problems.append(f"{self.manifest.file} row {row}, column {column!r}: {text}")

    def label(self, row: int, value: str) -> int | None:
        """The class index of a label value; ``None`` when dropped or unknown (a problem)."""
        column, labels = self.manifest.columns.label, self.manifest.labels
        if labels is not None and value in labels:
            name = labels[value]
            if name is None:
                self.listing.dropped += 1
                return None
            return self.classes.index(name)
        if labels is None and value in self.classes:
            return self.classes.index(value)
        known = sorted(labels) if labels is not None else self.classes
        self.problem(
            row,
            column,
            f"unknown label value {value!r} (expected one of {', '.join(map(repr, known))}); fix the row, "
            "or map the value to a class or to null in data.manifest.labels",
        )
        return None

    def path(self, row: int, value: str) -> Path | None:
        """The film's file, checked: relative, listed once, present.

        Once means once as a file: ``x.png``, ``./x.png``, ``../films/x.png`` from a manifest
        in ``films/``, or a link to it are the same film, which must not get two labels or
        sit on both sides of the split.
        """
        column = self.manifest.columns.path
        if not value:
            self.problem(row, column, "empty path; give the film's file, relative to the manifest's folder")
            return None
        if Path(value).is_absolute():
            self.problem(row, column, f"{value} is absolute; write paths relative to {self.manifest.folder}")
            return None
        path = self.manifest.folder / value
        key = os.path.realpath(path)
        if key in self.first_row:
            self.problem(
                row, column, f"duplicated path {value} (also row {self.first_row[key]}); list each film once"
            )
            return None
        self.first_row[key] = row
        if not path.is_file():
            self.problem(row, column, f"file not found: {path}; fix the path or remove the row")
            return None
        return path

    def read(self, row: int, cells: dict[str | None, Any]) -> None:
        """Check one row and keep its film when nothing is wrong with it."""
        columns = self.manifest.columns
        label = self.label(row, _cell(cells, columns.label))
        if label is None:  # dropped rows are not checked further: they are not used
            return
        path = self.path(row, _cell(cells, columns.path))
        patient = _cell(cells, columns.patient) if columns.patient else None
        if columns.patient and patient == "":
            self.problem(row, columns.patient, "empty patient; every film needs its patient's ID")
        split = _cell(cells, columns.split).lower() if columns.split else "train"
        if columns.split and split not in SPLIT_VALUES:
            self.problem(
                row, columns.split, f"unknown split value {split!r} (expected {', '.join(SPLIT_VALUES)})"
            )
        if path is None or patient == "" or split not in SPLIT_VALUES:
            return
        self.listing.samples.append(Sample(path, label))
        self.listing.patients.append(patient or patient_id(path))
        self.listing.splits.append(split)
        self.listing.rows.append(row)


def repeated_column(file: Path, header: Sequence[str]) -> str | None:
    """The one line for a header that names a column twice, ``None`` when each name is once.

    A CSV reader keeps only the last of two columns of one name: a label or path column given
    twice would be read from the other copy without a word.
    """
    places: dict[str, list[int]] = {}
    for number, name in enumerate(header, start=1):
        if name and name.strip():
            places.setdefault(name.strip(), []).append(number)
    for name, numbers in places.items():
        if len(numbers) > 1:
            where = ", ".join(map(str, numbers))
            return (
                f"{file} row 1: column {name!r} appears {len(numbers)} times (columns {where}); a table "
                "must name each column once: rename or remove the extra one"
            )
    return None


def read_manifest(manifest: Manifest, classes: Sequence[str]) -> ManifestListing:
    """Read every row of a manifest, collecting each problem as one line (file, row, column)."""
    listing = ManifestListing()
    try:
        with open(manifest.file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            repeated = repeated_column(manifest.file, header)
            if repeated:
                listing.problems.append(repeated)
                return listing
            missing = [(key, name) for key, name in manifest.columns.named().items() if name not in header]
            if missing:
                key, name = missing[0]
                listing.problems.append(
                    f"{manifest.file} row 1: no column {name!r} (data.manifest.columns.{key}); its columns "
                    f"are {', '.join(map(repr, header)) or 'none'}: name the right one in "
                    f"data.manifest.columns.{key}"
                )
                return listing
            rows = _RowReader(manifest, classes, listing)
            for number, cells in enumerate(reader, start=2):
                rows.read(number, cells)
        row_of = {s.path: row for s, row in zip(listing.samples, listing.rows)}
        for group in label_conflict_groups(listing.samples):
            rows_named = ", ".join(str(row_of[s.path]) for s in group)
            listing.problems.append(f"{manifest.file} rows {rows_named}: {conflict_message(group, classes)}")
    except FileNotFoundError:
        listing.problems.append(f"manifest not found: {manifest.file} (data.manifest.file)")
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        listing.problems.append(f"cannot read manifest {manifest.file}: {err}; save it as UTF-8 CSV")
    return listing


def load_manifest(manifest: Manifest, classes: Sequence[str]) -> ManifestListing:
    """``read_manifest``, stopping on its first problem with a ``PneumoError``."""
    listing = read_manifest(manifest, classes)
    if listing.problems:
        more = len(listing.problems) - 1
        hint = f" (and {more} more; pneumo-data verify {manifest.file} lists them all)" if more else ""
        raise PneumoError(listing.problems[0] + hint)
    if listing.dropped:
        log.info(
            "%s: %d rows left out, their labels map to null (data.manifest.labels)",
            manifest.file,
            listing.dropped,
        )
    return listing


def check_split_classes(samples: Sequence[Sample], classes: Sequence[str], split: str, file: Path) -> None:
    """Stop when a split of the manifest lacks a class: a one-class split trains or scores nothing."""
    present = {s.label for s in samples}
    for label, name in enumerate(classes):
        if label not in present:
            raise PneumoError(
                f"{file} has no {name} rows for {split}; add some, or check data.manifest.labels and the "
                "split column"
            )


def check_patients_apart(listing: ManifestListing, file: Path, first: str, second: str) -> None:
    """Stop when a patient has rows in both splits: validation would then partly measure memory."""
    kept = list(zip(listing.patients, listing.splits, listing.rows))
    row_of = {patient: row for patient, split, row in kept if split == first}
    for patient, split, row in kept:
        if split == second and patient in row_of:
            raise PneumoError(
                f"{file} rows {row_of[patient]} and {row}: patient {patient} has films in both {first} "
                f"and {second} rows; move all of a patient's films to one split"
            )
