"""CSV manifests as a data source, and the importers that write them from public sets' tables.

The tables carry the real column names of NIH ChestX-ray14, RSNA Pneumonia and CheXpert; the
films are the bundled X-rays, shrunk (and, for RSNA, generated DICOM files).
"""

import csv
import json
import os
import re
import shutil
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.artifacts.checkpoint import read_checkpoint, read_meta
from pneumo.cli.data import main as data_main
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.manifest import Manifest, ManifestColumns
from pneumo.data.provenance import validation_samples
from pneumo.data.split import patient_id
from pneumo.data.verify import verify
from pneumo.errors import PneumoError
from pneumo.training.fit import train
from tests.helpers import (
    FAST,
    SAMPLE,
    disk_full,
    make_cfg,
    needs_dev_full,
    sample_files,
    write_csv,
    write_dicom,
)

CLASSES = ("NORMAL", "PNEUMONIA")
NIH_HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "",  # the real file ends its header with a comma
]
RSNA_HEADER = ["patientId", "x", "y", "width", "height", "Target"]
CHEXPERT_HEADER = [
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]


@pytest.fixture(scope="module")
def films() -> dict[str, list[Image.Image]]:
    """The 16 bundled X-rays at 48 px, by class."""
    shrunk = {}
    for label in CLASSES:
        shrunk[label] = []
        for path in sample_files(label):
            with Image.open(path) as image:
                image.draft("L", (96, 96))
                shrunk[label].append(image.convert("L").resize((48, 48)))
    return shrunk


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def nih(tmp_path, films) -> Path:
    """An unpacked NIH ChestX-ray14: Data_Entry_2017.csv, films in images_00N/images/.

    Patients 1-8 have two films each (1-4 No Finding, 5-8 Pneumonia, alone or with Effusion);
    patient 9 has Cardiomegaly|Effusion only.
    """
    root, rows = tmp_path / "nih", []
    for i, image in enumerate(films["NORMAL"] + films["PNEUMONIA"]):
        patient, follow_up = i // 2 + 1, i % 2
        name = f"{patient:08d}_{follow_up:03d}.png"
        _save(image, root / f"images_{1 + patient // 5:03d}" / "images" / name)
        finding = "No Finding" if patient <= 4 else ("Pneumonia|Effusion" if follow_up else "Pneumonia")
        rows.append([name, finding, follow_up, patient, 58, "M", "PA", 2682, 2749, 0.143, 0.143, ""])
    _save(films["NORMAL"][0].rotate(90), root / "images_002" / "images" / "00000009_000.png")
    rows.append(
        ["00000009_000.png", "Cardiomegaly|Effusion", 0, 9, 81, "F", "AP", 2500, 2048, 0.168, 0.168, ""]
    )
    return write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, rows)


@pytest.fixture
def nih_manifest(nih, tmp_path) -> Path:
    """The NIH table imported, by the default rule, into a manifest in another folder."""
    manifest = tmp_path / "work" / "nih.csv"
    data_main(["import", "--format", "nih", str(nih), "--to", str(manifest)])
    return manifest


def test_nih_import_follows_the_findings_rule(nih, tmp_path, capsys):
    nih_manifest = tmp_path / "work" / "nih.csv"
    data_main(["import", "--format", "nih", str(nih), "--to", str(nih_manifest)])
    rows = _rows(nih_manifest)
    assert list(rows[0]) == ["path", "label", "patient"]
    assert Counter(r["label"] for r in rows) == {"NORMAL": 8, "PNEUMONIA": 8}
    assert all((nih_manifest.parent / r["path"]).is_file() for r in rows)  # relative to its folder
    assert rows[0] == {"path": "../nih/images_001/images/00000001_000.png", "label": "NORMAL", "patient": "1"}
    assert {r["patient"] for r in rows if r["label"] == "PNEUMONIA"} == {"5", "6", "7", "8"}
    assert "left out 1: other findings only" in capsys.readouterr().out

    data_main(
        ["import", "--format", "nih", str(nih), "--to", str(nih_manifest), "--other-findings", "NORMAL"]
    )
    assert _rows(nih_manifest)[-1]["label"] == "NORMAL" and len(_rows(nih_manifest)) == 17


