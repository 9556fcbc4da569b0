"""The decoded-image cache: every film decoded and resized once, kept in memory or on disk.

``data.cache`` says where: ``memory`` (one uint8 array in this process), ``disk`` (a ``.npy``
file of ``N x S x S`` uint8 under ``data.cache_dir``, memory-mapped read-only by every run,
rank and loader worker), ``off`` (files decoded at every access) or ``auto`` (memory when the
cache takes at most a quarter of the available memory, disk otherwise).

A disk cache is one folder, ``CACHE_DIR/<S>px-<key>/`` holding ``images.npy`` and
``samples.json`` (the files, their sizes, modification and status-change times, and the
message of every file that could not be decoded). The key hashes that file list with the image size, the
decode version and the Pillow version, so a changed, added or removed file, or a change to
decoding, makes a new cache. A cache is built under a lock file, into a temporary folder
renamed into place when complete: a killed build leaves only a temporary folder, which the
next builder deletes, and concurrent builders (sweep jobs, DDP ranks) wait for the first
one and then read its result instead of decoding again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import psutil
import torch
from filelock import FileLock, Timeout

from pneumo.artifacts.output import fsync_path, publish
from pneumo.data.preprocess import DECODE_VERSION, BadImageError, load_image
from pneumo.errors import PneumoError

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "disk", "off")
# data.cache=auto keeps the cache in memory while it takes at most this share of the
# available memory: the rest is for PyTorch, the model, batches and loader workers.
AUTO_MEMORY_SHARE = 0.25
# Layout of a cache folder; a different layout is a different key.
CACHE_FORMAT = 2
IMAGES_FILE = "images.npy"
SAMPLES_FILE = "samples.json"


def cache_mode(value: str | bool) -> str:
    """``data.cache`` as one of ``CACHE_MODES``; ``true``/``false`` of older configs mean auto/off."""
    if isinstance(value, bool):  # also YAML's unquoted `off`, which it reads as false
        return "auto" if value else "off"
    if value not in CACHE_MODES:
        raise PneumoError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {value!r}")
    return value


@dataclass
class DecodedImages:
    """Decoded ``S x S`` uint8 images, one row per file, in memory or memory-mapped from disk.

    ``bad`` maps the files that could not be decoded to their message; their rows stay
    black and are never served. ``decoded`` counts the files this process decoded to make
    it: 0 when it reused a cache on disk. Pickled for a loader worker, a disk cache travels
    as its file name and is mapped again there, never copied.
    """

    paths: list[str]
    image_size: int
    pixels: np.ndarray | None
    bad: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    decoded: int = 0

    def __post_init__(self) -> None:
        self._rows = {path: row for row, path in enumerate(self.paths)}

    def row(self, path: str | Path) -> int:
        """The row of ``path``'s image."""
        return self._rows[str(path)]

    def image(self, row: int) -> torch.Tensor:
        """Row ``row`` as a ``1 x S x S`` uint8 tensor of its own (the cache is read-only)."""
        if self.pixels is None:
            assert self.file is not None, "a decoded-images cache holds its pixels or their file"
            self.pixels = np.load(self.file, mmap_mode="r")
        return torch.from_numpy(np.array(self.pixels[row])).unsqueeze(0)

    @property
    def nbytes(self) -> int:
        """Size of the decoded pixels."""
        return len(self.paths) * self.image_size**2

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.file is not None:
            state["pixels"] = None  # mapped again on first use
        return state


def decoded_images(
    paths: Sequence[str | Path],
    image_size: int,
    mode: str | bool = "auto",
    cache_dir: str | Path = "~/.cache/pneumo",
    threads: int = 2,
) -> DecodedImages | None:
    """The decoded images of ``paths`` where ``mode`` keeps them (``None`` for ``off``).

    Says how large the cache is and where it goes before decoding, and stops with one line
    when it cannot fit there.
    """
    mode = cache_mode(mode)
    if mode == "off":
        return None
    files = sorted({str(p) for p in paths})
    size = len(files) * image_size**2
    available = available_memory()
    if mode == "auto":
        mode = "memory" if size <= AUTO_MEMORY_SHARE * available else "disk"
        log.info(
            "data.cache=auto: the decoded images take %s, %s a quarter of the %s of available "
            "memory: caching them %s",
            _mb(size),
            "within" if mode == "memory" else "more than",
            _mb(available),
            "in memory" if mode == "memory" else "on disk",
        )
    if mode == "memory":
        if size > available:
            raise PneumoError(
                f"data.cache=memory: {len(files)} images at {image_size} px take {_mb(size)}, more "
                f"than the {_mb(available)} of available memory; use data.cache=disk"
            )
        log.info("decoding %d images at %d px into memory (%s)", len(files), image_size, _mb(size))
        return decode_in_memory(files, image_size, threads)
    return open_or_build(files, image_size, Path(cache_dir).expanduser(), threads)


