"""The user's files: one reader for every text file fedvlm is given, one check for every folder it writes.

Config files, annotation and caption files, label lists and condition lists all go through
:func:`read_text` (strict UTF-8, a leading byte-order mark dropped, as written by Windows tools),
and the structured ones through :func:`read_json` / :func:`read_csv`. Whatever goes wrong (the
path is a folder, missing, unreadable, not UTF-8, not JSON, nested past what the parser can
follow) becomes one :class:`~fedvlm.errors.UserError` line naming the file and what was
expected, never a traceback and never a silently replaced character (``errors="replace"``
would turn a damaged class name into a new class). :func:`require_writable_folder` answers,
before a run starts, whether a folder it will write into can be written.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from fedvlm.errors import DataError, UserError


def read_bytes(path: str | Path, what: str, expected: str, error: type[UserError] = DataError) -> bytes:
    """The bytes of the file ``path``; ``what`` names it in the message ("annotation", "config file")."""
    path = Path(path)
    if "\x00" in str(path):  # no filesystem has such a name; open() would raise ValueError
        raise error(f"{what} {str(path)!r} contains a NUL character; expected {expected}")
    if path.is_dir():
        raise error(f"{what} {path} is a directory; expected {expected}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; expected {expected}") from None
    except PermissionError:
        raise error(f"{what} {path} is not readable (permission denied); expected {expected}") from None
    except OSError as failure:
        raise error(f"{what} {path} cannot be read ({failure.strerror or failure}); expected {expected}") from None


def read_text(path: str | Path, what: str, expected: str, error: type[UserError] = DataError) -> str:
    """The text of ``path`` decoded as UTF-8 (strict; a leading BOM is dropped)."""
    data = read_bytes(path, what, expected, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as failure:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[failure.start]:02x} at offset {failure.start}); "
                    f"expected {expected}") from None


def read_lines(path: str | Path, what: str, expected: str, error: type[UserError] = DataError) -> list[str]:
    """The non-blank lines of ``path``, stripped."""
    return [line.strip() for line in read_text(path, what, expected, error).splitlines() if line.strip()]


def read_json(path: str | Path, what: str, expected: str, error: type[UserError] = DataError) -> Any:
    """The JSON value in ``path``."""
    text = read_text(path, what, expected, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as failure:
        raise error(f"{what} {path} is not valid JSON ({failure.msg} at line {failure.lineno} column "
                    f"{failure.colno}); expected {expected}") from None
    except RecursionError:
        raise error(f"{what} {path} nests deeper than the JSON parser follows; expected {expected}") from None


def read_csv(path: str | Path, what: str, expected: str, error: type[UserError] = DataError) -> list[list[str]]:
    """The non-empty rows of the CSV file ``path``."""
    text = read_text(path, what, expected, error)
    try:
        return [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as failure:
        raise error(f"{what} {path} is not a valid CSV file ({failure}); expected {expected}") from None


def require_writable_folder(path: str | Path, key: str) -> Path:
    """``path`` is, or can be made, a folder this process can write into; else one line naming
    ``key`` (the config key or option that gave it). Nothing is created: the nearest existing
    ancestor is probed with a temporary file that is removed at once (a real write is the one
    test that mount options, ACLs and the user id all agree with)."""
    path = Path(path)
    if "\x00" in str(path):
        raise UserError(f"{key}: {str(path)!r} contains a NUL character; expected a writable folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise UserError(f"{key}: {path} {what}; expected a writable folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as failure:
        reason = "permission denied" if isinstance(failure, PermissionError) else (failure.strerror or str(failure))
        where = "" if existing == path else f" (its nearest existing folder {existing})"
        raise UserError(f"{key}: {path}{where} is not writable ({reason}); expected a writable folder") from None
    return path
