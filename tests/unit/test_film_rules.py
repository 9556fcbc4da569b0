"""One rule set for what is a film of a class, shared by training, verify and predict, and a
validation split that can measure: every case refused or reported, never silently wrong.

- a table naming a column twice (a CSV reader would keep the last copy without a word);
- one film under two labels (the same bytes in two class folders, or in two manifest rows);
- films in hidden and system folders, files of formats pneumo does not read: reported;
- a validation split with too few patients of a class: refused before any film is decoded.
"""

import csv
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pneumo.cli.data import main as data_main
from pneumo.cli.predict import main as predict_main
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.dataset import list_films
from pneumo.data.importers import import_table
from pneumo.data.manifest import Manifest
from pneumo.data.preprocess import IMAGE_EXTENSIONS, preprocessing_spec
from pneumo.data.split import MIN_VAL_PATIENTS
from pneumo.data.verify import verify
from pneumo.errors import PneumoError
from tests.helpers import SAMPLE, sample_files, write_csv


@pytest.fixture
def film_folder(tmp_path: Path) -> Path:
    """The 16 bundled films in one folder, as a manifest's table would list them."""
    folder = tmp_path / "films"
    folder.mkdir()
    for label in ("NORMAL", "PNEUMONIA"):
        for path in sample_files(label):
            shutil.copy(path, folder / path.name)
    return folder


def _rows(folder: Path) -> list[list[str]]:
    return [
        [p.name, p.name.startswith("NORMAL") and "NORMAL" or "PNEUMONIA", p.stem]
        for p in sorted(folder.iterdir())
    ]


# -- a column named twice --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        ["path", "label", "label"],
        ["path", "label", "patient", "path"],
        ["path", "label", "patient ", "patient"],
    ],
    ids=["label twice", "path twice", "patient twice, one with a space"],
)
def test_a_manifest_naming_a_column_twice_is_refused_naming_file_and_column(film_folder, capsys, header):
    rows = [[*row, *row[1:]][: len(header)] for row in _rows(film_folder)]
    manifest = write_csv(film_folder / "labels.csv", header, rows)
    name = next(n.strip() for n in header if [h.strip() for h in header].count(n.strip()) > 1)
    said = f"{manifest} row 1: column {name!r} appears 2 times"
    with pytest.raises(PneumoError, match=f"^{said}"):
        XrayDataModule("unused", manifest={"file": str(manifest)}).split_samples()
    with pytest.raises(SystemExit) as stop:
        data_main(["verify", str(manifest)])
    assert stop.value.code == 1 and said in capsys.readouterr().out


def test_an_imported_table_naming_a_column_twice_is_refused(tmp_path):
    table = tmp_path / "stage_2_train_labels.csv"
    table.write_text("patientId,x,y,width,height,Target,Target\nabc,,,,,0,1\n")
    (tmp_path / "stage_2_train_images").mkdir()
    with pytest.raises(PneumoError, match=r"stage_2_train_labels.csv row 1: column 'Target' appears 2 times"):
        import_table("rsna", table, tmp_path / "manifest.csv")
    assert not (tmp_path / "manifest.csv").exists()


# -- one film, two labels ---------------------------------------------------------------------------
def test_the_same_film_under_two_labels_in_a_manifest_is_refused_naming_the_rows(film_folder, capsys):
    rows = _rows(film_folder)
    normal = sample_files("NORMAL")[0]
    shutil.copy(normal, film_folder / "copy_of_a_normal_film.jpeg")
    rows.append(["copy_of_a_normal_film.jpeg", "PNEUMONIA", "someone_else"])
    manifest = write_csv(film_folder / "labels.csv", ["path", "label", "patient"], rows)
    said = r"labels.csv rows \d+, 18: one film under two classes: .*copy_of_a_normal_film.jpeg \(PNEUMONIA\)"
    with pytest.raises(PneumoError, match=said):
        XrayDataModule("unused", manifest={"file": str(manifest)}).split_samples()
    assert any("one film under two classes" in e for e in verify(Manifest(manifest)).manifest_errors)


