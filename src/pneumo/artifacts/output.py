"""Files written whole or not at all: checkpoints, predictions, metrics, exports.

A file is written under a hidden temporary name beside its destination and renamed over it
only once complete, so a crash, a Ctrl-C or a full disk never leaves half a file where a
reader expects a whole one, and an earlier version of the file stays as it was.
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


@contextlib.contextmanager
def atomic_path(path: str | Path, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` on success.

    On any failure the temporary file is removed. A full disk becomes one line naming
    ``path``, the space it needed (``size_hint`` bytes, when known) and the space left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(path.parent).free
        needed = f"about {_megabytes(size_hint)}" if size_hint else "more space"
        raise PneumoError(
            f"no space left on device writing {path}: it needs {needed}, {_megabytes(free)} is free "
            f"there; free some space (earlier files in {path.parent} are kept) and run again"
        ) from err
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all.

    File names that are not valid UTF-8 (possible on Linux) are written back as the bytes
    they are on disk (``surrogateescape``) instead of failing halfway.
    """
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8", errors="surrogateescape")
