"""Manifests from the tables public chest X-ray sets ship: ``pneumo-data import --format ...``.

Each set labels pneumonia its own way; these rules turn its table into manifest rows (path,
label NORMAL or PNEUMONIA, patient), leaving out what they drop:

- ``nih``, ChestX-ray14's ``Data_Entry_2017.csv``: PNEUMONIA when ``Pneumonia`` is one of the
  ``|``-joined Finding Labels, NORMAL when they read ``No Finding``; films with other findings
  only are dropped, or called NORMAL (meaning: no pneumonia) with ``other_findings="NORMAL"``.
- ``rsna``, RSNA Pneumonia Detection's ``stage_2_train_labels.csv``: Target 1 -> PNEUMONIA,
  0 -> NORMAL, one row per patientId (the table has one row per box). Target 0 includes the
  films graded "No Lung Opacity / Not Normal": NORMAL there means no opacity, not a normal film.
- ``chexpert``, CheXpert's ``train.csv``: Pneumonia 1 -> PNEUMONIA, 0 -> NORMAL; uncertain
  (-1) and blank (not mentioned in the report) are dropped unless mapped; frontal films only
  unless ``views="all"``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pneumo.artifacts.output import write_text_atomically
from pneumo.data.manifest import ManifestColumns, repeated_column
from pneumo.errors import PneumoError

NORMAL, PNEUMONIA, DROP = "NORMAL", "PNEUMONIA", "drop"

# The table each format reads, for messages, and where its images lie by default.
TABLES = {
    "nih": "Data_Entry_2017.csv",
    "rsna": "stage_2_train_labels.csv",
    "chexpert": "train.csv",
}
FORMATS = tuple(TABLES)


@dataclass(frozen=True)
class ImportRules:
    """The label choices an import leaves to the user; each applies to one format."""

    other_findings: str = DROP  # nih: films with findings other than pneumonia: drop | NORMAL
    uncertain: str = DROP  # chexpert: Pneumonia -1: drop | NORMAL | PNEUMONIA
    blank: str = DROP  # chexpert: Pneumonia not mentioned: drop | NORMAL
    views: str = "frontal"  # chexpert: frontal | all

    # which format each rule belongs to, and its choices
    CHOICES = {
        "other_findings": ("nih", (DROP, NORMAL)),
        "uncertain": ("chexpert", (DROP, NORMAL, PNEUMONIA)),
        "blank": ("chexpert", (DROP, NORMAL)),
        "views": ("chexpert", ("frontal", "all")),
    }

    @classmethod
    def for_format(cls, fmt: str, **given: str | None) -> ImportRules:
        """Rules for ``fmt`` from the options given (``None``: the default); refuse another format's."""
        for name, value in given.items():
            owner, choices = cls.CHOICES[name]
            flag = "--" + name.replace("_", "-")
            if value is not None and owner != fmt:
                raise PneumoError(f"{flag} applies to --format {owner}, not {fmt}")
            if value is not None and value not in choices:
                raise PneumoError(f"{flag} {value}: use one of {', '.join(choices)}")
        return cls(**{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)
class Entry:
    """One film of a table: its row, the column naming it, its file, class and patient.

    ``label`` is ``None`` for a film the rules drop; ``rule`` names the rule that decided.
    """

    row: int
    column: str
    image: Path
    label: str | None
    patient: str
    rule: str = ""


@dataclass
class ImportSummary:
    """What an import wrote: films per class, and films left out per reason."""

    written: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)


def _class(choice: str) -> str | None:
    """A rule's choice as a class name, ``None`` for drop."""
    return None if choice == DROP else choice


def _bad_cell(table: Path, row: int, column: str, text: str) -> PneumoError:
    return PneumoError(f"{table} row {row}, column {column!r}: {text}")


def _rows(table: Path, fmt: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, cells) of a dataset table, after checking that it has ``required`` columns."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            repeated = repeated_column(table, header)
            if repeated:
                raise PneumoError(repeated)
            for name in required:
                if name not in header:
                    raise PneumoError(
                        f"{table} row 1: no column {name!r}, which {TABLES[fmt]} of --format {fmt} has; "
                        "is this the right table and format?"
                    )
            for number, cells in enumerate(reader, start=2):
                yield number, {k: (v or "").strip() for k, v in cells.items() if isinstance(k, str)}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PneumoError(f"cannot read {table}: {err}") from err


def _required(table: Path, row: int, cells: dict[str, str], column: str) -> str:
    """A cell that must not be empty."""
    if not cells[column]:
        raise _bad_cell(table, row, column, "empty; every row needs it")
    return cells[column]


def _files_by_name(images: Path) -> dict[str, list[Path]]:
    """Every file under ``images`` by name: NIH's table names films, its archives nest them."""
    found: dict[str, list[Path]] = defaultdict(list)
    for folder, _, names in os.walk(images, followlinks=True):
        for name in names:
            found[name].append(Path(folder) / name)
    return found


def read_nih(table: Path, images: Path, rules: ImportRules) -> Iterator[Entry]:
    """ChestX-ray14: the findings decide, the file is found by name anywhere under ``images``."""
    files = _files_by_name(images)
    for row, cells in _rows(table, "nih", ("Image Index", "Finding Labels", "Patient ID")):
        name = _required(table, row, cells, "Image Index")
        found = files.get(name, [images / name])  # a missing film is named when the import checks
        if len(found) > 1:
            raise _bad_cell(
                table, row, "Image Index", f"{len(found)} files are named {name}: {found[0]}, {found[1]}"
            )
        findings = {f.strip() for f in _required(table, row, cells, "Finding Labels").split("|")}
        patient = _required(table, row, cells, "Patient ID")
        label: str | None
        if "Pneumonia" in findings:
            label, rule = PNEUMONIA, ""
        elif findings == {"No Finding"}:
            label, rule = NORMAL, ""
        else:
            label, rule = _class(rules.other_findings), "other findings only"
        yield Entry(row, "Image Index", found[0], label, patient, rule)