def available_memory() -> int:
    """Bytes this process can still use: the system's available memory, or a container's room."""
    available = psutil.virtual_memory().available
    room = _cgroup_room()
    return available if room is None else min(available, room)


def _cgroup_room() -> int | None:
    """What the memory limit of this process's cgroup leaves (``None`` without a limit).

    A container sees the host's memory in /proc/meminfo, but is killed at its cgroup's
    limit. Reclaimable file pages (``inactive_file``) count as room, as ``docker stats`` does.
    """
    layouts = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "inactive_file"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "total_inactive_file",
        ),
    )
    for limit_file, usage_file, inactive_key in layouts:
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
            stat = Path(limit_file).with_name("memory.stat").read_text().split("\n")
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= 2**60:  # "max", or v1's "no limit"
            return None
        inactive = next((int(line.split()[1]) for line in stat if line.startswith(inactive_key + " ")), 0)
        return max(0, int(limit_text) - usage + inactive)
    return None


def decode_in_memory(paths: Sequence[str], image_size: int, threads: int = 2) -> DecodedImages:
    """Decode ``paths`` into one array, each image written into its row as soon as it is ready.

    Peak memory is the array plus the images being decoded (no list of images to stack).
    """
    pixels = np.zeros((len(paths), image_size, image_size), dtype=np.uint8)

    def store(row: int, image: np.ndarray) -> None:
        pixels[row] = image

    bad = _decode_rows(paths, image_size, threads, store)
    return DecodedImages(list(paths), image_size, pixels, bad, decoded=len(paths))


def _decode_rows(
    paths: Sequence[str], image_size: int, threads: int, store: Callable[[int, np.ndarray], None]
) -> dict[str, str]:
    """Decode every file in ``threads`` threads, handing row and image to ``store``.

    Returns the message of each file that could not be decoded, by path.
    """
    bad: dict[str, str] = {}

    def work(row: int, path: str) -> None:
        try:
            store(row, load_image(path, image_size)[0].numpy())
        except BadImageError as err:
            bad[path] = str(err)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(work, range(len(paths)), paths))  # list(): a store error surfaces here
    return bad


def open_or_build(paths: Sequence[str], image_size: int, cache_dir: Path, threads: int = 2) -> DecodedImages:
    """The disk cache of ``paths`` under ``cache_dir``: reused when it exists, else built once.

    Builders take a lock file per cache: the first decodes, the others wait and then read
    its result (DDP ranks and parallel sweep jobs on one machine, or on machines sharing
    ``cache_dir``). Readers need no lock: a cache folder appears complete or not at all.
    """
    files = _file_list(paths)
    folder = cache_dir / f"{image_size}px-{_key(files, image_size)}"
    found = _open(folder, files)
    if found is not None:
        log.info(
            "reusing the decoded-image cache %s (%d images, %s): nothing to decode",
            folder,
            len(paths),
            _mb(found.nbytes),
        )
        return found
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PneumoError(
            f"data.cache_dir={cache_dir}: cannot create it ({err.strerror}); set data.cache_dir to a "
            "writable folder, or data.cache=memory"
        ) from err
    with _build_lock(folder):
        found = _open(folder, files)  # built by the process this one waited for
        if found is not None:
            log.info("reusing the decoded-image cache %s, built by another process", folder)
            return found
        _check_free_space(cache_dir, len(paths) * image_size**2)
        log.info(
            "decoding %d images at %d px into the cache %s (%s on disk, built once)",
            len(paths),
            image_size,
            folder,
            _mb(len(paths) * image_size**2),
        )
        _build(folder, paths, files, image_size, threads)
    built = _open(folder, files)
    if built is None:
        raise PneumoError(f"the decoded-image cache {folder} cannot be read back; delete it and retry")
    built.decoded = len(paths)
    return built


