import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.data.datamodule import XrayDataModule
from pneumo.data.dataset import EpochSampler, XrayDataset, scan_split
from pneumo.data.preprocess import BadImageError, load_image, to_model_input
from pneumo.data.split import patient_id
from pneumo.data.transforms import TTA_VIEWS, BatchAugment, tta_views
from pneumo.errors import PneumoError
from tests.helpers import sample_files, write_dicom


def _datamodule(root, **kwargs) -> XrayDataModule:
    options = {"image_size": 32, "batch_size": 4, "val_fraction": 0.25, **kwargs}
    return XrayDataModule(str(root), **options)


def test_class_order_is_fixed(tiny_root):
    samples = scan_split(tiny_root / "train", ["NORMAL", "PNEUMONIA"])
    assert {s.path.parent.name for s in samples if s.label == 0} == {"NORMAL"}
    assert {s.path.parent.name for s in samples if s.label == 1} == {"PNEUMONIA"}


def test_validation_is_carved_by_patient_and_stratified(tiny_root):
    dm = _datamodule(tiny_root)
    dm.setup("fit")
    train_patients = {patient_id(s.path) for s in dm.train_set.samples}
    val_patients = {patient_id(s.path) for s in dm.val_set.samples}
    assert not train_patients & val_patients
    assert sorted(set(dm.val_set.labels)) == [0, 1]
    assert len(dm.train_set) + len(dm.val_set) == 16


def test_batches_are_normalised_three_channel_float(tiny_root):
    dm = _datamodule(tiny_root)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    images, labels, _ = batch
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 32, 32)
    x, y = dm.on_after_batch_transfer(batch, 0)  # no trainer: not training, no augmentation
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    grey = images.float() / 255
    for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        assert torch.allclose(x[:, c : c + 1] * std + mean, grey, atol=1e-5)  # R = G = B = grey
    assert torch.equal(y, labels)


def test_batch_augmentation_is_seeded_and_identity_when_off():
    images = torch.rand(6, 1, 32, 32)
    off = BatchAugment(scale=(1, 1), degrees=0, translate=0, brightness=0, contrast=0)
    assert torch.allclose(off(images, torch.Generator().manual_seed(0)), images, atol=1e-5)
    on = BatchAugment()
    first = on(images, torch.Generator().manual_seed(1))
    assert torch.equal(first, on(images, torch.Generator().manual_seed(1)))
    assert not torch.allclose(first, on(images, torch.Generator().manual_seed(2)))
    assert first.min() >= 0 and first.max() <= 1


def test_each_film_of_a_batch_gets_its_own_draw():
    film = load_image(sample_files("PNEUMONIA")[0], 64).float().div(255)
    views = BatchAugment()(film.expand(6, -1, -1, -1).clone(), torch.Generator().manual_seed(0))
    # six copies of one real film come out as six different views, not one view six times
    for i in range(6):
        for j in range(i + 1, 6):
            assert (views[i] - views[j]).abs().max() > 0.1, (i, j)


def test_tta_views_start_with_the_untouched_batch():
    images = torch.rand(3, 1, 32, 32)
    views = tta_views(images)
    assert views.shape == (len(TTA_VIEWS) * 3, 1, 32, 32)
    assert torch.allclose(views[:3], images, atol=1e-5)
    for v in range(1, len(TTA_VIEWS)):
        assert not torch.allclose(views[3 * v : 3 * v + 3], images, atol=1e-2)