def test_the_same_film_in_train_and_in_val_under_another_label_stops_training(tmp_path):
    root = tmp_path / "xray"
    for split, films in (("train", slice(0, 4)), ("val", slice(4, 8))):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True)
            for path in sample_files(label)[films]:
                shutil.copy(path, root / split / label / path.name)
    shutil.copy(sample_files("NORMAL")[0], root / "val" / "PNEUMONIA" / "person9999_virus_1.jpeg")
    with pytest.raises(PneumoError, match=r"one film under two classes: .*train/NORMAL/.* \(NORMAL\) = "):
        XrayDataModule(str(root), min_val_images=4).split_samples()
    assert not verify(root).as_dict()["ok"]  # and verify calls it a cross-split duplicate


# -- what is not a film: reported, with count and examples ------------------------------------------
def _messy_class_folder(folder: Path) -> dict[str, Path]:
    """Films pneumo must not take as NORMAL films, each of another kind."""
    planted = {
        "thumbnail": folder / ".thumbnails" / "normal" / "a.png",
        "trash": folder / ".Trash-1000" / "files" / "b.jpeg",
        "synology": folder / "@eaDir" / "c.jpeg" / "SYNOPHOTO_THUMB_XL.jpg",
        "webp": folder / "IM-9999-0001.webp",
        "gif": folder / "IM-9998-0001.gif",
    }
    for path in planted.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(sample_files("PNEUMONIA")[0]).convert("L").resize((64, 64)).save(path)
    return planted


def test_training_reports_what_it_leaves_out_of_a_class_folder(tiny_root, caplog):
    planted = _messy_class_folder(tiny_root / "train" / "NORMAL")
    with caplog.at_level(logging.WARNING):
        train, val = XrayDataModule(str(tiny_root), val_fraction=0.25).split_samples()
    used = {s.path for s in train + val}
    assert not used & set(planted.values()) and len(used) == 16
    [warning] = [r.getMessage() for r in caplog.records if "files ignored" in r.getMessage()]
    assert warning.startswith(f"{tiny_root / 'train'}: 5 files ignored (3 in hidden or system folders")
    assert "1 of an image format pneumo does not read (.webp)" in warning and str(planted["webp"]) in warning
    assert "films are .bmp .dcm .jpeg .jpg .png .tif .tiff files" in warning
    report = verify(tiny_root)
    assert {str(p) for p in planted.values()} <= set(report.ignored_files) and not report.folder_errors
    assert report.ignored_reasons["in hidden or system folders (thumbnails, trash, NAS metadata)"] == 3


def test_a_class_folder_of_other_formats_names_them(tiny_root):
    normal = tiny_root / "train" / "NORMAL"
    for path in normal.iterdir():
        Image.open(path).convert("L").resize((64, 64)).save(path.with_suffix(".webp"))
        path.unlink()
    said = r"class folder has no images: .*NORMAL; it holds 8 files ignored \(8 of an image format pneumo"
    with pytest.raises(PneumoError, match=said + r" does not read \(.webp\)"):
        XrayDataModule(str(tiny_root), val_fraction=0.25).split_samples()


