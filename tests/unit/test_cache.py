"""The decoded-image cache: memory and disk give the same batches; a disk cache is built once."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.data.cache import DecodedImages, cache_mode, decode_in_memory, decoded_images
from pneumo.data.datamodule import XrayDataModule
from pneumo.data.preprocess import BadImageError
from pneumo.errors import PneumoError
from tests.helpers import SAMPLE, sample_files


def _datamodule(root: Path, cache: str, cache_dir: Path, **kwargs) -> XrayDataModule:
    datamodule = XrayDataModule(
        str(root),
        image_size=32,
        batch_size=4,
        val_fraction=0.25,
        cache=cache,
        cache_dir=str(cache_dir),
        **kwargs,
    )
    datamodule.setup("fit")
    return datamodule


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, labels) for images, labels, _ in loader]


def _cache_folders(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and ".tmp-" not in p.name)


def test_disk_cache_gives_the_batches_of_the_memory_cache(tmp_path, tiny_root):
    memory = _datamodule(tiny_root, "memory", tmp_path / "unused")
    disk = _datamodule(tiny_root, "disk", tmp_path / "cache")
    assert memory.train_set.decoded.file is None and disk.train_set.decoded.file is not None
    assert not (tmp_path / "unused").exists()
    for loader in ("train_dataloader", "val_dataloader"):
        expected, got = _batches(getattr(memory, loader)()), _batches(getattr(disk, loader)())
        assert len(expected) == len(got) > 0
        for (images_m, labels_m), (images_d, labels_d) in zip(expected, got):
            assert images_d.dtype == torch.uint8 and torch.equal(images_m, images_d)
            assert torch.equal(labels_m, labels_d)
    stored = np.load(_cache_folders(tmp_path / "cache")[0] / "images.npy", mmap_mode="r")
    assert stored.shape == (16, 32, 32) and not stored.flags.writeable


def test_second_run_reuses_the_disk_cache_and_a_changed_file_rebuilds_it(tmp_path, tiny_root, caplog):
    caplog.set_level(logging.INFO, logger="pneumo.data.cache")
    cache_dir = tmp_path / "cache"
    first = _datamodule(tiny_root, "disk", cache_dir)
    assert first.train_set.decoded.decoded == 16
    # another seed splits differently, but train + validation are the same files
    second = _datamodule(tiny_root, "disk", cache_dir, seed=7)
    assert second.train_set.decoded.decoded == 0
    assert "nothing to decode" in caplog.text
    assert len(_cache_folders(cache_dir)) == 1

    film = sorted((tiny_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    os.utime(film, ns=(time.time_ns(), film.stat().st_mtime_ns + 10**9))
    assert _datamodule(tiny_root, "disk", cache_dir).train_set.decoded.decoded == 16
    assert len(_cache_folders(cache_dir)) == 2

    (tiny_root / "train" / "NORMAL" / "added.jpeg").write_bytes(film.read_bytes())
    added = _datamodule(tiny_root, "disk", cache_dir)
    assert added.train_set.decoded.decoded == 17
    assert len(_cache_folders(cache_dir)) == 3


def test_another_image_size_is_another_cache(tmp_path):
    paths = [str(p) for p in sample_files("NORMAL")[:2]]
    small = decoded_images(paths, 32, "disk", tmp_path)
    large = decoded_images(paths, 48, "disk", tmp_path)
    assert small.decoded == large.decoded == 2 and small.file != large.file
    assert large.image(0).shape == (1, 48, 48)


def test_a_film_replaced_with_its_size_and_time_kept_rebuilds_the_cache(tmp_path):
    """``cp -p`` of another film of the same size: size and mtime alone would serve stale pixels."""
    from PIL import Image

    films = [tmp_path / name for name in ("a.png", "b.png")]
    for film, seed in zip(films, (1, 2)):
        noise = np.random.default_rng(seed).integers(0, 256, (40, 40), dtype=np.uint8)
        Image.fromarray(noise).save(film, compress_level=0)  # stored: the size is the shape's
    before = films[0].stat()
    first = decoded_images([str(films[0])], 32, "disk", tmp_path / "cache")
    films[0].write_bytes(films[1].read_bytes())
    os.utime(films[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    after = films[0].stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    second = decoded_images([str(films[0])], 32, "disk", tmp_path / "cache")
    assert second.decoded == 1 and second.file != first.file
    assert torch.equal(second.image(0), decode_in_memory([str(films[1])], 32).image(0))
    assert not torch.equal(second.image(0), first.image(0))


def test_bad_images_are_skipped_alike_from_a_reused_disk_cache(tmp_path, tiny_root, caplog):
    bad = sorted((tiny_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    bad.write_text("not an X-ray")
    cache_dir = tmp_path / "cache"
    for decoded in (16, 0):  # built, then reused
        caplog.clear()
        datamodule = _datamodule(tiny_root, "disk", cache_dir, on_bad_image="skip")
        sets = (datamodule.train_set, datamodule.val_set)
        assert sets[0].decoded.decoded == decoded
        assert [s.path for d in sets for s in d.skipped] == [bad]
        assert sum(len(d) for d in sets) == 15
        assert f"skipping bad image {bad}" in caplog.text
    with pytest.raises(BadImageError, match=rf"{bad}: .*data.on_bad_image=skip"):
        _datamodule(tiny_root, "disk", cache_dir, on_bad_image="fail")


def test_a_worker_gets_the_disk_cache_by_name_not_by_copy(tmp_path):
    paths = [str(p) for p in sample_files("NORMAL")]
    on_disk = decoded_images(paths, 64, "disk", tmp_path)
    in_memory = decode_in_memory(paths, 64)
    sent = pickle.dumps(on_disk)
    assert len(sent) < in_memory.nbytes / 10
    received: DecodedImages = pickle.loads(sent)
    for row in range(len(paths)):
        assert torch.equal(received.image(row), in_memory.image(row))


def test_a_cache_that_cannot_fit_stops_before_decoding(tmp_path):
    paths = [str(p) for p in sample_files("NORMAL")]
    huge = 1_000_000  # 8 films of 10^12 pixels: 8 TB
    too_big_for_memory = r"data.cache=memory: 8 images at 1000000 px take .* use data.cache=disk"
    with pytest.raises(PneumoError, match=too_big_for_memory):
        decoded_images(paths, huge, "memory", tmp_path)
    too_big_for_disk = rf"data.cache=disk: .* but {tmp_path} has .* free; set data.cache_dir"
    for mode in ("disk", "auto"):
        with pytest.raises(PneumoError, match=too_big_for_disk):
            decoded_images(paths, huge, mode, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no cache, not even a partial one


def test_cache_modes():
    assert [cache_mode(v) for v in ("auto", "memory", "disk", "off", True, False)] == [
        "auto",
        "memory",
        "disk",
        "off",
        "auto",
        "off",
    ]
    with pytest.raises(PneumoError, match=r"data.cache must be one of auto, memory, disk, off, got 'ram'"):
        XrayDataModule(str(SAMPLE), cache="ram")
    assert decoded_images([str(p) for p in sample_files("NORMAL")], 32, "off") is None


def _build(paths: list[str], cache_dir: Path, results) -> None:
    """A job that builds (or reuses) the disk cache of ``paths`` and reports what it decoded."""
    images = decoded_images(paths, 32, "disk", cache_dir, threads=1)
    results.put({"decoded": images.decoded, "file": str(images.file), "sum": int(images.pixels.sum())})


def _start_job(paths: list[str], cache_dir: Path, results=None) -> multiprocessing.Process:
    """A forked process running ``_build``: a second job, without a second interpreter's start-up."""
    context = multiprocessing.get_context("fork")
    job = context.Process(target=_build, args=(paths, cache_dir, results or context.Queue()))
    job.start()
    return job


