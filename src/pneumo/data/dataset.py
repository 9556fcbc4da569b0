"""Finding X-rays on disk and serving them as uint8 tensors, decoded once and cached."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from pneumo.data.cache import DecodedImages, decode_in_memory
from pneumo.data.preprocess import IMAGE_EXTENSIONS, BadImageError, load_image
from pneumo.errors import PneumoError, printable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One image file and its class index."""

    path: Path
    label: int


# The class folders a data root holds unless data.classes says otherwise.
DEFAULT_CLASSES = ("NORMAL", "PNEUMONIA")
# The split folders of the Kaggle/Kermany layout: DATA_ROOT/train, DATA_ROOT/val, DATA_ROOT/test.
SPLITS = ("train", "val", "test")


# The rules of what counts as a film of a class, shared by training, verify, eval and predict:
# a file with an accepted extension (preprocess.IMAGE_EXTENSIONS), not hidden, and not inside a
# hidden or system folder. Everything else met is ignored and reported, with its reason.

# Folders that file managers, NAS boxes, archivers and operating systems add inside any folder
# (thumbnails, recycle bins, resource forks): their files are never films of the class around
# them. Any folder whose name starts with "." (.thumbnails, .Trash-1000, .@__thumb) or "@"
# (@eaDir, @Recycle, @Recently-Snapshot) counts too.
SYSTEM_FOLDERS = frozenset(
    {"__macosx", "$recycle.bin", "#recycle", "system volume information", "lost+found"}
)

# Why a file is not a film, as reports and log lines give it.
IN_HIDDEN_FOLDER = "in hidden or system folders (thumbnails, trash, NAS metadata)"
OTHER_FORMAT = "of an image format pneumo does not read"
HIDDEN_FILE = "hidden (a name starting with '.')"
NOT_A_FILM = "not image files"
OUTSIDE_CLASSES = "outside the class folders"


def is_hidden_folder(path: Path) -> bool:
    """Whether a sub-folder holds no films of its class: hidden, or added by a system (``SYSTEM_FOLDERS``)."""
    name = Path(path).name
    return name.startswith((".", "@")) or name.lower() in SYSTEM_FOLDERS


def accepted_formats() -> str:
    """The accepted extensions, for messages: ``.bmp .dcm .jpeg ...``."""
    return " ".join(sorted(IMAGE_EXTENSIONS))


def is_image_file(path: Path) -> bool:
    """True for files with an accepted extension (``IMAGE_EXTENSIONS``); hidden files
    (.DS_Store, ._x.jpg) are not.

    Every other file (Thumbs.db, desktop.ini, notes.txt, x.webp) is ignored, and reported with
    ``ignore_reason``, by training, evaluation, prediction and ``pneumo-data verify`` alike.
    """
    is_file = path.is_file() or (path.is_symlink() and not path.is_dir())  # a broken link is a bad file
    return is_file and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def ignore_reason(path: Path) -> str:
    """Why ``path`` (a file that ``is_image_file`` refuses) is not a film."""
    if path.name.startswith("."):
        return HIDDEN_FILE
    suffix = path.suffix.lower()
    if suffix in Image.registered_extensions() or suffix in (".heic", ".heif", ".avif", ".jxl"):
        return f"{OTHER_FORMAT} ({suffix})"
    return NOT_A_FILM


def summarize_ignored(ignored: Mapping[Path, str], examples: int = 3) -> str:
    """``ignored`` (file -> reason) in one line: the count, by reason, with a few examples each."""
    by_reason: dict[str, list[Path]] = defaultdict(list)
    for path, reason in sorted(ignored.items()):
        by_reason[reason].append(path)
    parts = []
    for reason, paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(printable(str(p)) for p in paths[:examples])
        more = f" and {len(paths) - examples} more" if len(paths) > examples else ""
        parts.append(f"{len(paths)} {reason}: {shown}{more}")
    return f"{len(ignored)} files ignored ({'; '.join(parts)}); films are {accepted_formats()} files"


@dataclass
class FolderWalk:
    """Everything under a folder that is not a folder, and the folders that could not be read.

    ``files`` includes broken links and links that loop: with an image extension they are
    bad images (named by the decoder), never silently dropped. ``hidden`` are the files inside
    hidden or system sub-folders (``is_hidden_folder``), which are never films of the folder.
    """

    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)

    def ignored(self) -> dict[Path, str]:
        """The files of the walk that are not films, each with its reason."""
        found = {path: IN_HIDDEN_FOLDER for path in self.hidden}
        found.update({path: ignore_reason(path) for path in self.files if not is_image_file(path)})
        return found


