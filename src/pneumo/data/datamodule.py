"""The LightningDataModule: folders of X-rays in, batches of normalised tensors out."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Sampler

from pneumo.data.cache import DecodedImages, cache_mode, decoded_images
from pneumo.data.dataset import (
    DEFAULT_CLASSES,
    EpochSampler,
    Sample,
    XrayDataset,
    collate_skipping_bad,
    label_conflicts,
    scan_split,
    split_dirs,
)
from pneumo.data.manifest import Manifest, check_patients_apart, check_split_classes, load_manifest
from pneumo.data.preprocess import to_model_input, to_unit
from pneumo.data.split import (
    check_validation_patients,
    known_patient_name,
    patient_folds,
    patient_id,
    patient_split,
)
from pneumo.data.transforms import BatchAugment
from pneumo.errors import PneumoError, printable

log = logging.getLogger(__name__)

BALANCE_MODES = ("loss", "sampler", "none")


# The largest data.image_size: ResNet18 gains nothing past the films' own detail, and the
# decoded cache grows with its square (2048 px: 4 MB a film, 21 GB for the Kaggle train split).
MAX_IMAGE_SIZE = 2048


class XrayDataModule(L.LightningDataModule):
    """Chest X-rays in the Kaggle/Kermany layout.

    ``root`` holds ``train/`` (and optionally ``val/`` and ``test/``), each with one folder
    per class; a folder holding the class folders directly is used as ``train/``. When
    ``val/`` is missing or has fewer than ``min_val_images`` images (the official one has
    16), validation is carved out of train by patient, stratified, with ``seed``.

    With ``manifest`` (the ``data.manifest`` block: file, columns, labels) the films come from
    a CSV table instead, its paths relative to its own folder, which then stands for ``root``;
    its patient column decides the patient split, and its optional split column
    (train/val/test) replaces the carved validation.

    The settings are taken as given: pneumo-train checks them before the DataModule is built
    (``pneumo.training.settings``); what only the files can tell is checked as they are listed.

    With ``folds`` (k-fold cross-validation) the training films are dealt into ``folds``
    folds by patient, stratified by class, with ``seed`` (``split.patient_folds``); fold
    ``fold`` validates and the others train. ``val/``, ``val_fraction`` and a manifest's
    validation rows are then not used.
    """

    def __init__(
        self,
        root: str,
        classes: Sequence[str] = DEFAULT_CLASSES,
        positive_class: str = "PNEUMONIA",
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        val_holdout: str = "random",
        min_val_images: int = 100,
        balance: str = "loss",
        cache: str | bool = "auto",
        cache_dir: str = "~/.cache/pneumo",
        on_bad_image: str = "fail",
        augment: dict[str, Any] | None = None,
        seed: int = 42,
        manifest: Mapping[str, Any] | None = None,
        folds: int | None = None,
        fold: int | None = None,
    ) -> None:
        super().__init__()
        self.classes = list(classes)
        self.manifest = Manifest.from_config(manifest)
        if self.manifest is not None:
            self.manifest.check_labels(self.classes)
        # what recorded file paths are relative to: the data root, or the manifest's folder
        self.root = self.manifest.folder if self.manifest is not None else Path(root)
        self.positive_class = positive_class
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.val_holdout = val_holdout
        self.min_val_images = min_val_images
        self.balance = balance
        self.cache = cache_mode(cache)
        self.cache_dir = cache_dir
        self.on_bad_image = on_bad_image
        self.augment = BatchAugment(**(augment or {}))
        self.seed = seed
        self.folds, self.fold = folds, fold
        self.train_set: XrayDataset | None = None
        self._split: tuple[list[Sample], list[Sample]] | None = None
        # where the validation films come from, and their patients (manifests), for check_validation
        self._val_source = ""
        self._val_carved = True
        self._val_patients: list[str] = []
        self._val_from_split_column = False
        self.val_set: XrayDataset | None = None

    # -- discovering files -------------------------------------------------------------
    @property
    def positive_index(self) -> int:
        """The positive class's place in ``classes``: the network's output column for it."""
        return self.classes.index(self.positive_class)

    def check_root(self) -> None:
        """Fail early, naming the path, when the data root (or manifest) is missing or of the wrong kind."""
        if self.manifest is not None:
            if not self.manifest.file.is_file():
                raise PneumoError(
                    f"data.manifest.file={self.manifest.file} is not a file; point it at a CSV manifest "
                    "(pneumo-data import writes one), or set data.manifest.file=null to read class "
                    "folders under data.root"
                )
            return
        if self.root.exists() and not self.root.is_dir():
            raise PneumoError(
                f"data.root={self.root} is a file, not a folder; point it at the folder that holds "
                "train/ (or the class folders)"
            )
        if not self.root.is_dir():
            raise PneumoError(
                f"data root not found: {self.root.resolve()}. Download the Kaggle 'Chest X-Ray "
                "Images (Pneumonia)' archive (doi:10.17632/rscbjbr9sj.2) and set "
                "data.root=DIR (DIR/train/NORMAL, DIR/train/PNEUMONIA), or try the bundled "
                "sample: pneumo-train experiment=quickstart"
            )

    def split_samples(self) -> tuple[list[Sample], list[Sample]]:
        """The (train, validation) samples: ``val/`` if big enough, else a patient split.

        Listed and split once: the checkpoint's record, the class weights and ``setup`` all
        read the same lists.
        """
        if self._split is None:
            self._split = self._list_and_split()
        return self._split

    def check_validation(self) -> None:
        """Refuse, before any film is decoded, a validation split that cannot measure the model:
        a class with fewer than ``MIN_VAL_PATIENTS`` patients in it (a single film or child would
        set the threshold, the AUROC and best.ckpt). ``pneumo-train`` calls it before the run
        starts, and ``setup`` again for runs built in code."""
        train, val = self.split_samples()
        if self.manifest is not None:
            patients = self._val_patients
            source = f"the validation rows of {self.manifest.file}"
            remedies = (
                "add patients, or name validation rows of more patients in the manifest's split column "
                "(data.manifest.columns.split)"
            )
            if not self._val_from_split_column:
                remedies = "raise data.val_fraction, or " + remedies
        else:
            patients = [patient_id(s.path) for s in val]
            source = self._val_source
            remedies = (
                "add patients, or give a val/ folder with films of more patients (used when it holds at "
                "least data.min_val_images films), or import the films as a manifest with a split column"
            )
            if self._val_carved:
                remedies = "raise data.val_fraction, or " + remedies
        if self.folds is not None:
            source = f"fold {self.fold} of data.folds={self.folds}"
            remedies = "use fewer data.folds (each fold validates on patients of its own), or add patients"
        check_validation_patients([s.label for s in val], patients, self.classes, source, remedies)

    def _list_and_split(self) -> tuple[list[Sample], list[Sample]]:
        self.check_root()
        if self.manifest is not None:
            return self._split_manifest(self.manifest)
        folders = split_dirs(self.root)
        train = scan_split(folders["train"], self.classes)
        val_dir = folders.get("val")
        if self.folds is not None:
            self._check_patient_names(train)
            return self._fold_split(train, None, f"{val_dir} is not used" if val_dir else "")
        if val_dir is not None:
            val = scan_split(val_dir, self.classes)
            if len(val) >= self.min_val_images:
                conflicts = label_conflicts([*train, *val], self.classes)
                if conflicts:
                    raise PneumoError(conflicts[0])
                _refuse_shared_patients(train, val, folders["train"], val_dir)
                self._val_source, self._val_carved = str(val_dir), False
                return train, val
            log.info(
                "%s has %d images (< data.min_val_images=%d): validating on a patient-level "
                "split of train instead",
                val_dir,
                len(val),
                self.min_val_images,
            )
        self._check_patient_names(train)
        train_idx, val_idx = patient_split(
            [s.path for s in train], [s.label for s in train], self.val_fraction, self.seed, self.val_holdout
        )
        self._val_source = f"the validation films carved from {folders['train']}"
        self._val_carved = True
        return [train[i] for i in train_idx], [train[i] for i in val_idx]

    def _split_manifest(self, manifest: Manifest) -> tuple[list[Sample], list[Sample]]:
        """A manifest's train and validation rows: its val rows if it has any, else a patient split.

        Test rows are left out; an explicit split is used as it is, whatever its size, but a
        patient with both train and val rows stops it.
        """
        listing = load_manifest(manifest, self.classes)
        train, patients = listing.split("train")
        check_split_classes(train, self.classes, "training", manifest.file)
        val, val_patients = listing.split("val")
        if self.folds is not None:
            if manifest.columns.patient is None:
                self._check_patient_names(train)
            unused = f"the {len(val)} validation rows of {manifest.file} are not used" if val else ""
            return self._fold_split(train, patients, unused)
        if val:
            check_split_classes(val, self.classes, "validation", manifest.file)
            check_patients_apart(listing, manifest.file, "train", "val")
            self._val_patients, self._val_from_split_column = val_patients, True
            return train, val
        if manifest.columns.patient is None:
            self._check_patient_names(train)
        elif self.val_holdout == "earliest":
            raise PneumoError(
                "data.val_holdout=earliest orders patients by the numbers in Kermany file names, which a "
                f"manifest's patient column ({manifest.columns.patient!r}) does not follow; use "
                "data.val_holdout=random, or name the validation rows in a split column"
            )
        train_idx, val_idx = patient_split(
            [s.path for s in train],
            [s.label for s in train],
            self.val_fraction,
            self.seed,
            self.val_holdout,
            patients=patients,
        )
        self._val_patients = [patients[i] for i in val_idx]
        return [train[i] for i in train_idx], [train[i] for i in val_idx]

    def _fold_split(
        self, samples: list[Sample], patients: list[str] | None, unused: str
    ) -> tuple[list[Sample], list[Sample]]:
        """Fold ``fold`` of ``samples`` validates, the other folds train (``patient_folds``)."""
        assert self.folds is not None and self.fold is not None  # set together (__init__)
        paths, labels = [s.path for s in samples], [s.label for s in samples]
        assigned = patient_folds(paths, labels, self.folds, self.seed, patients)
        log.info(
            "cross-validation: fold %d of data.folds=%d validates (data.seed=%d)%s",
            self.fold,
            self.folds,
            self.seed,
            f"; {unused}" if unused else "",
        )
        val_index = [i for i, fold in enumerate(assigned) if fold == self.fold]
        self._val_patients = [patients[i] if patients else patient_id(samples[i].path) for i in val_index]
        chosen = set(val_index)
        train = [s for i, s in enumerate(samples) if i not in chosen]
        return train, [samples[i] for i in val_index]

    def _check_patient_names(self, samples: list[Sample]) -> None:
        """Say when file names carry no patient ID: each such file then counts as its own patient."""
        unknown = [s.path for s in samples if not known_patient_name(s.path)]
        if not unknown:
            return
        if self.val_holdout == "earliest":
            raise PneumoError(
                f"data.val_holdout=earliest orders patients by the number in Kermany file names, but "
                f"{len(unknown)} of {len(samples)} files have none (e.g. {unknown[0]}); use "
                "data.val_holdout=random"
            )
        log.warning(
            "%d of %d file names carry no patient ID (e.g. %s): each counts as its own patient, so "
            "films of one patient may sit on both sides of the validation split",
            len(unknown),
            len(samples),
            printable(str(unknown[0])),
        )

    def class_counts(self) -> list[int]:
        """Images per class in the training set (after the validation split)."""
        labels = self.train_set.labels if self.train_set else [s.label for s in self.split_samples()[0]]
        return [labels.count(c) for c in range(len(self.classes))]

    def class_weights(self) -> torch.Tensor | None:
        """Inverse-frequency loss weights when ``balance == 'loss'``, else ``None``."""
        if self.balance != "loss":
            return None
        counts = torch.tensor(self.class_counts(), dtype=torch.float32).clamp(min=1)
        return counts.sum() / (len(counts) * counts)

    # -- Lightning hooks -----------------------------------------------------------------
    def _decoded_images(self, samples: list[Sample]) -> DecodedImages | None:
        """One cache for train and validation together: the same files whatever the split."""
        return decoded_images(
            [s.path for s in samples],
            self.image_size,
            self.cache,
            self.cache_dir,
            threads=max(2, self.num_workers),
        )

    def _dataset(self, samples: list[Sample], decoded: DecodedImages | None) -> XrayDataset:
        cache = decoded if decoded is not None else False
        return XrayDataset(samples, self.image_size, cache, self.on_bad_image)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.train_set is None:
            # trainer.fast_dev_run checks the wiring on a batch: it measures nothing, keeps nothing
            if self.trainer is None or not getattr(self.trainer, "fast_dev_run", False):
                self.check_validation()
            train, val = self.split_samples()
            log.info("train: %d images, validation: %d images", len(train), len(val))
            # mixed classes in every validation batch, so the sanity check sees both
            val = list(val)  # a copy: split_samples() keeps its lists as they were split
            random.Random(self.seed).shuffle(val)
            decoded = self._decoded_images([*train, *val])
            self.train_set = self._dataset(train, decoded)
            self.val_set = self._dataset(val, decoded)
            self.train_set.check_classes_left(self.classes, "training")
            self.val_set.check_classes_left(self.classes, "validation")

    def _loader(
        self, dataset: XrayDataset, sampler: Sampler | None = None, drop_last: bool = False
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_skipping_bad,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() builds the training set first"
        weights = None
        if self.balance == "sampler":
            counts = self.class_counts()
            weights = [1.0 / max(counts[label], 1) for label in self.train_set.labels]
        # BatchNorm cannot train on a last batch of one image; that image is drawn again in
        # another epoch, since the order changes every epoch. Under DDP each process loads
        # ceil(n / processes) images of the epoch (Lightning pads the last shares).
        per_process = math.ceil(len(self.train_set) / self._processes())
        single = per_process % self.batch_size == 1
        if single:
            log.info(
                "%d training images per process at data.batch_size=%d leave a last batch of one "
                "image: it is left out of each epoch",
                per_process,
                self.batch_size,
            )
        return self._loader(self.train_set, EpochSampler(len(self.train_set), self.seed, weights), single)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() builds the validation set first"
        processes = self._processes()
        if processes == 1:
            return self._loader(self.val_set)
        # Each film to exactly one process: Lightning's own DistributedSampler would repeat films
        # to even out the shares, and count them twice in the figures and the threshold.
        if len(self.val_set) < processes:
            raise PneumoError(
                f"{len(self.val_set)} validation images cannot give each of {processes} processes one; "
                "use fewer processes (trainer.devices, trainer.num_nodes) or more validation images"
            )
        assert self.trainer is not None  # more than one process: a Trainer runs them
        shares = UnrepeatedDistributedSampler(
            self.val_set, num_replicas=processes, rank=self.trainer.global_rank, shuffle=False
        )
        return self._loader(self.val_set, shares)

    def _processes(self) -> int:
        """How many processes share each epoch's images (DDP); 1 outside a Trainer."""
        return self.trainer.world_size if self.trainer is not None else 1

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Augmenting and normalising on the device after transfer: one batched resampling
        # instead of one per image, and 4x less to copy than float input.
        images, labels, seeds = batch
        if images.numel() == 0:  # every file of the batch was bad and skipped
            return images, labels
        x = to_unit(images)
        if self.trainer is not None and self.trainer.training:
            generator = torch.Generator().manual_seed(int(seeds[0]))
            x = self.augment(x, generator)
        return to_model_input(x), labels


def _refuse_shared_patients(train: list[Sample], val: list[Sample], train_dir: Path, val_dir: Path) -> None:
    """Stop when a patient has films in both ``train/`` and ``val/``: the threshold, calibration
    and best epoch would be chosen partly on what the network learnt. Patients are read from file
    names that follow the archive's patterns (``known_patient_name``); other names tell nothing."""
    trained = {patient_id(s.path): s.path for s in train if known_patient_name(s.path)}
    shared = [
        (s.path, trained[patient_id(s.path)])
        for s in val
        if known_patient_name(s.path) and patient_id(s.path) in trained
    ]
    if shared:
        (film, twin), more = shared[0], len(shared) - 1
        raise PneumoError(
            f"{len(shared)} films of {val_dir} belong to patients with films in {train_dir} (e.g. "
            f"{film} and {twin}{f', and {more} more' if more else ''}): validation would measure what "
            "the network learnt; move those patients' films to one side, or remove val/ to carve "
            "validation from train by patient (data.val_fraction)"
        )
