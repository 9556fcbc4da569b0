"""pneumo-data verify reads folders by the rules training uses, so the two always agree.

Each planted case changes a small real data root once; verify must then report what
training does with it: an error for every folder problem that stops training, an ignored
file for every file training leaves out, a bad-file row for every image it cannot read.
"""

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pneumo.cli.data import main as data_main
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.dataset import Sample, XrayDataset
from pneumo.data.preprocess import BadImageError
from pneumo.data.verify import verify
from pneumo.errors import PneumoError
from tests.helpers import sample_files, verify_command

ROOT_USER = os.geteuid() == 0
needs_non_root = pytest.mark.skipif(ROOT_USER, reason="root reads files and folders without permission")


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    """DATA_ROOT/train/{NORMAL,PNEUMONIA} with two real X-rays each."""
    root = tmp_path / "xray"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for path in sample_files(label)[:2]:
            shutil.copy(path, root / "train" / label / path.name)
    return root


def _text(path: Path, text: str = "scanner notes") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _film(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_files("NORMAL")[0], path)
    return path


def _empty(folder: Path) -> Path:
    for path in folder.iterdir():
        path.unlink()
    return folder


def _removed(folder: Path) -> Path:
    shutil.rmtree(folder)
    return folder


def _no_train_folder(root: Path) -> Path:
    (root / "train").rename(root / "val")
    return root / "val"