def _hidden_files(folder: Path) -> list[Path]:
    """Every file under a hidden or system folder (links not followed: they are not walked)."""
    found: list[Path] = []
    for current, _, names in os.walk(folder, onerror=lambda err: None):
        found.extend(Path(current) / name for name in names)
    return found


def walk_folder(folder: Path) -> FolderWalk:
    """List ``folder`` recursively, following links to folders, each real folder once.

    A link back to a folder already walked (a loop) is not entered again, so the walk ends.
    Hidden and system sub-folders (``is_hidden_folder``) are not walked as part of the folder:
    their files go to ``hidden``.
    """
    walk, seen, pending = FolderWalk(), set(), [Path(folder)]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(current) as entries:
                found = sorted(Path(entry.path) for entry in entries)
        except OSError as err:
            walk.unreadable.append((current, _reason(err)))
            continue
        for path in found:
            if path.is_dir() and is_hidden_folder(path):
                walk.hidden.extend(_hidden_files(path))
            elif path.is_dir():
                pending.append(path)
            else:
                walk.files.append(path)
    walk.files.sort()
    walk.unreadable.sort()
    walk.hidden.sort()
    return walk


def _content_key(path: Path) -> str | None:
    """SHA-1 of a file's bytes; ``None`` when it cannot be read (a bad image, reported elsewhere)."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def label_conflict_groups(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The films listed under two classes or more: groups of samples holding the same bytes
    (in two class folders, or under two labels of a manifest), whatever their names.

    Only files of equal size are read and hashed, so a split of thousands of films costs
    little more than its listing.
    """
    by_size: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        try:
            by_size[sample.path.stat().st_size].append(sample)
        except OSError:
            continue
    by_content: dict[str, list[Sample]] = defaultdict(list)
    for same_size in by_size.values():
        if len({s.label for s in same_size}) < 2:
            continue
        for sample in same_size:
            key = _content_key(sample.path)
            if key is not None:
                by_content[key].append(sample)
    groups = [sorted(g, key=lambda s: s.path) for g in by_content.values() if len({s.label for s in g}) > 1]
    return sorted(groups, key=lambda g: g[0].path)


def conflict_message(group: Sequence[Sample], classes: Sequence[str]) -> str:
    """The one line for a film listed under two classes (``label_conflict_groups``)."""
    films = " = ".join(f"{s.path} ({classes[s.label]})" for s in group)
    return (
        f"one film under two classes: {films} hold the same bytes; a film has one label: remove the "
        "copy in the wrong class"
    )


def label_conflicts(samples: Sequence[Sample], classes: Sequence[str]) -> list[str]:
    """``conflict_message`` for every film listed under two classes."""
    return [conflict_message(group, classes) for group in label_conflict_groups(samples)]


@dataclass
class FilmListing:
    """The films among paths given to a command (``list_films``), and what was not taken."""

    files: list[Path] = field(default_factory=list)
    ignored: dict[Path, str] = field(default_factory=dict)
    # files named on their own that are not films pneumo reads: the user asked for them by name,
    # so each gets an error row, not a skip
    refused: dict[Path, str] = field(default_factory=dict)


def list_films(paths: Iterable[str | Path]) -> FilmListing:
    """Expand folders (recursively, by the rules of class folders) into films; named files are
    kept as given (a bad or missing one becomes an error row), unless their extension is not an
    accepted one: those are ``refused`` with their reason, and every other file met in a folder
    is ``ignored`` with its reason.

    A folder that cannot be read stops with one line: its films would otherwise go missing
    from the output without a word.
    """
    listing = FilmListing()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            walk = walk_folder(path)
            if walk.unreadable:
                raise PneumoError(unreadable_message(*walk.unreadable[0], what="folder"))
            listing.files.extend(p for p in walk.files if is_image_file(p))
            listing.ignored.update(walk.ignored())
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            listing.files.append(path)
        else:
            listing.refused[path] = ignore_reason(path)
    return listing


def split_dirs(root: Path) -> dict[str, Path]:
    """The split folders of a data root, by split name, in the order train, val, test.

    A root with ``train/`` has the splits of ``SPLITS`` that are present; a root without it
    is a folder of class folders and is itself the ``train`` split.
    """
    root = Path(root)
    if not root.is_dir():
        raise PneumoError(f"data root not found: {root}")
    if not (root / "train").is_dir():
        return {"train": root}
    return {name: root / name for name in SPLITS if (root / name).is_dir()}


