"""The one exception type for problems a user can fix (bad paths, keys, files)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


def printable(text: str) -> str:
    """``text`` safe to print or log anywhere: bytes of a file name that are not UTF-8 (possible
    on Linux) appear as ``\\xff`` instead of failing the terminal or the log file."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class PneumoError(Exception):
    """A problem with the user's input, described in a message meant for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


def exit_with(err: PneumoError) -> NoReturn:
    """End the command with ``err`` as one line on stderr and exit status 2.

    Also for code that runs where exceptions are caught and demoted to warnings (Hydra's
    callbacks): ``SystemExit`` is not an ``Exception``, so it still ends the command.
    """
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def exit_on_user_error(func: Callable[..., T]) -> Callable[..., T]:
    """Turn a ``PneumoError`` raised by an entry point into one line on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PneumoError as err:
            exit_with(err)

    return wrapper
