"""Folders computed once and reused: in the run's work directory and in a user cache.

Some results depend only on inputs that are the same for every participant and every run (the
atlas -> template alignment, a fold converted to another engine's format). They are stored as
folders named by a key of everything they depend on, looked up first in the work directory,
then in the user cache, and computed only where neither holds them.

The user cache is `$SHIVA_BIDS_CACHE_DIR`, else `$XDG_CACHE_HOME/shiva-bids`, else
`~/.cache/shiva-bids`. A run may find none of these writable (a read-only root filesystem, an
unwritable `$HOME`, DESIGN.md "Conventions"): it then caches in the work directory alone, and
says so once at debug level. `SHIVA_BIDS_CACHE_DIR=none` turns the user cache off.

A folder is published by one atomic rename of a finished temporary folder, so a reader never
sees a half-written one; two processes that build the same key both finish, and the second
keeps the first's folder (the contents are the same bytes: every builder is deterministic).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)
CACHE_ENV = "SHIVA_BIDS_CACHE_DIR"
COMPLETE = ".complete"  # written last inside a published folder


def user_cache_dir() -> Path | None:
    """The user cache folder (created), or None when it is turned off or cannot be written."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None and configured.strip().lower() in ("", "none", "off"):
        return None
    if configured:
        folder = Path(configured)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        folder = Path(base) / "shiva-bids"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        log.debug("no user cache (%s: %s); caching in the work directory only", folder, exc)
        return None
    return folder


def cache_roots(work_cache: Path | None) -> tuple[Path, ...]:
    """Where a cached folder is looked for, in order: the work directory's, then the user's."""
    roots = [Path(work_cache)] if work_cache is not None else []
    user = user_cache_dir()
    if user is not None and all(user.resolve() != r.resolve() for r in roots):
        roots.append(user)
    return tuple(roots)


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def is_cached(name: str, roots: Sequence[Path]) -> bool:
    """True when some root holds the folder `name` complete (nothing would be built)."""
    return any(_is_complete(Path(root) / name) for root in roots)


def _publish(tmp: Path, folder: Path) -> None:
    (tmp / COMPLETE).write_text("")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process published the same key first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _build_in(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp)
        _publish(tmp, root / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root / name


def _copy_into(source: Path, root: Path, name: str) -> None:
    """Best-effort copy of a published folder into another cache root (never fails the run)."""
    try:
        _build_in(root, name, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True,
                                                          ignore=shutil.ignore_patterns(COMPLETE)))
    except OSError as exc:
        log.debug("could not copy %s into %s: %s", name, root, exc)


def cached_folder(name: str, roots: Sequence[Path], build: Callable[[Path], None]) -> Path:
    """The folder `name` from the first root that holds it complete, else built once.

    `build(tmp)` writes the folder's files into an empty temporary folder; the result is
    published in the first root and copied into the others, so that the next run, with a new
    work directory, finds it in the user cache. Returns the path of the folder used.
    """
    if not roots:
        raise ValueError("cached_folder needs at least one root")
    for index, root in enumerate(roots):
        folder = Path(root) / name
        if _is_complete(folder):
            if index > 0:  # found in the user cache: keep a copy with the run's work files
                _copy_into(folder, Path(roots[0]), name)
            return Path(roots[0]) / name if _is_complete(Path(roots[0]) / name) else folder
    built = _build_in(Path(roots[0]), name, build)
    for root in roots[1:]:
        _copy_into(built, Path(root), name)
    return built