def test_rsna_import_keeps_one_row_per_patient_and_verify_decodes_its_dicom(tmp_path):
    pytest.importorskip("pydicom")
    root = tmp_path / "rsna"
    ids = [str(uuid.UUID(int=n)) for n in range(1, 5)]
    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1))
    for n, patient in enumerate(ids):
        (root / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
        write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", np.roll(ramp, 8 * n, axis=1))
    rows = [
        [ids[0], 264, 152, 213, 379, 1],  # two boxes: one film
        [ids[0], 562, 152, 256, 453, 1],
        [ids[1], 323, 577, 160, 104, 1],
        [ids[2], "", "", "", "", 0],
        [ids[3], "", "", "", "", 0],
    ]
    table = write_csv(root / "stage_2_train_labels.csv", RSNA_HEADER, rows)
    manifest = root / "rsna.csv"
    data_main(["import", "--format", "rsna", str(table), "--to", str(manifest)])
    written = _rows(manifest)
    assert [r["patient"] for r in written] == ids
    assert [r["label"] for r in written] == ["PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL"]
    assert written[0]["path"] == f"stage_2_train_images/{ids[0]}.dcm"

    report = verify(Manifest(manifest))
    assert not report.errors and report.modes == {"DICOM": 4} and report.patients == 4
    assert report.counts == {"train": {"NORMAL": 2, "PNEUMONIA": 2}}

    write_csv(table, RSNA_HEADER, [*rows, [ids[0], "", "", "", "", 0]])
    with pytest.raises(
        PneumoError, match=r"stage_2_train_labels.csv row 7, column 'Target': 0 disagrees with row 2"
    ):
        data_main.__wrapped__(["import", "--format", "rsna", str(table), "--to", str(manifest)])


@pytest.fixture
def chexpert(tmp_path, films) -> Path:
    """CheXpert-v1.0-small/train.csv and its films: one patient per Pneumonia value, and a lateral."""
    root = tmp_path / "chexpert" / "CheXpert-v1.0-small"
    cases = [("1.0", "Frontal"), ("0.0", "Frontal"), ("-1.0", "Frontal"), ("", "Frontal"), ("1.0", "Lateral")]
    rows = []
    for n, (pneumonia, view) in enumerate(cases, start=1):
        path = f"CheXpert-v1.0-small/train/patient{n:05d}/study1/view1_{view.lower()}.jpg"
        _save(films["PNEUMONIA"][n], root.parent / path)
        cells = dict.fromkeys(CHEXPERT_HEADER, "")
        cells.update(
            {"Path": path, "Sex": "Female", "Age": 68, "Frontal/Lateral": view, "Pneumonia": pneumonia}
        )
        cells.update({"AP/PA": "AP" if view == "Frontal" else "", "Support Devices": "1.0"})
        rows.append(list(cells.values()))
    return write_csv(root / "train.csv", CHEXPERT_HEADER, rows)


@pytest.mark.parametrize(
    ("options", "expected", "left_out"),
    [
        ([], ["PNEUMONIA", "NORMAL"], ["not frontal", "not mentioned (blank)", "uncertain (-1)"]),
        (
            ["--uncertain", "NORMAL"],
            ["PNEUMONIA", "NORMAL", "NORMAL"],
            ["not frontal", "not mentioned (blank)"],
        ),
        (
            ["--uncertain", "PNEUMONIA", "--blank", "NORMAL", "--views", "all"],
            ["PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA"],
            [],
        ),
    ],
    ids=["default", "uncertain-normal", "all-mapped"],
)
def test_chexpert_import_rules(chexpert, tmp_path, capsys, options, expected, left_out):
    manifest = tmp_path / "chexpert.csv"
    data_main(["import", "--format", "chexpert", str(chexpert), "--to", str(manifest), *options])
    rows = _rows(manifest)
    assert [r["label"] for r in rows] == expected
    assert [r["patient"] for r in rows] == [f"patient{n:05d}" for n in range(1, len(expected) + 1)]
    assert all((manifest.parent / r["path"]).is_file() for r in rows)
    assert re.findall(r"left out 1: (.*)", capsys.readouterr().out) == left_out


def test_import_refuses_another_formats_option_a_missing_film_and_a_doubled_name(
    chexpert, nih, tmp_path, capsys
):
    with pytest.raises(SystemExit) as stop:
        data_main(["import", "--format", "chexpert", str(chexpert), "--to", str(tmp_path / "m.csv"),
                   "--other-findings", "NORMAL"])  # fmt: skip
    assert stop.value.code == 2 and "--other-findings applies to --format nih" in capsys.readouterr().err
    (nih.parent / "images_001" / "images" / "00000002_001.png").unlink()
    with pytest.raises(
        PneumoError, match=r"Data_Entry_2017.csv row 5, column 'Image Index': file not found.*1 of 16"
    ):
        data_main.__wrapped__(["import", "--format", "nih", str(nih), "--to", str(tmp_path / "m.csv")])
    shutil.copy(nih.parent / "images_001" / "images" / "00000001_000.png", nih.parent / "00000001_000.png")
    with pytest.raises(PneumoError, match=r"row 2, column 'Image Index': 2 files are named 00000001_000.png"):
        data_main.__wrapped__(["import", "--format", "nih", str(nih), "--to", str(tmp_path / "m.csv")])


@needs_dev_full
def test_import_writes_its_manifest_whole_and_refuses_a_film_listed_twice(nih, nih_manifest):
    before = nih_manifest.read_bytes()
    partial = disk_full(nih_manifest)  # the next write of the manifest meets a full disk
    with pytest.raises(PneumoError, match=r"no space left on device writing .*nih.csv"):
        data_main.__wrapped__(["import", "--format", "nih", str(nih), "--to", str(nih_manifest)])
    assert nih_manifest.read_bytes() == before and not partial.is_symlink()  # never half a manifest

    with open(nih, "a", newline="") as handle:  # the table's row 3 once more, as row 19
        csv.writer(handle).writerow(list(csv.reader(nih.open()))[2])
    with pytest.raises(
        PneumoError, match=r"row 19, column 'Image Index': 00000001_001.png is listed again \(also row 3\)"
    ):
        data_main.__wrapped__(["import", "--format", "nih", str(nih), "--to", str(nih_manifest)])


def _datamodule(manifest: Path, **block) -> XrayDataModule:
    return XrayDataModule(
        "no/such/root", image_size=32, val_fraction=0.25, manifest={"file": str(manifest), **block}
    )


def test_patient_split_reads_the_patient_column(nih_manifest, tmp_path):
    patient_of = {nih_manifest.parent / r["path"]: r["patient"] for r in _rows(nih_manifest)}
    train, val = _datamodule(nih_manifest).split_samples()
    assert len(train) == 12 and len(val) == 4  # one patient of two films per class
    # the file names (00000005_001.png) would make every film its own patient
    assert {patient_of[s.path] for s in train}.isdisjoint(patient_of[s.path] for s in val)
    with pytest.raises(
        PneumoError, match="data.val_holdout=earliest orders patients by the numbers in Kermany"
    ):
        XrayDataModule("x", val_holdout="earliest", manifest={"file": str(nih_manifest)}).split_samples()


def test_manifest_of_the_class_folders_gives_the_folders_split(tmp_path):
    folders = XrayDataModule(str(SAMPLE), image_size=32, val_fraction=0.25).split_samples()
    listed = sorted(folders[0] + folders[1], key=lambda s: (s.label, s.path))  # as the folders list them
    rows = [[os.path.relpath(s.path, tmp_path), CLASSES[s.label], patient_id(s.path)] for s in listed]
    from_manifest = _datamodule(_manifest(tmp_path, rows)).split_samples()
    for by_folder, by_manifest in zip(folders, from_manifest):
        assert [s.path.resolve() for s in by_manifest] == [s.path.resolve() for s in by_folder]
        assert [s.label for s in by_manifest] == [s.label for s in by_folder]


def test_manifest_run_records_its_validation_files_and_resumes_from_moved_data(nih_manifest, tmp_path):
    run = tmp_path / "run"
    # four patients a class, two films each: validating on two of them (one could not measure)
    half = "data.val_fraction=0.5"
    overrides = [*FAST, f"data.manifest.file={nih_manifest}", "trainer.max_epochs=1", half]
    train(make_cfg(run, overrides))
    last = run / "checkpoints" / "last.ckpt"
    meta = read_meta(read_checkpoint(last), last)
    val = XrayDataModule(
        "no/such/root", val_fraction=0.5, manifest={"file": str(nih_manifest)}
    ).split_samples()[1]
    assert meta.val_files == [[Path(s.path).relative_to(nih_manifest.parent).as_posix(), CLASSES[s.label]]
                              for s in val]  # fmt: skip
    assert meta.val_files[0][0].startswith("../nih/images_00")
    assert validation_samples(meta, nih_manifest.parent, last) == val  # pneumo-eval data.split=val
    with pytest.raises(PneumoError, match=r"set data.root to the folder of the run's manifest \(.*nih.csv\)"):
        validation_samples(meta, tmp_path, last)

    # one training film fewer: the same validation split, but another training set
    rows = _rows(nih_manifest)
    in_val = {s.path for s in val}
    dropped = next(r for r in rows if nih_manifest.parent / r["path"] not in in_val)
    fewer = write_csv(
        nih_manifest.with_name("fewer.csv"),
        list(rows[0]),
        [list(r.values()) for r in rows if r is not dropped],
    )
    with pytest.raises(
        PneumoError,
        match=r"the training files under data.manifest.file=.*fewer.csv differ.*7 files now, 8 then",
    ):
        train(
            make_cfg(
                run, [*FAST, f"data.manifest.file={fewer}", "trainer.max_epochs=2", f"ckpt_path={last}", half]
            )
        )

    with pytest.raises(
        PneumoError, match=r"data.manifest.columns=.*'patient': None.*but it was trained with"
    ):
        train(make_cfg(run, [*overrides, f"ckpt_path={last}", "data.manifest.columns.patient=null"]))

    moved = tmp_path / "moved"
    for folder in ("nih", "work"):
        shutil.copytree(tmp_path / folder, moved / folder)
    resumed = [
        *FAST,
        f"data.manifest.file={moved / 'work' / 'nih.csv'}",
        "trainer.max_epochs=2",
        f"ckpt_path={last}",
        half,
    ]
    train(make_cfg(run, resumed))
    assert read_checkpoint(last)["epoch"] == 1


@pytest.fixture
def film_dir(tmp_path, films) -> Path:
    """films/NORMAL_0.png ... films/PNEUMONIA_7.png, for hand-written manifests."""
    folder = tmp_path / "films"
    for label in CLASSES:
        for n, image in enumerate(films[label]):
            _save(image, folder / f"{label}_{n}.png")
    return folder


def _manifest(folder: Path, rows: list[list], header=("path", "label", "patient")) -> Path:
    return write_csv(folder / "labels.csv", list(header), rows)


GOOD = [[f"{label}_{n}.png", label, f"p{label[0]}{n}"] for label in CLASSES for n in range(4)]
BAD_ROWS = {  # what to plant in GOOD, and the message: file row N, column C
    "unknown label": ((1, 1, "maybe"), r"row 3, column 'label': unknown label value 'maybe'"),
    "missing file": ((0, 0, "gone.png"), r"row 2, column 'path': file not found: .*gone.png"),
    "duplicated path": (
        (7, 0, "PNEUMONIA_1.png"),
        r"row 9, column 'path': duplicated path PNEUMONIA_1.png \(also row 7\)",
    ),
    "same film by another path": (
        (6, 0, "../films/PNEUMONIA_1.png"),
        r"row 8, column 'path': duplicated path \.\./films/PNEUMONIA_1.png \(also row 7\)",
    ),
    "empty patient": ((3, 2, " "), r"row 5, column 'patient': empty patient"),
    "absolute path": ((4, 0, "/tmp/x.png"), r"row 6, column 'path': /tmp/x.png is absolute"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_manifest_row_stops_with_file_row_and_column(film_dir, case):
    (row, column, value), message = BAD_ROWS[case]
    rows = [list(r) for r in GOOD]
    rows[row][column] = value
    manifest = _manifest(film_dir, rows)
    with pytest.raises(PneumoError, match="^" + re.escape(str(manifest)) + " " + message):
        _datamodule(manifest).split_samples()


def test_missing_column_and_verify_listing_every_bad_row(film_dir, capsys):
    manifest = _manifest(film_dir, GOOD, header=("path", "diagnosis", "patient"))
    with pytest.raises(
        PneumoError, match=r"labels.csv row 1: no column 'label' \(data.manifest.columns.label\)"
    ):
        _datamodule(manifest).split_samples()
    assert not verify(Manifest(manifest, ManifestColumns(label="diagnosis"))).errors

    rows = [list(r) for r in GOOD]
    for (row, column, value), _ in BAD_ROWS.values():
        rows[row][column] = value
    manifest = _manifest(film_dir, rows)
    report = verify(Manifest(manifest))
    assert len(report.manifest_errors) == len(BAD_ROWS)
    assert report.errors == [f"{len(BAD_ROWS)} manifest problems (training stops on them)"]
    with pytest.raises(SystemExit) as stop:
        data_main(["verify", str(manifest)])
    assert stop.value.code == 1 and "row 5, column 'patient': empty patient" in capsys.readouterr().out


def test_split_column_replaces_the_carved_validation_and_a_shared_patient_stops_it(film_dir):
    folds = ["train", "train", "val", "test"] * 4  # per class: films 0, 1 train, 2 val, 3 test
    rows = [[f"{label}_{n}.png", label, f"p{label[0]}{n}", folds[n]] for label in CLASSES for n in range(4)]
    manifest = _manifest(film_dir, rows, header=("path", "label", "patient", "fold"))
    train, val = _datamodule(manifest, columns={"split": "fold"}).split_samples()
    assert sorted(s.path.name for s in val) == ["NORMAL_2.png", "PNEUMONIA_2.png"]  # 2 < min_val_images: kept
    assert sorted(s.path.name for s in train) == [
        "NORMAL_0.png",
        "NORMAL_1.png",
        "PNEUMONIA_0.png",
        "PNEUMONIA_1.png",
    ]

    rows[2][2] = rows[0][2]  # NORMAL_2 (val) belongs to NORMAL_0's patient (train)
    _manifest(film_dir, rows, header=("path", "label", "patient", "fold"))
    with pytest.raises(
        PneumoError, match=r"labels.csv rows 2 and 4: patient pN0 has films in both train and val"
    ):
        _datamodule(manifest, columns={"split": "fold"}).split_samples()
    report = verify(Manifest(manifest, ManifestColumns(split="fold")))
    assert report.patients_across == {"pN0": ["train", "val"]} and report.patient_source == "column 'patient'"
    assert report.counts == {split: {"NORMAL": 1 + (split == "train"), "PNEUMONIA": 1 + (split == "train")}
                             for split in ("train", "val", "test")}  # fmt: skip


def test_label_map_keeps_drops_and_names_classes(film_dir, tmp_path, capsys):
    values = {"NORMAL": ["0", "0", "0", "-1"], "PNEUMONIA": ["1", "1", "1", "-1"]}
    rows = [[f"{label}_{n}.png", values[label][n], f"p{label[0]}{n}"] for label in CLASSES for n in range(4)]
    manifest = _manifest(film_dir, rows)
    with pytest.raises(PneumoError, match=r"row 2, column 'label': unknown label value '0'"):
        _datamodule(manifest).split_samples()
    labels = {"1": "PNEUMONIA", "0": "NORMAL", "-1": None}
    train, val = _datamodule(manifest, labels=labels).split_samples()
    assert sorted(s.path.name for s in train + val) == [f"{c}_{n}.png" for c in CLASSES for n in range(3)]
    assert all(CLASSES[s.label] == s.path.name.split("_")[0] for s in train + val)
    with pytest.raises(PneumoError, match="data.manifest.labels maps '1' to 'pneumonia', which is not one"):
        _datamodule(manifest, labels={"1": "pneumonia"})

    with pytest.raises(SystemExit) as stop:
        data_main(["verify", str(manifest), "--labels", "1=PNEUMONIA,0=NORMAL,-1=null", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (
        stop.value.code == 0
        and report["dropped_rows"] == 2
        and report["counts"]["train"] == {"NORMAL": 3, "PNEUMONIA": 3}
    )


def test_shipped_config_reads_class_folders_with_the_readers_default_columns(tmp_path):
    block = make_cfg(tmp_path, []).data.manifest
    assert Manifest.from_config(block) is None
    assert ManifestColumns(**block.columns) == ManifestColumns()
    with pytest.raises(PneumoError, match="data.manifest.columns has no key 'diagnosis'"):
        Manifest.from_config({"file": "x.csv", "columns": {"diagnosis": "label"}})
