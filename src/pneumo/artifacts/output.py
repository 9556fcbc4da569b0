"""Files written whole or not at all: checkpoints, predictions, metrics, exports.

A file is written under a hidden temporary name beside its destination and renamed over it
only once complete, so a crash, a Ctrl-C or a full disk never leaves half a file where a
reader expects a whole one, and an earlier version of the file stays as it was. The file is
flushed to the disk before the rename and its folder after (``publish``), so a power loss
leaves the old file or the new one, not an empty or half-written one under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pneumo.errors import PneumoError


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (as anything: a file stops the climb)."""
    path = path.absolute()
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _refuse_unwritable(folder: Path, what: str) -> None:
    """Refuse ``folder`` (a folder to create, or to write into) when it cannot be: a file stands
    where a folder is needed, or the nearest existing folder is read-only."""
    found = _existing_ancestor(folder)
    if not found.is_dir():
        raise PneumoError(
            f"cannot write {what}: {found} is a file, not a folder; choose another place, or move the file"
        )
    if not os.access(found, os.W_OK | os.X_OK):
        raise PneumoError(
            f"cannot write {what}: {found} is read-only for you (permission denied); choose a folder you "
            "can write to"
        )


def check_file_destination(path: str | Path, named: str = "") -> None:
    """Stop, before any work, when the file ``path`` could not be written: it is a folder, a
    parent is a file, or its folder is read-only. ``named`` is how messages name it (the flag
    that gave it: ``--out x.csv``), by default the path."""
    path = Path(path)
    named = named or str(path)
    if path.is_dir():
        raise PneumoError(f"cannot write {named}: it is a folder; give a file name")
    _refuse_unwritable(path.parent, named)


def check_folder_destination(path: str | Path, named: str = "") -> None:
    """Stop, before any work, when files could not be written into the folder ``path``: it is a
    file, a parent is a file, or it (or the folder it would be made in) is read-only. ``named``
    as for ``check_file_destination``."""
    path = Path(path)
    named = named or str(path)
    if os.path.lexists(path) and not path.is_dir():
        raise PneumoError(f"cannot write into {named}: it is a file, not a folder; give a folder")
    _refuse_unwritable(path, f"into {named}")


def _write_error(path: Path, err: OSError) -> PneumoError:
    """The one line for an ``OSError`` met writing ``path`` (other than a full disk)."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied (a read-only folder or file system); choose a place you can write to"
    elif err.errno == errno.EISDIR or path.is_dir():
        why = "it is a folder; give a file name"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST):
        found = _existing_ancestor(path.parent)
        why = f"{found} is a file, not a folder; choose another place, or move the file"
    else:
        why = (err.strerror or str(err)).lower()
    return PneumoError(f"cannot write {path}: {why}")


def fsync_path(path: str | Path) -> None:
    """Flush ``path`` (a file's content, or a folder's list of names) to the disk.

    A file system that cannot sync a folder (some network and Windows file systems answer
    EINVAL, EBADF or EACCES) is left as it is: the rename itself is still atomic there.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():  # Windows opens no folder
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def publish(source: str | Path, destination: str | Path) -> None:
    """Rename the complete ``source`` (a file, or a folder whose files are already synced) over
    ``destination``, durably: ``source`` reaches the disk before the rename, and the rename
    (the folder's new entry) after it."""
    fsync_path(source)
    os.replace(source, destination)
    fsync_path(Path(destination).absolute().parent)


@contextlib.contextmanager
def atomic_path(path: str | Path, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; ``publish`` it as ``path`` on success.

    On any failure the temporary file is removed. A full disk becomes one line naming
    ``path``, the space it needed (``size_hint`` bytes, when known) and the space left; any
    other write error (a read-only folder, a folder where the file goes, a file where a folder
    is needed) one line naming ``path`` and the cause.
    """
    path = Path(path)
    if path.is_dir():
        raise _write_error(path, IsADirectoryError(errno.EISDIR, "is a directory"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(path, err) from None
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        publish(partial, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if err.errno != errno.ENOSPC:
            raise _write_error(path, err) from err
        free = shutil.disk_usage(path.parent).free
        needed = f"about {_megabytes(size_hint)}" if size_hint else "more space"
        raise PneumoError(
            f"no space left on device writing {path}: it needs {needed}, {_megabytes(free)} is free "
            f"there; free some space (earlier files in {path.parent} are kept) and run again"
        ) from err
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all.

    File names that are not valid UTF-8 (possible on Linux) are written back as the bytes
    they are on disk (``surrogateescape``) instead of failing halfway.
    """
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8", errors="surrogateescape")