@dataclass
class SplitListing:
    """A split folder read by the training rules.

    ``samples`` are the images training uses, ``ignored`` the files it leaves out (not
    images, of another format, hidden, in hidden or system folders, or not inside a class
    folder), each with its reason in ``reasons``, and ``problems`` one message for each folder
    problem that stops training: an unknown, missing, empty or unreadable class folder, or
    one film in two class folders.
    """

    samples: list[Sample] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    reasons: dict[Path, str] = field(default_factory=dict)

    def ignore(self, found: Mapping[Path, str]) -> None:
        for path, reason in found.items():
            self.ignored.append(path)
            self.reasons[path] = reason

    def ignored_in_classes(self) -> dict[Path, str]:
        """The ignored files that lie inside the class folders: what training reports."""
        return {p: r for p, r in self.reasons.items() if r != OUTSIDE_CLASSES}


def _reason(err: OSError) -> str:
    """An OS error in a few words: 'permission denied', 'not a directory'."""
    if isinstance(err, PermissionError):
        return "permission denied"
    return (err.strerror or str(err)).lower()


def _unreadable(folder: Path) -> str:
    """Why ``folder`` cannot be listed ('' when it can)."""
    try:
        with os.scandir(folder):
            return ""
    except OSError as err:
        return _reason(err)


def unreadable_message(folder: Path, reason: str, what: str = "class folder") -> str:
    """The one line training, verify and predict give for a folder they cannot list."""
    return f"cannot read {what} {folder}: {reason}; give read access to it, or move it out"


def list_split(split_dir: Path, classes: Sequence[str]) -> SplitListing:
    """Read a split folder (one folder per class) as training does, collecting every problem.

    Class folders are searched recursively, in fixed class order; hidden folders beside the
    class folders are skipped.
    """
    listing = SplitListing()
    if not split_dir.is_dir():
        listing.problems.append(f"data folder not found: {split_dir}")
        return listing
    reason = _unreadable(split_dir)
    if reason:
        listing.problems.append(unreadable_message(split_dir, reason, "data folder"))
        return listing
    entries = sorted(split_dir.iterdir())
    listing.ignore({p: OUTSIDE_CLASSES for p in entries if p.is_file()})
    for hidden in (p for p in entries if p.is_dir() and is_hidden_folder(p)):
        listing.ignore({p: IN_HIDDEN_FOLDER for p in _hidden_files(hidden)})
    folders = [p for p in entries if p.is_dir() and not is_hidden_folder(p)]
    for folder in (p for p in folders if p.name not in classes):
        if folder.name in SPLITS:
            train_dir = split_dir / "train"
            hint = f" (a split folder: a data root with {folder.name}/ needs its training images in "
            hint += f"{train_dir})"
        elif folder.name.strip() != folder.name:
            # a space at either end is invisible in a path: quote the name
            name = folder.name
            hint = f" (its name is {name!r}, with a space at an end: rename it to {name.strip()!r})"
        else:
            hint = ""
        listing.problems.append(
            f"unknown class folder {folder}: pneumo sorts films into two classes, "
            f"{' and '.join(classes)} (data.classes); move it out of {split_dir}, or rename the "
            f"two class folders in data.classes{hint}"
        )
    for label, name in enumerate(classes):
        _list_class(split_dir / name, label, listing)
    listing.problems.extend(label_conflicts(listing.samples, classes))
    return listing


def _list_class(class_dir: Path, label: int, listing: SplitListing) -> None:
    """Add one class folder's images, ignored files and problems to ``listing``."""
    if not class_dir.is_dir():
        listing.problems.append(f"class folder missing: {class_dir} (every class in data.classes needs one)")
        return
    reason = _unreadable(class_dir)
    if reason:
        listing.problems.append(unreadable_message(class_dir, reason))
        return
    walk = walk_folder(class_dir)
    for folder, reason in walk.unreadable:
        listing.problems.append(unreadable_message(folder, reason, "folder"))
    images = [p for p in walk.files if is_image_file(p)]
    ignored = walk.ignored()
    listing.ignore(ignored)
    if not images:
        held = (
            f"; it holds {summarize_ignored(ignored)}"
            if ignored
            else f" (films are {accepted_formats()} files)"
        )
        listing.problems.append(f"class folder has no images: {class_dir}{held}")
    listing.samples.extend(Sample(path, label) for path in images)


def scan_split(split_dir: Path, classes: Sequence[str]) -> list[Sample]:
    """List the images of an ImageFolder-style directory, in fixed class order.

    Every sub-folder must be one of ``classes`` and every class must hold at least one
    image; files that are not images (Thumbs.db, .DS_Store, notes) are ignored. The first
    problem ``list_split`` finds stops with a ``PneumoError`` naming the folder.
    """
    listing = list_split(split_dir, classes)
    if listing.problems:
        raise PneumoError(listing.problems[0])
    ignored = listing.ignored_in_classes()
    if ignored:
        log.warning("%s: %s", printable(str(split_dir)), summarize_ignored(ignored))
    return listing.samples