def read_rsna(table: Path, images: Path, rules: ImportRules) -> Iterator[Entry]:
    """RSNA Pneumonia: Target per patientId (one row per box, so the first row speaks for all)."""
    first: dict[str, tuple[int, str]] = {}
    for row, cells in _rows(table, "rsna", ("patientId", "Target")):
        patient = _required(table, row, cells, "patientId")
        target = cells["Target"]
        if target not in ("0", "1"):
            raise _bad_cell(table, row, "Target", f"{target!r} is not 0 or 1")
        if patient in first:
            if first[patient][1] != target:
                raise _bad_cell(
                    table,
                    row,
                    "Target",
                    f"{target} disagrees with row {first[patient][0]} of patient {patient}",
                )
            continue
        first[patient] = (row, target)
        label = PNEUMONIA if target == "1" else NORMAL
        yield Entry(row, "patientId", images / f"{patient}.dcm", label, patient)


# CheXpert's Pneumonia column: 1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned.
_CHEXPERT_VALUES = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}


def read_chexpert(table: Path, images: Path, rules: ImportRules) -> Iterator[Entry]:
    """CheXpert: the Pneumonia column, with the uncertain and blank rules; Path is under ``images``."""
    required = ("Path", "Pneumonia", *(("Frontal/Lateral",) if rules.views == "frontal" else ()))
    for row, cells in _rows(table, "chexpert", required):
        path = _required(table, row, cells, "Path")
        patient = re.search(r"(?:^|/)(patient\d+)/", path)
        if patient is None:
            raise _bad_cell(table, row, "Path", f"{path} names no patientNNNNN folder")
        value = cells["Pneumonia"]
        try:
            meaning = _CHEXPERT_VALUES[float(value)] if value else "blank"
        except (ValueError, KeyError):
            raise _bad_cell(table, row, "Pneumonia", f"{value!r} is not 1, 0, -1 or blank") from None
        label = {
            "positive": PNEUMONIA,
            "negative": NORMAL,
            "uncertain": _class(rules.uncertain),
            "blank": _class(rules.blank),
        }[meaning]
        rule = {"uncertain": "uncertain (-1)", "blank": "not mentioned (blank)"}.get(meaning, "")
        if rules.views == "frontal" and cells["Frontal/Lateral"] != "Frontal":
            label, rule = None, "not frontal"
        yield Entry(row, "Path", images / path, label, patient.group(1), rule)


READERS: dict[str, Callable[[Path, Path, ImportRules], Iterator[Entry]]] = {
    "nih": read_nih,
    "rsna": read_rsna,
    "chexpert": read_chexpert,
}


def default_images(fmt: str, table: Path) -> Path:
    """Where a format's images lie beside its table, as the sets are unpacked.

    NIH: anywhere under the table's folder (images_001/images/...); RSNA:
    stage_2_train_images/ beside the table; CheXpert: the folder above the table's, since its
    Path column starts with the set's own folder (CheXpert-v1.0-small/train/...).
    """
    return {
        "nih": table.parent,
        "rsna": table.parent / "stage_2_train_images",
        "chexpert": table.parent.parent,
    }[fmt]


def import_table(
    fmt: str,
    table: str | Path,
    to: str | Path,
    images: str | Path | None = None,
    rules: ImportRules | None = None,
) -> ImportSummary:
    """Write the manifest ``to`` from a dataset's ``table``, with paths relative to its folder.

    Every film kept must exist under ``images`` (default: ``default_images``); a missing
    one stops the import, naming its row.
    """
    if fmt not in READERS:
        raise PneumoError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    table, to = Path(table), Path(to)
    if not table.is_file():
        raise PneumoError(f"table not found: {table} (the {TABLES[fmt]} of the data set)")
    images = Path(images) if images is not None else default_images(fmt, table)
    if not images.is_dir():
        raise PneumoError(f"image folder not found: {images}; point --images at the folder of the films")
    entries = list(READERS[fmt](table, images, rules or ImportRules()))
    summary = ImportSummary()
    kept = []
    for entry in entries:
        if entry.label is None:
            summary.dropped[entry.rule] += 1
        else:
            kept.append(entry)
            summary.written[entry.label] += 1
    missing = [entry for entry in kept if not entry.image.is_file()]
    if missing:
        first = missing[0]
        raise _bad_cell(
            table,
            first.row,
            first.column,
            f"file not found: {first.image} ({len(missing)} of {len(kept)} films missing); unpack the "
            "whole set, or point --images at the folder of its films",
        )
    _refuse_doubled(table, kept)
    columns = ManifestColumns()
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([columns.path, columns.label, columns.patient])
    for entry in kept:
        writer.writerow(
            [Path(os.path.relpath(entry.image, to.parent)).as_posix(), entry.label, entry.patient]
        )
    # whole or not at all: a manifest cut short by a full disk would train on part of the set
    write_text_atomically(to, text.getvalue())
    return summary


def _refuse_doubled(table: Path, kept: Sequence[Entry]) -> None:
    """Stop at a film the table lists twice: it would be one film with two rows in the manifest."""
    first: dict[Path, int] = {}
    for entry in kept:
        if entry.image in first:
            raise _bad_cell(
                table,
                entry.row,
                entry.column,
                f"{entry.image.name} is listed again (also row {first[entry.image]})",
            )
        first[entry.image] = entry.row
