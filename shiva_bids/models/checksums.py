"""md5 of model files, computed exactly as SHiVAi does (reference/SHIVA.md §2.3).

A file: the md5 of its bytes. A SavedModel *directory*: one md5 over the contents of every
regular file under it, files sorted by path (pathlib order, i.e. component by component, as
`sorted(Path(dir).rglob('*'))` gives), contents concatenated; file names are not hashed.

A descriptor entry without md5 (PVS v3 as published, SHIVA.md §2.2) cannot be verified: its
file runs after one warning, its md5 is still computed for the provenance, which records
`md5: not published` (:func:`fold_records`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from shiva_bids.errors import BadInputError, MissingInputError
from shiva_bids.models.descriptors import (NOT_PUBLISHED, ModelDescriptor, ModelFile,
                                           resolve_model_file)

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def _update(digest: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)


def md5_of_path(path: Path) -> str:
    """md5 (lower-case hex) of a file, or of a SavedModel folder by the §2.3 rule."""
    digest = hashlib.md5()
    if path.is_file():
        _update(digest, path)
    elif path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            _update(digest, sub)
    else:
        raise FileNotFoundError(path)
    return digest.hexdigest()


def _entries(descriptor: ModelDescriptor) -> list[ModelFile]:
    return list(descriptor.files) + ([descriptor.script] if descriptor.script else [])


def verify_model_files(descriptor: ModelDescriptor, skip: bool = False) -> dict[str, str]:
    """Check that every fold (and the `script`) exists and matches its md5.

    Returns {file name as in the descriptor: md5 computed} (or the declared md5s when `skip`,
    which only warns; files without a published md5 are then left out). Raises
    MissingInputError (66) listing every missing/unreadable file, then BadInputError (65)
    listing every md5 mismatch, as SHiVAi aborts on either (§2.3). Files whose md5 is not
    published are hashed but not compared, after one warning.
    """
    entries = _entries(descriptor)
    missing = [e.name for e in entries
               if not resolve_model_file(descriptor.directory, e.name).exists()]
    if missing:
        raise MissingInputError(f"{descriptor.path}: model file(s) not found under "
                                f"{descriptor.directory}: {', '.join(missing)}")
    if skip:
        log.warning("%s: --skip-model-checksum given: md5 of %d model file(s) NOT verified",
                    descriptor.path, len(entries))
        return {e.name: e.md5 for e in entries if e.md5 is not None}
    unpublished = descriptor.unpublished_md5
    if unpublished:
        log.warning("%s: %s lists no md5 for %d of its %d model file(s): they cannot be "
                    "verified and run as found", descriptor.path, descriptor.label,
                    len(unpublished), len(entries))
    computed: dict[str, str] = {}
    for entry in entries:
        path = resolve_model_file(descriptor.directory, entry.name)
        try:
            computed[entry.name] = md5_of_path(path)
        except OSError as exc:
            raise MissingInputError(f"{path}: cannot read model file "
                                    f"({exc.strerror or exc})") from exc
    bad = [f"{e.name} (expected {e.md5}, found {computed[e.name]})"
           for e in entries if e.md5 is not None and computed[e.name] != e.md5]
    if bad:
        raise BadInputError(f"{descriptor.path}: md5 mismatch for {'; '.join(bad)} "
                            f"(corrupt or different download; --skip-model-checksum bypasses)")
    return computed


def checksum_status(descriptor: ModelDescriptor, verified: bool) -> str:
    """One word for reports and the group table: "verified", "not published" (no md5 in the
    descriptor), "partly verified" (some md5s not published) or "not verified" (skipped)."""
    if not verified:
        return "not verified"
    unpublished = len(descriptor.unpublished_md5)
    if not unpublished:
        return "verified"
    return NOT_PUBLISHED if unpublished == len(_entries(descriptor)) else "partly verified"


def fold_records(descriptor: ModelDescriptor, computed: dict[str, str]) -> list[dict[str, str]]:
    """Provenance of each fold in descriptor order: name and md5 (as computed, or
    `not published` with the computed value as `md5_computed`)."""
    records = []
    for entry in descriptor.files:
        record = {"name": entry.name}
        if entry.md5 is None:
            record["md5"] = NOT_PUBLISHED
            if entry.name in computed:
                record["md5_computed"] = computed[entry.name]
        else:
            record["md5"] = computed.get(entry.name, entry.md5)
        records.append(record)
    return records