def _file_list(paths: Sequence[str]) -> list[list[Any]]:
    """``[path, size, mtime_ns, ctime_ns]`` of each file: what the cache is rebuilt for when it changes.

    The status-change time (ctime) catches what size and modification time miss: a film
    replaced by another of the same size whose modification time was kept (``cp -p``,
    ``rsync -t``, an archive unpacked again), a link pointed at another film, a permission
    fixed on a film recorded as unreadable. No program can set it back.
    A file that cannot be read (a broken link) counts with size and times -1: a bad image
    in the cache, until it is fixed.
    """
    files = []
    for path in paths:
        try:
            stat = os.stat(path)
            files.append([path, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns])
        except OSError:
            files.append([path, -1, -1, -1])
    return files


def _key(files: list[list[Any]], image_size: int) -> str:
    """The hash of everything that decides a cache's pixels."""
    what = {
        "format": CACHE_FORMAT,
        "decode_version": DECODE_VERSION,
        "pillow": PIL.__version__,
        "image_size": image_size,
        "files": files,
    }
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]


def _open(folder: Path, files: list[list[Any]]) -> DecodedImages | None:
    """The complete cache in ``folder`` for exactly ``files``, memory-mapped read-only; else ``None``."""
    try:
        record = json.loads((folder / SAMPLES_FILE).read_text())
        pixels = np.load(folder / IMAGES_FILE, mmap_mode="r")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # damaged after it was built (a disk error, a hand edit)
        log.warning("ignoring the unreadable decoded-image cache %s: %s", folder, err)
        return None
    paths = [f[0] for f in files]
    side = record.get("image_size")
    if record.get("files") != files or pixels.dtype != np.uint8 or pixels.shape != (len(paths), side, side):
        log.warning("ignoring the decoded-image cache %s: it does not match its file list", folder)
        return None
    return DecodedImages(paths, side, pixels, record["bad"], folder / IMAGES_FILE)


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold the lock of ``folder``'s cache, saying so when another process holds it.

    The operating system frees the lock of a killed process, so a dead builder blocks no one.
    """
    lock = FileLock(folder.with_name(folder.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is building the decoded-image cache %s: waiting for it", folder)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _check_free_space(cache_dir: Path, size: int) -> None:
    """Stop before decoding when the cache cannot fit on its disk."""
    free = shutil.disk_usage(cache_dir).free
    if size > free:
        raise PneumoError(
            f"data.cache=disk: the decoded images take {_mb(size)} but {cache_dir} has {_mb(free)} "
            "free; set data.cache_dir to a folder on a larger disk, or data.cache=memory or off"
        )


def _build(folder: Path, paths: Sequence[str], files: list[list[Any]], image_size: int, threads: int) -> None:
    """Decode ``paths`` into a temporary folder and rename it to ``folder`` once complete.

    Called under the build lock, so any temporary folder of this cache left beside it is a
    killed build's: it is deleted. Images are written to the file as they are decoded, so
    memory holds only the images in flight.
    """
    for stale in folder.parent.glob(folder.name + ".tmp-*"):
        log.info("deleting %s, left by a build that did not finish", stale)
        shutil.rmtree(stale, ignore_errors=True)
    if folder.exists():  # complete but unreadable or not matching (see _open): replaced
        shutil.rmtree(folder)
    temp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    temp.mkdir()
    try:
        bad = _decode_to_file(temp / IMAGES_FILE, paths, image_size, threads)
        record = {"format": CACHE_FORMAT, "image_size": image_size, "files": files, "bad": bad}
        _write_synced(temp / SAMPLES_FILE, json.dumps(record).encode())
        publish(temp, folder)  # atomic: readers see the whole cache or none
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _decode_to_file(file: Path, paths: Sequence[str], image_size: int, threads: int) -> dict[str, str]:
    """Write ``paths`` decoded as a ``.npy`` of ``N x S x S`` uint8; return the bad files' messages."""
    row_bytes = image_size * image_size
    shape = (len(paths), image_size, image_size)
    write = threading.Lock()
    with open(file, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
        start = out.tell()
        out.truncate(start + len(paths) * row_bytes)  # rows of bad files stay zero

        def store(row: int, image: np.ndarray) -> None:
            with write:
                out.seek(start + row * row_bytes)
                out.write(image.tobytes())

        bad = _decode_rows(paths, image_size, threads, store)
    fsync_path(file)  # on disk before the rename publishes it
    return bad


def _write_synced(file: Path, data: bytes) -> None:
    file.write_bytes(data)
    fsync_path(file)


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB" if size >= 2**20 else f"{size / 2**10:,.0f} KB"
