"""Pre-flight check for DataLad / git-annex datasets whose content is not fetched yet.

OpenNeuro datasets are cloned with DataLad (reference/BIDS_APPS.md §5). A clone holds every
annexed file (the images) without its content until `datalad get` fetches it:

* a *locked* file is a symlink into `.git/annex/objects/<hash dirs>/<key>/<key>`, which dangles
  until the content is there (git-annex's default, what `datalad clone` gives);
* an *unlocked* file (adjusted branches, `git annex unlock`, file systems without symlinks)
  is a small pointer file whose content is `/annex/objects/<key>` plus a newline.

Opening such a file fails deep inside nibabel, one unit at a time, after the outputs have
been started. The participant level therefore checks the files it selected (images, their
JSON sidecars, the `--derivatives` brain masks and segmentations) once, before anything is
written: un-fetched content stops the run with exit 66 (input missing), one line naming the
first files and the `datalad get` command that fetches exactly them; the full list goes to
a file in the work folder. A dataset whose content is present runs as usual, even when it is
read-only (annexed content is mode 0444 in 0555 folders).

Files that are not annexed but broken in another way (a dangling link to elsewhere, an
unreadable file) are left to the header checks, which give their own one-line errors.
"""
from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from shiva_bids.bids.derivatives import sidecar_path
from shiva_bids.bids.inputs import ROLES, InputSet
from shiva_bids.errors import MissingInputError

log = logging.getLogger(__name__)

# Where git-annex keeps content: link targets contain it (`../../.git/annex/objects/...`).
ANNEX_OBJECTS = ".git/annex/objects/"
# An unlocked pointer file: "/annex/objects/<key>\n"; keys are well under 1 KiB.
POINTER_PREFIX = b"/annex/objects/"
POINTER_MAX_BYTES = 1024
SHOWN_FILES = 3  # files named on the terminal line; every one is in the list file
LIST_NAME = "unfetched-annexed-files.txt"


def is_unfetched(path: Path) -> bool:
    """True when `path` is an annexed file whose content is absent: a symlink into
    `.git/annex/objects/` that does not resolve, or an unlocked pointer file."""
    if path.is_symlink():  # followed to the end, also through links to links
        return ANNEX_OBJECTS in os.path.realpath(path) and not path.exists()
    try:
        if not path.is_file() or path.stat().st_size > POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(POINTER_PREFIX)) == POINTER_PREFIX
    except OSError:
        return False  # unreadable: the header checks say so, with their own message


def selected_files(units: Iterable[InputSet]) -> list[Path]:
    """Every file the units will read: each role's image and its JSON sidecar (when there
    is one, fetched or not), and the `--derivatives` brain mask and segmentation."""
    files: list[Path] = []
    for inputs in units:
        for role in ROLES:
            image = inputs.image(role)
            if image is None:
                continue
            files.append(image)
            sidecar = sidecar_path(image)
            if sidecar.is_symlink() or sidecar.exists():
                files.append(sidecar)
        files.extend(p for p in (inputs.brain_mask, inputs.dseg) if p is not None)
    return list(dict.fromkeys(files))


def _shown(path: Path, root: Path) -> str:
    """`path` relative to `root` when inside it (what `datalad -C root get` takes)."""
    relative = os.path.relpath(path, root)
    return path.as_posix() if relative.startswith("..") else Path(relative).as_posix()


def get_command(files: Sequence[Path], bids_dir: Path, list_file: Path | None = None) -> str:
    """The `datalad get` command that fetches exactly `files`: the paths themselves, or,
    given `list_file` (one path per line, relative to `bids_dir` when inside it), a command
    that reads them from it."""
    if list_file is not None:
        return (f"xargs -d '\\n' -a {shlex.quote(str(list_file))} "
                f"datalad -C {shlex.quote(str(bids_dir))} get --")
    paths = " ".join(shlex.quote(_shown(f, bids_dir)) for f in files)
    return f"datalad -C {shlex.quote(str(bids_dir))} get -- {paths}"


@dataclass(frozen=True)
class Unfetched:
    """The selected files whose annexed content is missing, and where their list was saved."""

    files: tuple[Path, ...]
    list_file: Path | None = None

    def message(self, bids_dir: Path) -> str:
        """One line: how many, the first few, the list file and the fetch command."""
        count = len(self.files)
        shown = ", ".join(_shown(f, bids_dir) for f in self.files[:SHOWN_FILES])
        more = f" and {count - SHOWN_FILES} more" if count > SHOWN_FILES else ""
        listed = f" (all {count} listed in {self.list_file})" if self.list_file else ""
        short = count <= SHOWN_FILES or self.list_file is None
        command = get_command(self.files, bids_dir, None if short else self.list_file)
        return (f"{count} selected input file(s) are annexed but not fetched "
                f"(git-annex/DataLad): {shown}{more}{listed}; nothing was processed; "
                f"fetch them with: {command}")


def write_list(files: Sequence[Path], bids_dir: Path, folder: Path) -> Path | None:
    """Save the paths (one per line, as `datalad -C bids_dir get` takes them) in `folder`;
    None when the folder cannot be written (the message then lists what it can)."""
    path = folder / LIST_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{_shown(f, bids_dir)}\n" for f in files), encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the list of un-fetched files to %s (%s)", path, exc)
        return None
    return path


def check_fetched(files: Iterable[Path], bids_dir: Path, list_folder: Path) -> None:
    """Raise :class:`MissingInputError` (exit 66) when any of `files` is annexed content
    that is not fetched; the full list is written to `list_folder` (the work folder)."""
    missing = tuple(f for f in dict.fromkeys(files) if is_unfetched(f))
    if not missing:
        return
    for path in missing:
        log.debug("not fetched: %s", path)
    list_file = write_list(missing, bids_dir, list_folder)
    raise MissingInputError(Unfetched(missing, list_file).message(bids_dir))


def tolerate_unfetched(report, bids_dir: Path):
    """Drop the validator's errors that concern only un-fetched annexed files (it cannot read
    their headers: NIFTI_HEADER_UNREADABLE). Those of the selected units stop the run with
    exit 66 right after discovery; those of other participants do not matter to this run,
    so a partly fetched dataset can be processed participant by participant."""
    kept, skipped = [], 0
    for issue in report.errors:
        if issue.files and all(is_unfetched(bids_dir / f.lstrip("/")) for f in issue.files):
            skipped += 1
            continue
        kept.append(issue)
    if skipped:
        log.info("BIDS validator: %d error(s) about annexed files that are not fetched "
                 "were set aside (their headers cannot be read until `datalad get`)", skipped)
    return replace(report, errors=tuple(kept))


def check_units_fetched(units: Sequence[InputSet], bids_dir: Path, list_folder: Path) -> None:
    """:func:`check_fetched` over every file the selected units will read."""
    check_fetched(selected_files(units), bids_dir, list_folder)


__all__ = ["is_unfetched", "selected_files", "get_command", "check_fetched",
           "check_units_fetched", "tolerate_unfetched", "Unfetched", "ANNEX_OBJECTS", "POINTER_PREFIX"]