def test_epoch_order_depends_only_on_seed_and_epoch():
    sampler = EpochSampler(20, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != first
    again = EpochSampler(20, seed=3)
    again.set_epoch(1)
    assert list(again) == first and sorted(i for i, _ in first) == list(range(20))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_any_mode_and_size_becomes_one_grey_channel(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (300, 200), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    image.save(path)
    tensor = load_image(path, 48)
    assert tensor.shape == (1, 48, 48) and tensor.dtype == torch.uint8
    assert tensor.max() > 100  # 16-bit data is stretched, not clipped to black


def test_full_resolution_xray_is_resized():
    path = sample_files("NORMAL")[0]
    assert Image.open(path).size[0] > 1000
    assert load_image(path, 64).shape == (1, 64, 64)


def test_stray_files_are_ignored(tiny_root):
    (tiny_root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tiny_root / "train" / "NORMAL" / "Thumbs.db").write_bytes(b"junk")
    (tiny_root / "train" / ".DS_Store").write_bytes(b"junk")
    samples = scan_split(tiny_root / "train", ["NORMAL", "PNEUMONIA"])
    assert len(samples) == 16


def test_missing_root_names_path_and_quickstart(tmp_path):
    with pytest.raises(PneumoError, match="experiment=quickstart") as err:
        _datamodule(tmp_path / "nowhere").setup("fit")
    assert "nowhere" in str(err.value)


def test_empty_class_folder_is_named(tiny_root):
    for path in (tiny_root / "train" / "NORMAL").iterdir():
        path.unlink()
    with pytest.raises(PneumoError, match=r"class folder has no images: .*NORMAL"):
        _datamodule(tiny_root).setup("fit")


def test_unknown_class_folder_is_named(tiny_root):
    (tiny_root / "train" / "COVID").mkdir()
    with pytest.raises(PneumoError, match=r"unknown class folder .*COVID.*data.classes"):
        _datamodule(tiny_root).setup("fit")


def test_unreadable_image_fails_naming_the_file(tiny_root):
    bad = tiny_root / "train" / "PNEUMONIA" / "person9_bacteria_1.jpeg"
    bad.write_bytes(Image.open(sample_files("PNEUMONIA")[0]).tobytes()[:100])
    with pytest.raises(BadImageError, match=r"person9_bacteria_1\.jpeg.*on_bad_image=skip"):
        _datamodule(tiny_root).setup("fit")


def test_unreadable_image_is_skipped_on_request(tiny_root):
    bad = tiny_root / "train" / "PNEUMONIA" / "person9_bacteria_1.jpeg"
    bad.write_text("not an image")
    dm = _datamodule(tiny_root, on_bad_image="skip")
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 16
    assert any("person9_bacteria_1" in m for m in dm.train_set.bad_files + dm.val_set.bad_files)


def test_uncached_dataset_matches_cached(tiny_root):
    samples = scan_split(tiny_root / "train", ["NORMAL", "PNEUMONIA"])[:3]
    cached = XrayDataset(samples, 32, cache=True)
    lazy = XrayDataset(samples, 32, cache=False)
    for i in range(3):
        assert torch.equal(cached[i][0], lazy[i][0])


def test_val_folder_used_when_large_enough(tiny_root):
    # val/ holds other patients' films: half of the sample's of each class move there
    for label in ("NORMAL", "PNEUMONIA"):
        (tiny_root / "val" / label).mkdir(parents=True)
        for path in sorted((tiny_root / "train" / label).iterdir())[4:]:
            path.rename(tiny_root / "val" / label / path.name)
    dm = _datamodule(tiny_root, min_val_images=8)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 8
    small = _datamodule(tiny_root, min_val_images=100, val_fraction=0.5)
    small.setup("fit")
    assert len(small.train_set) + len(small.val_set) == 8


def test_class_weights_balance_the_loss(tiny_root):
    for path in sorted((tiny_root / "train" / "NORMAL").iterdir())[:4]:
        path.unlink()
    dm = _datamodule(tiny_root, val_fraction=0.5)  # two NORMAL patients to validate on
    dm.setup("fit")
    counts = dm.class_counts()
    weights = dm.class_weights()
    assert counts[0] < counts[1] and weights[0] > weights[1]
    per_class = weights * torch.tensor(counts, dtype=torch.float32)
    assert torch.allclose(per_class[0], per_class[1])  # each class carries the same total weight
    assert _datamodule(tiny_root, balance="none").class_weights() is None


def test_to_model_input_is_channels_last():
    x = to_model_input(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("photometric", "left_is_bright"), [("MONOCHROME2", False), ("MONOCHROME1", True)])
def test_dicom_is_windowed_and_monochrome1_inverted(tmp_path, photometric, left_is_bright):
    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1))  # dark left, bright right in raw values
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    film = write_dicom(tmp_path / "film.dcm", ramp, PhotometricInterpretation=photometric, **window)
    image = load_image(film, 32)[0].float()
    left, right = image[:, :4].mean(), image[:, -4:].mean()
    assert (left > right + 150) if left_is_bright else (right > left + 150)


def test_acquisition_augmentation_is_seeded_and_leaves_old_draws_alone():
    images = torch.rand(8, 1, 32, 32)
    plain = BatchAugment()
    acquisition = BatchAugment(gamma=0.3, blur=0.5, noise=0.02, erase_border=1.0)
    first = acquisition(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, acquisition(images, torch.Generator().manual_seed(3)))
    assert first.min() >= 0 and first.max() <= 1
    assert not torch.allclose(first, plain(images, torch.Generator().manual_seed(3)))
    # erase_border=1: every image has one constant band along an edge
    edges = [first[:, 0, 0, :], first[:, 0, -1, :], first[:, 0, :, 0], first[:, 0, :, -1]]
    constant = torch.stack([(e - e[:, :1]).abs().amax(dim=1) < 1e-6 for e in edges]).any(dim=0)
    assert constant.all()
    # switched off, the new terms draw nothing: a seeded run without them is unchanged
    off = BatchAugment(gamma=0.0, blur=0.0, noise=0.0, erase_border=0.0)
    seeded = torch.Generator().manual_seed
    assert torch.equal(off(images, seeded(4)), plain(images, seeded(4)))