def test_predict_takes_films_by_the_same_rules_and_says_what_it_left_out(tmp_path, trained_ckpt, capsys):
    folder = tmp_path / "films"
    folder.mkdir()
    for path in sample_files("NORMAL")[:2]:
        shutil.copy(path, folder / path.name)
    planted = _messy_class_folder(folder)
    shutil.copy(sample_files("NORMAL")[0], folder / "again.jpeg")  # one film given twice
    listing = list_films([folder])
    assert sorted(p.name for p in listing.files) == sorted(
        ["again.jpeg", *(p.name for p in sample_files("NORMAL")[:2])]
    )
    assert set(listing.ignored) == set(planted.values())
    out = tmp_path / "p.csv"
    predict_main(["--ckpt", str(trained_ckpt), str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    [ignored] = [line for line in err.splitlines() if line.startswith("not predicted: ")]
    assert ignored.startswith("not predicted: 5 files ignored (3 in hidden or system folders")
    [twice] = [line for line in err.splitlines() if "given more than once" in line]
    assert "again.jpeg" in twice and sample_files("NORMAL")[0].name in twice
    assert len(out.read_text().splitlines()) == 1 + 3


def test_a_multi_page_tiff_is_refused_everywhere_like_a_multi_frame_dicom(tmp_path, trained_ckpt, capsys):
    pages = [Image.open(p).convert("L").resize((64, 64)) for p in sample_files("NORMAL")[:2]]
    tiff = tmp_path / "IM-9999-0001.tiff"
    pages[0].save(tiff, save_all=True, append_images=pages[1:])
    with pytest.raises(SystemExit) as stop:
        predict_main(["--ckpt", str(trained_ckpt), str(tiff), "--out", str(tmp_path / "p.json")])
    assert stop.value.code == 1
    assert "a TIFF with 2 pages; pneumo reads single-frame films" in (tmp_path / "p.json").read_text()
    spec = preprocessing_spec(64)["decode"]
    assert spec["formats"] == sorted(IMAGE_EXTENSIONS) and "multi-page TIFF" in spec["frames"]


# -- a validation split that can measure ------------------------------------------------------------
def test_a_carved_validation_of_one_patient_a_class_is_refused_before_decoding(monkeypatch):
    import pneumo.data.datamodule as datamodule

    def no_decoding(*args, **kwargs):
        raise AssertionError("films were decoded before the split was checked")

    monkeypatch.setattr(datamodule, "decoded_images", no_decoding)
    said = (
        r"the validation split cannot measure the model: NORMAL has 1 patient \(1 film\) and PNEUMONIA "
        r"has 1 patient \(1 film\) in the validation films carved from .*sample; each class needs films of "
        rf"at least {MIN_VAL_PATIENTS} patients there .*: raise data.val_fraction, or add patients, or give "
        r"a val/ folder"
    )
    with pytest.raises(PneumoError, match=said):
        XrayDataModule(str(SAMPLE), val_fraction=0.1).setup("fit")
    XrayDataModule(str(SAMPLE), val_fraction=0.25).check_validation()  # two patients a class: measured


def test_a_val_folder_of_one_patient_is_refused(tmp_path):
    root = tmp_path / "xray"
    chosen = {
        ("train", "NORMAL"): sample_files("NORMAL")[3:],
        ("train", "PNEUMONIA"): sample_files("PNEUMONIA")[2:],
        ("val", "NORMAL"): sample_files("NORMAL")[:3],
        ("val", "PNEUMONIA"): sample_files("PNEUMONIA")[:2],  # person1946's two films: one child
    }
    for (split, label), files in chosen.items():
        (root / split / label).mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy(path, root / split / label / path.name)
    with pytest.raises(
        PneumoError, match=r"PNEUMONIA has 1 patient \(2 films\) in .*val; .*: add patients, or give"
    ):
        XrayDataModule(str(root), min_val_images=5).check_validation()


def test_a_manifest_split_column_of_one_film_a_class_is_refused(film_folder):
    validating = (sample_files("NORMAL")[0].name, sample_files("PNEUMONIA")[7].name)
    rows = [[*row, "val" if row[0] in validating else "train"] for row in _rows(film_folder)]
    manifest = write_csv(film_folder / "labels.csv", ["path", "label", "patient", "fold"], rows)
    block = {"file": str(manifest), "columns": {"split": "fold"}}
    said = (
        r"NORMAL has 1 patient \(1 film\) and PNEUMONIA has 1 patient \(1 film\) in the validation rows of "
        r".*labels.csv; .*: add patients, or name validation rows of more patients in the manifest's split"
    )
    with pytest.raises(PneumoError, match=said):
        XrayDataModule("unused", manifest=block).check_validation()


def test_a_file_named_alone_that_is_not_a_film_gets_an_error_row(tmp_path, trained_ckpt, capsys):
    webp = tmp_path / "film.webp"
    Image.open(sample_files("NORMAL")[0]).save(webp)  # Pillow decodes it, pneumo does not take it
    film = sample_files("NORMAL")[1]
    out = tmp_path / "p.csv"
    with pytest.raises(SystemExit) as stopped:
        predict_main(["--ckpt", str(trained_ckpt), str(film), str(webp), "--out", str(out)])
    assert stopped.value.code == 1  # not a silent skip: the user named it
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows[film.name]["error"] == "" and rows["film.webp"]["label"] == ""
    assert ".webp" in rows["film.webp"]["error"]


def test_a_val_folder_sharing_patients_with_train_is_refused(tmp_path):
    root = tmp_path / "xray"
    for split in ("train", "val"):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True)
            for path in sample_files(label):
                shutil.copy(path, root / split / label / path.name)  # val/ repeats train/
    datamodule = XrayDataModule(str(root), min_val_images=4)
    with pytest.raises(PneumoError, match=r"belong to patients with films in .*train"):
        datamodule.split_samples()