class XrayDataset(Dataset):
    """Images as ``1 x S x S`` uint8 tensors with their labels.

    ``cache`` is where decoded images come from: a ``DecodedImages`` holding (at least) these
    samples, in memory or on disk (see ``pneumo.data.cache``; the DataModule makes one for
    train and validation together); ``True`` decodes these samples into memory now, in
    parallel threads (224 px: 50 KB an image, 250 MB for the 5216-image train split);
    ``False`` decodes each file at every access. Epochs from a cache cost only augmentation
    and the model. Files that fail to decode are skipped with a warning
    (``on_bad_image="skip"``) or stop with their path (``"fail"``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        cache: bool | DecodedImages = True,
        on_bad_image: str = "fail",
        threads: int = 2,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.on_bad_image = on_bad_image
        self.bad_files: list[str] = []
        self.skipped: list[Sample] = []
        self.decoded: DecodedImages | None = None
        self._rows: list[int] = []
        if cache is True:
            cache = decode_in_memory([str(s.path) for s in self.samples], image_size, threads)
        if isinstance(cache, DecodedImages):
            self._read_from(cache)

    def _read_from(self, decoded: DecodedImages) -> None:
        """Serve images from ``decoded``; drop (or fail on) the samples it could not decode."""
        if decoded.image_size != self.image_size:
            raise ValueError(f"a cache of {decoded.image_size} px for a {self.image_size} px dataset")
        bad = [s for s in self.samples if str(s.path) in decoded.bad]
        if bad:
            self._report_bad([decoded.bad[str(s.path)] for s in bad])
            self.skipped = bad
            self.samples = [s for s in self.samples if str(s.path) not in decoded.bad]
        self._rows = [decoded.row(s.path) for s in self.samples]
        self.decoded = decoded

    def _report_bad(self, messages: list[str]) -> None:
        if self.on_bad_image == "fail":
            more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
            raise BadImageError(
                f"{messages[0]}{more}; fix, replace or remove the file, or set data.on_bad_image=skip"
            )
        self.bad_files.extend(messages)
        for message in messages:
            log.warning("skipping bad image %s", message)

    def check_classes_left(self, classes: Sequence[str], split: str) -> None:
        """Stop when skipping bad files has emptied a class: a one-class model would look perfect."""
        left = set(self.labels)
        for label, name in enumerate(classes):
            skipped = sum(s.label == label for s in self.skipped)
            if skipped and label not in left:
                raise PneumoError(
                    f"no {name} images left in the {split} split: data.on_bad_image=skip left out "
                    f"all {skipped} of its files as unreadable (listed in the warnings above); replace "
                    "them (pneumo-data verify DATA_ROOT lists every bad file)"
                )

    @property
    def labels(self) -> list[int]:
        """Class index of every sample, in order."""
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        """``(image, label, seed)`` for ``index`` or ``(index, seed)`` (seed -1 when none)."""
        index, seed = key if isinstance(key, tuple) else (key, -1)
        sample = self.samples[index]
        if self.decoded is not None:
            return self.decoded.image(self._rows[index]), sample.label, seed
        try:
            return load_image(sample.path, self.image_size), sample.label, seed
        except BadImageError as err:
            self._report_bad([str(err)])
            return None  # dropped by collate_skipping_bad


def collate_skipping_bad(
    batch: list[tuple[torch.Tensor, int, int] | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``(images, labels, seeds)``, leaving out samples that failed to decode (``None``)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return (
            torch.empty(0, dtype=torch.uint8),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long),
        )
    images, labels, seeds = zip(*kept)
    return torch.stack(images), torch.tensor(labels), torch.tensor(seeds)


class EpochSampler(Sampler):
    """Shuffled (or class-weighted) order that depends only on ``seed`` and the epoch.

    Yields ``(index, seed)`` pairs: one seed is drawn for every sample, but only one per
    batch is used. ``XrayDataModule.on_after_batch_transfer`` seeds the augmentation of a
    whole batch with the seed of its first sample, and the other seeds are never read
    (``BatchAugment`` still makes one random draw per image, from that one generator).
    So the order of epoch k and the augmentation of each of its batches are fixed by
    (seed, k) and the batch size: a run resumed from a checkpoint continues exactly as the
    uninterrupted run, whatever the worker count. Drawing one seed per batch instead would
    change the results of every seeded run, so the draws stay as they are.
    Lightning calls ``set_epoch`` before every epoch.
    """

    def __init__(self, num_samples: int, seed: int, weights: Sequence[float] | None = None) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        return iter(zip(order.tolist(), seeds.tolist()))