def _linked(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _locked(path: Path) -> Path:
    path.chmod(0)
    return path


def _case(name: str, plant, outcome: str, expected: str, marks=()):
    """One planted case: ``plant(root)`` returns the planted path; ``outcome`` is what verify
    makes of it (ignored, error, bad file), ``expected`` the message it must give."""
    return pytest.param(plant, outcome, expected, id=name, marks=marks)


CASES = [
    _case("notes.txt in a class folder", lambda r: _text(r / "train/NORMAL/notes.txt"), "ignored", ""),
    _case("Thumbs.db", lambda r: _text(r / "train/PNEUMONIA/Thumbs.db"), "ignored", ""),
    _case("hidden file beside the classes", lambda r: _text(r / "train/.DS_Store"), "ignored", ""),
    _case("film outside the class folders", lambda r: _film(r / "train/IM-9999-0001.jpeg"), "ignored", ""),
    _case(
        "unknown class folder",
        lambda r: _film(r / "train/COVID/IM-9999-0001.jpeg").parent,
        "error",
        r"unknown class folder .*COVID: pneumo sorts films into two classes, NORMAL and PNEUMONIA",
    ),
    _case(
        "empty class folder",
        lambda r: _empty(r / "train/NORMAL"),
        "error",
        r"class folder has no images: .*NORMAL",
    ),
    _case(
        "class folder holding only notes",
        lambda r: _text(_empty(r / "train/NORMAL") / "notes.txt").parent,
        "error",
        r"class folder has no images: .*NORMAL",
    ),
    _case(
        "missing class folder",
        lambda r: _removed(r / "train/PNEUMONIA"),
        "error",
        r"class folder missing: .*PNEUMONIA",
    ),
    _case(
        "val/ without train/",
        _no_train_folder,
        "error",
        r"unknown class folder .*val: .*a split folder",
    ),
    _case(
        "unreadable class folder",
        lambda r: _locked(r / "train/NORMAL"),
        "error",
        r"cannot read class folder .*NORMAL: permission denied",
        marks=needs_non_root,
    ),
    _case(
        "broken link",
        lambda r: _linked(r / "train/NORMAL/IM-9999-0001.jpeg", r / "gone.jpeg"),
        "bad file",
        r"^broken link to .*gone.jpeg \(its target is missing, or the link loops\)",
    ),
    _case(
        "link that loops",
        lambda r: _linked(r / "train/NORMAL/IM-9999-0001.jpeg", r / "train/NORMAL/IM-9999-0001.jpeg"),
        "bad file",
        r"^broken link to .*IM-9999-0001.jpeg",
    ),
    _case(
        "unreadable film",
        lambda r: _locked(next((r / "train/PNEUMONIA").iterdir())),
        "bad file",
        "permission denied",
        marks=needs_non_root,
    ),
    # films of the other class where file managers and NAS boxes keep thumbnails and trash
    _case(
        "film in .thumbnails/", lambda r: _other_film(r / "train/NORMAL/.thumbnails/x.jpeg"), "ignored", ""
    ),
    _case(
        "film in .Trash-1000/",
        lambda r: _other_film(r / "train/NORMAL/.Trash-1000/files/x.jpeg"),
        "ignored",
        "",
    ),
    _case(
        "film in .@__thumb/", lambda r: _other_film(r / "train/PNEUMONIA/.@__thumb/s_x.jpeg"), "ignored", ""
    ),
    _case(
        "film in @eaDir/",
        lambda r: _other_film(r / "train/PNEUMONIA/@eaDir/x.jpeg/SYNOFILE.jpeg"),
        "ignored",
        "",
    ),
    _case("film in __MACOSX/", lambda r: _other_film(r / "train/NORMAL/__MACOSX/x.jpeg"), "ignored", ""),
    _case(
        "film in a hidden folder beside the classes",
        lambda r: _film(r / "train/.cache/x.jpeg"),
        "ignored",
        "",
    ),
    # formats Pillow decodes but pneumo does not read as films: reported, never silently dropped
    _case("a .webp film", lambda r: _converted(r / "train/NORMAL/IM-9999-0001.webp"), "ignored", ""),
    _case("a .gif film", lambda r: _converted(r / "train/PNEUMONIA/person9999_virus_1.gif"), "ignored", ""),
    _case(
        "one film in both class folders",
        lambda r: _copy_of(r / "train/PNEUMONIA", r / "train/NORMAL/IM-9999-0001.jpeg"),
        "error",
        r"one film under two classes: .*IM-9999-0001.jpeg \(NORMAL\) = .* \(PNEUMONIA\) hold the same bytes",
    ),
    _case(
        "one film in both class folders, under the same name",
        lambda r: _copy_of(r / "train/NORMAL", r / "train/PNEUMONIA" / sample_files("NORMAL")[0].name),
        "error",
        r"one film under two classes: .* \(NORMAL\) = .* \(PNEUMONIA\)",
    ),
    _case(
        "a multi-page TIFF",
        lambda r: _pages(r / "train/NORMAL/IM-9999-0001.tif", "TIFF", 3),
        "bad file",
        r"^a TIFF with 3 pages; pneumo reads single-frame films",
    ),
    _case(
        "an animated PNG",
        lambda r: _pages(r / "train/PNEUMONIA/person9999_virus_1.png", "PNG", 2),
        "bad file",
        r"^a PNG with 2 frames; pneumo reads single-frame films",
    ),
]


def _other_film(path: Path) -> Path:
    """A film of the other class (PNEUMONIA), where a NORMAL folder's tools put it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_files("PNEUMONIA")[-1], path)
    return path


def _converted(path: Path) -> Path:
    """A real film saved in another format (by its extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(sample_files("NORMAL")[-1]).convert("L").resize((256, 256)).save(path)
    return path


def _copy_of(source_folder: Path, path: Path) -> Path:
    """The first film of ``source_folder`` again, at ``path`` in the other class folder."""
    shutil.copy(sorted(source_folder.iterdir())[0], path)
    return path


def _pages(path: Path, fmt: str, n: int) -> Path:
    """A file of ``n`` films in one (multi-page TIFF, animated PNG): pneumo never picks one."""
    films = [Image.open(f).convert("L").resize((256, 256)) for f in sample_files("NORMAL")[:n]]
    films[0].save(path, format=fmt, save_all=True, append_images=films[1:])
    return path


def _verify_command(root: Path, capsys, *options: str) -> tuple[int, dict]:
    """Run ``pneumo-data verify ROOT --json`` in this process: (exit status, report)."""
    status, out = verify_command(capsys, str(root), "--json", *options)
    return status, json.loads(out)


def _training_samples(root: Path) -> list[Sample]:
    """The films a training run on ``root`` reads (train and validation), or its PneumoError."""
    train, val = XrayDataModule(str(root), image_size=32, val_fraction=0.25).split_samples()
    return train + val


@pytest.mark.parametrize(("plant", "outcome", "expected"), CASES)
def test_verify_agrees_with_training(small_root, capsys, plant, outcome, expected):
    planted = plant(small_root)
    status, report = _verify_command(small_root, capsys)
    if outcome == "error":
        with pytest.raises(PneumoError) as stopped:
            _training_samples(small_root)
        assert str(stopped.value) in report["folder_errors"]  # the very message training stops with
        assert any(str(planted) in e and re.search(expected, e) for e in report["folder_errors"])
        assert status == 1 and not report["ok"] and report["errors"]
        return
    samples = _training_samples(small_root)
    files = [s.path for s in samples]
    assert report["folder_errors"] == []
    if outcome == "ignored":
        assert str(planted) in report["ignored_files"] and planted not in files
        assert str(planted) not in [bad["path"] for bad in report["bad_files"]]
        assert status == 0 and report["ok"]
        # verify counted exactly the films training reads
        counted = Counter({label: n for counts in report["counts"].values() for label, n in counts.items()})
        assert counted == Counter(path.parent.name for path in files)
    else:
        [bad] = report["bad_files"]
        assert bad["path"] == str(planted) and re.search(expected, bad["reason"])
        assert status == 1 and not report["ok"]
        with pytest.raises(BadImageError, match=planted.name):
            XrayDataset(samples, 32)  # training stops on the file, naming it


def test_verify_takes_the_class_list(tmp_path, capsys):
    root = tmp_path / "xray"
    for label, source in (("healthy", "NORMAL"), ("sick", "PNEUMONIA")):
        for path in sample_files(source)[:2]:
            _film(root / label / path.name).write_bytes(path.read_bytes())
    status, report = _verify_command(root, capsys, "--classes", "healthy,sick")
    assert status == 0 and report["counts"] == {"train": {"healthy": 2, "sick": 2}}
    assert report["classes"] == ["healthy", "sick"]

    status, report = _verify_command(root, capsys)  # the default: NORMAL, PNEUMONIA
    assert status == 1 and report["counts"] == {}
    assert [e.split(":")[0] for e in report["folder_errors"]] == [
        f"unknown class folder {root / 'healthy'}",
        f"unknown class folder {root / 'sick'}",
        "class folder missing",
        "class folder missing",
    ]
    assert verify(root, ["healthy", "sick"]).as_dict()["ok"]


def test_verify_names_a_missing_root_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        data_main(["verify", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == f"error: data root not found: {tmp_path / 'nowhere'}\n"
