"""The Hydra commands' command line as text: the literal value of an override, a value quoted
so that Hydra reads it back unchanged, a shell command to copy, and the refusals that must
come before Hydra writes anything (an override it cannot parse, a run directory that cannot
be written), each in one line."""

from __future__ import annotations

import functools
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from pneumo.artifacts.output import check_folder_destination
from pneumo.errors import PneumoError, exit_with

T = TypeVar("T")

# Hydra flags that print or complete instead of running a job.
NO_JOB_FLAGS = ("-c", "--cfg", "-h", "--help", "--hydra-help", "-i", "--info", "-sc", "--shell-completion")


def literal_overrides(args: list[str], keys: tuple[str, ...]) -> dict[str, str | None]:
    """The values of ``key=value`` arguments for ``keys`` (also ``+key``, ``++key``), unquoted."""
    parser = OverridesParser.create()
    found: dict[str, str | None] = {}
    for arg in args:
        if arg.lstrip("+").split("=", 1)[0] not in keys:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra itself reports a malformed override, in its own words
            continue
        if override.is_sweep_override():
            continue
        value = override.value()
        found[override.key_or_group] = value if value is None else str(value)
    return found


def hydra_quote(value: str | Path) -> str:
    """``value`` as a Hydra override value that reads back as exactly that string, whatever it
    holds: spaces, ``=``, ``,``, brackets, quotes, backslashes, ``${`` (never an interpolation),
    any Unicode. For command lines pneumo writes itself (``key=`` + ``hydra_quote(path)``)."""
    text = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, str(value))
    text = text.replace("${", "\\${").replace("'", "\\'")
    return f"'{text}'"


def check_overrides(args: list[str]) -> None:
    """Stop on an override Hydra cannot parse, naming its key and the quoting that fixes it.

    Hydra's own message ("mismatched input '=' expecting <EOF>") names neither.
    """
    parser = OverridesParser.create()
    for arg in (a for a in args if "=" in a and not a.startswith("-")):
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            key, value = arg.split("=", 1)
            reason = str(err).splitlines()[0] if str(err) else "not a valid override"
            raise PneumoError(
                f"cannot read the override {arg!r} (key {key.lstrip('+')}): {reason}; quote a value "
                f"holding '=', spaces or brackets, e.g. '{key}=\"{value}\"'"
            ) from None


def check_launch_dir(args: list[str]) -> None:
    """Refuse a Hydra command line whose run directory cannot be written: a literal
    ``hydra.run.dir`` that is a file, lies under a file or in a read-only place, or (without it)
    Hydra's default ``outputs/`` in the current folder (``check_folder_destination``)."""
    if any(arg in NO_JOB_FLAGS or arg in ("-m", "--multirun") for arg in args):
        return
    run_dir = literal_overrides(args, ("hydra.run.dir",)).get("hydra.run.dir")
    if run_dir is None:
        check_folder_destination(Path("outputs"), "outputs/ (where runs go unless hydra.run.dir=DIR says)")
    elif "${" not in run_dir:
        check_folder_destination(Path(run_dir), f"hydra.run.dir={run_dir}")


def writable_run_dir(hydra_entry: Callable[..., T]) -> Callable[..., T]:
    """Check, before Hydra creates it, that a Hydra command's run directory can be written
    (``hydra.run.dir`` as given, or ``outputs/`` for Hydra's default): a file in the way or a
    read-only place is one line and exit status 2, not Hydra's traceback. Put it above
    ``@hydra.main``; a call with a composed config (tests, code) is passed through unchecked."""

    @functools.wraps(hydra_entry)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if not args and not kwargs:
            try:
                check_launch_dir(sys.argv[1:])
            except PneumoError as err:
                exit_with(err)
        return hydra_entry(*args, **kwargs)

    return wrapper


def quoted_command(prog: str, args: Sequence[str]) -> str:
    """A command line to copy into a shell: ``prog`` and ``args``, each quoted where it must be."""
    return " ".join([prog, *(shlex.quote(a) for a in args)])