def _linked_films(folder: Path, count: int) -> list[str]:
    """``count`` distinct paths, each a link to one of the bundled films."""
    folder.mkdir()
    films = sample_files("NORMAL") + sample_files("PNEUMONIA")
    paths = []
    for index in range(count):
        link = folder / f"{index:05d}.jpeg"
        link.symlink_to(films[index % len(films)])
        paths.append(str(link))
    return paths


@pytest.mark.slow
def test_concurrent_jobs_decode_once(tmp_path):
    paths = _linked_films(tmp_path / "films", 48)
    results = multiprocessing.get_context("fork").Queue()
    jobs = [_start_job(paths, tmp_path / "cache", results) for _ in range(2)]
    reports = [results.get(timeout=120) for _ in jobs]
    for job in jobs:
        job.join(timeout=30)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert sorted(r["decoded"] for r in reports) == [0, 48]
    assert reports[0]["file"] == reports[1]["file"] and reports[0]["sum"] == reports[1]["sum"] > 0


@pytest.mark.slow
def test_a_killed_build_is_never_used(tmp_path):
    paths = _linked_films(tmp_path / "films", 600)
    cache_dir = tmp_path / "cache"
    builder = _start_job(paths, cache_dir)
    deadline = time.monotonic() + 60
    while not list(cache_dir.glob("*.tmp-*")) and time.monotonic() < deadline and builder.is_alive():
        time.sleep(0.002)
    os.kill(builder.pid, signal.SIGKILL)
    builder.join(timeout=30)
    assert builder.exitcode == -signal.SIGKILL
    left = list(cache_dir.glob("*.tmp-*"))
    assert left and not _cache_folders(cache_dir), "the build finished before it could be killed"

    rebuilt = decoded_images(paths, 32, "disk", cache_dir)
    assert rebuilt.decoded == 600
    assert not any(p.exists() for p in left)
    expected = decode_in_memory(paths[:16], 32)
    for row in range(16):
        assert torch.equal(rebuilt.image(row), expected.image(row))
