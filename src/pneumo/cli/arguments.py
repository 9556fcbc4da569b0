"""The commands' flags, read by small typed validators (``probability``, ``positive_int``, ...)
given to argparse as ``type=``: a value that means nothing (``--threshold 1.5``,
``--batch-size 0``, ``nan``) is refused by ``ArgumentParser`` in one line on stderr with exit
status 2, before a checkpoint is loaded or a film read. pneumo-train's config values are
checked in ``pneumo.training.settings``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from pneumo.artifacts.output import check_file_destination, check_folder_destination
from pneumo.data.datamodule import MAX_IMAGE_SIZE
from pneumo.data.preprocess import MIN_SIDE
from pneumo.errors import PneumoError

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a refused flag said in one line (``error: prog: argument --x: why``) and
    exit status 2, instead of the usage block; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# -- flag types: each takes the text of one flag and returns its value, or refuses it -----------
def _number(text: str, kind: Callable[[str], T], what: str) -> T:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}: give a finite number")
    return value


def probability(text: str) -> float:
    """A probability: a finite number from 0 to 1 (``--threshold``)."""
    value = _number(text, float, "a probability")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability: use a number from 0 to 1, e.g. 0.5")
    return value


def positive_int(text: str) -> int:
    """A whole number of 1 or more (``--batch-size``, ``--epochs``)."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not valid: use a whole number of 1 or more")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of 0 or more (``--workers``)."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not valid: use a whole number of 0 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (``--lr``)."""
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not valid: use a number above 0, e.g. 0.0003")
    return value


def image_size(text: str) -> int:
    """An image side in pixels pneumo can train at (``--resolution``), as ``data.image_size``."""
    value = _number(text, int, "a whole number of pixels")
    if not MIN_SIDE <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text} is not valid: use at least {MIN_SIDE} px and at most {MAX_IMAGE_SIZE} px, e.g. 224"
        )
    return value


def non_empty(text: str) -> str:
    """Any text but an empty one (a path, a name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value: give a path or a name")
    return text


def input_path(text: str) -> Path:
    """A path to read (a file or folder; whether it is there is checked where it is read)."""
    return Path(non_empty(text))


def _from_user_error(check: Callable[[str], T]) -> Callable[[str], T]:
    """A flag type from a check that raises ``PneumoError``: argparse then names the flag."""

    @functools.wraps(check)
    def read(text: str) -> T:
        try:
            return check(text)
        except PneumoError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return read


def output_file(*suffixes: str) -> Callable[[str], Path]:
    """A file to write, one of ``suffixes`` (any when none), where it can be written: not a
    folder, no file in the way of its folder, not in a read-only place."""

    def read(text: str) -> Path:
        path = Path(non_empty(text))
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(
                f"{text}: use a {' or '.join(suffixes)} file name (the extension chooses the format)"
            )
        _from_user_error(lambda _: check_file_destination(path, text))(text)
        return path

    read.__name__ = "file"  # argparse names the type in its messages
    return read


def output_folder(text: str) -> Path:
    """A folder to write into (made when missing) where it can be: not a file, no file in the
    way, not in a read-only place."""
    path = Path(non_empty(text))
    _from_user_error(lambda _: check_folder_destination(path, text))(text)
    return path


def comma_list(text: str) -> list[str]:
    """``A,B``: distinct names, comma-separated (``--classes``)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) != len(set(names)) or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give distinct names, comma-separated, e.g. NORMAL,PNEUMONIA"
        )
    return names


def key_values(text: str) -> dict[str, str | None]:
    """``K=V,...`` as a mapping, ``null`` read as None (``--columns``, ``--labels``)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE pairs, comma-separated")
    keys = [key.strip() for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise argparse.ArgumentTypeError(f"{text!r}: each KEY once")
    return {key.strip(): None if value.strip() == "null" else value.strip() for key, value in pairs}
