"""Can the input be read? One-line answers for the usual file-system problems.

A BIDS App meets datasets it does not own: files and folders without read permission, symbolic
links whose target is gone (a moved dataset, a git-annex/DataLad file whose content was never
fetched; shiva_bids.bids.annex says more about those), I/O errors on network file systems. Each
becomes a :class:`MissingInputError` (exit 66) whose message names the path and says which of
these it is, instead of "file not found" or a traceback from deep inside pybids or nibabel.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Iterable

from shiva_bids.errors import MissingInputError

SEARCHABLE = os.R_OK | os.X_OK  # a folder is usable when it can be listed and entered


def check_readable(path: Path | str) -> None:
    """Raise MissingInputError (66) unless `path` is a file this process can read.

    The message says why: no such file, a broken symbolic link (with its target), permission
    denied (on the file, or on a folder of its path), a folder instead of a file, or the
    operating system's reason (e.g. an I/O error).
    """
    path = Path(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise MissingInputError(f"{path}: broken symbolic link (its target "
                                    f"{os.readlink(path)} does not exist)") from None
        raise MissingInputError(f"{path}: no such file") from None
    except PermissionError:
        raise MissingInputError(f"{path}: permission denied (a folder on its path cannot be "
                                "entered by this user)") from None
    except OSError as exc:
        raise MissingInputError(f"{path}: cannot be read ({exc.strerror})") from None
    if path.is_dir():
        raise MissingInputError(f"{path}: a folder, where a file is expected")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError:
        raise MissingInputError(f"{path}: permission denied (the file cannot be read by "
                                "this user)") from None
    except OSError as exc:
        raise MissingInputError(f"{path}: cannot be read ({exc.strerror})") from None


def unreadable_folders(root: Path, skip: Iterable[str] = ()) -> list[Path]:
    """Folders under `root` that cannot be listed or entered (top-level names in `skip` are not
    searched). An unreadable folder is reported, not entered."""
    root = Path(root)
    skipped = set(skip)
    found: list[Path] = []
    for folder, subfolders, _ in os.walk(root, onerror=lambda exc: None):
        if Path(folder) == root:
            subfolders[:] = [name for name in subfolders if name not in skipped]
        keep = []
        for name in sorted(subfolders):
            path = Path(folder) / name
            if os.access(path, SEARCHABLE):
                keep.append(name)
            elif not path.is_symlink():
                found.append(path)
        subfolders[:] = keep
    return found


def folder_pattern(root: Path, folders: Iterable[Path]) -> re.Pattern | None:
    """A pybids `ignore` pattern for `folders` (paths under `root`), None when there are none."""
    relative = [re.escape(str(Path(f).relative_to(root))) for f in folders]
    if not relative:
        return None
    return re.compile(rf"^/({'|'.join(relative)})(/|$)")


def folder_problem(path: Path) -> str:
    """Why a folder cannot be used ("permission denied", "not a folder"...), '' when it can
    (or does not exist: absent folders are not a problem here)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    if not stat.S_ISDIR(mode):
        return "not a folder"
    return "" if os.access(path, SEARCHABLE) else "permission denied"


__all__ = ["check_readable", "unreadable_folders", "folder_pattern", "folder_problem"]
