"""SHIVA model descriptors (`model_info*.json`) exactly as published.

Keys, meanings and quirks are from reference/SHIVA.md §2.1: `release date` has a space,
`files` order is *not* fold order and is kept as published (SHiVAi sums folds in descriptor
order), `sha256_zip` is upper-case hex, `script` exists only for `.keras` models, and the newer
releases add `architecture`, `model_format` and `tensorflow_min_version`. Our own demo models
add `"demo": true` and a `description`.

Fold files are resolved with SHiVAi's rule (§2.3): `model_dir / name`, and if that does not
exist and the first component of `name` equals the model folder's own name, the lookup is
repeated from the folder's parent.

Descriptors are read as published (§2.2, 15 releases): a `files` entry without `md5` (PVS v3,
both modality sets) is valid and means "not published" (`ModelFile.md5 is None`). A descriptor
that cannot be used (bad JSON, unknown target, malformed fields) is read by
:func:`read_descriptor` into a :class:`BrokenDescriptor` that keeps what could be read of it
(target, version, modalities, fold names), so selection can tell whether it would have been
chosen (docs/models.md "Which model is used").
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from shiva_bids.bids.inputs import MODALITY_TO_ROLE
from shiva_bids.errors import BadInputError, MissingInputError, ShivaError

DESCRIPTOR_GLOB = "model_info*.json"
# Targets a descriptor may name (§2.1; "brain_mask" is the SHIVA brain-mask model).
TARGETS: tuple[str, ...] = ("PVS", "WMH", "CMB", "LAC", "brain_mask")
# Modality names a descriptor may list (§2.1: `prep_json.py` also accepts t2 and t2s).
MODALITIES: tuple[str, ...] = ("t1", "flair", "swi", "t2", "t2s")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_SHA256 = re.compile(r"^[0-9A-Fa-f]{64}$")
_REQUIRED = ("version", "target", "modalities", "files")
_KNOWN_KEYS = {"version", "release date", "author", "url", "target", "modalities", "files",
               "script", "architecture", "model_format", "tensorflow_min_version",
               "sha256_zip", "demo", "description"}


NOT_PUBLISHED = "not published"  # provenance value of an md5 the descriptor does not list


@dataclass(frozen=True)
class ModelFile:
    """One `files` (or `script`) entry: the path relative to the model folder and its md5
    (None when the published descriptor lists none, as PVS v3's do)."""

    name: str
    md5: str | None


def format_of_name(name: str) -> str:
    """Release format from a fold name: "h5", "keras", else "SavedModel" (a folder, §2.2)."""
    suffix = PurePosixPath(name).suffix.lower()
    return {".h5": "h5", ".hdf5": "h5", ".keras": "keras"}.get(suffix, "SavedModel")


class ReleaseFacts:
    """What ranks a release (shared by valid and broken descriptors): version, release date,
    modalities, demo flag, the folder holding the descriptor and its fold names."""

    path: Path
    version: str | None
    target: str | None
    modalities: tuple[str, ...] | None
    release_date: str | None
    is_demo: bool

    @property
    def directory(self) -> Path:
        """The model folder: the folder holding the descriptor."""
        return self.path.parent

    @property
    def fold_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def folds(self) -> tuple[Path, ...]:
        """Fold paths resolved with the §2.3 rule, in descriptor order (not fold order)."""
        return tuple(resolve_model_file(self.directory, name) for name in self.fold_names)

    @property
    def missing_folds(self) -> tuple[str, ...]:
        """Fold names (as in the descriptor) that are not on disk."""
        return tuple(name for name, path in zip(self.fold_names, self.folds)
                     if not path.exists())

    @property
    def files_present(self) -> bool:
        return bool(self.fold_names) and not self.missing_folds

    @property
    def version_number(self) -> int:
        """Numeric part of `version` ("v2" -> 2; -1 when there is none)."""
        digits = re.findall(r"\d+", self.version or "")
        return int(digits[0]) if digits else -1

    @property
    def release(self) -> _dt.date | None:
        """`release date` parsed as dd/mm/yyyy (None when absent or malformed)."""
        try:
            return _dt.datetime.strptime(self.release_date or "", "%d/%m/%Y").date()
        except ValueError:
            return None

    @property
    def label(self) -> str:
        """Short human name, e.g. `PVS v2 (t1)`."""
        demo = ", demo" if self.is_demo else ""
        modalities = "+".join(self.modalities) if self.modalities else "?"
        return f"{self.target or '?'} {self.version or '?'} ({modalities}{demo})"


@dataclass(frozen=True)
class ModelDescriptor(ReleaseFacts):
    """A parsed `model_info*.json`; `folds` are resolved paths in descriptor order."""

    path: Path
    version: str
    target: str
    modalities: tuple[str, ...]
    files: tuple[ModelFile, ...]
    release_date: str | None = None  # as published, dd/mm/yyyy
    author: str | None = None
    url: str | None = None
    script: ModelFile | None = None
    architecture: str | None = None
    model_format: str | None = None
    tensorflow_min_version: str | None = None
    sha256_zip: str | None = None
    is_demo: bool = False
    description: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys we do not know, kept

    @property
    def fold_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    @property
    def format(self) -> str:
        """"SavedModel", "keras" or "h5": `model_format` when given, else from the fold names."""
        if self.model_format:
            return "SavedModel" if self.model_format.lower() == "savedmodel" \
                else self.model_format
        return format_of_name(self.files[0].name)

    @property
    def unpublished_md5(self) -> tuple[str, ...]:
        """Names of the files (folds, script) whose md5 the descriptor does not list."""
        entries = self.files + ((self.script,) if self.script else ())
        return tuple(e.name for e in entries if e.md5 is None)

    @property
    def roles(self) -> tuple[str, ...]:
        """InputSet roles of the channels, in channel order ("t2s" -> "swi", "t2" -> "t2w")."""
        return tuple(MODALITY_TO_ROLE[m] for m in self.modalities)

    @property
    def script_path(self) -> Path | None:
        return None if self.script is None else resolve_model_file(self.directory,
                                                                   self.script.name)



@dataclass(frozen=True)
class BrokenDescriptor(ReleaseFacts):
    """A `model_info*.json` that cannot be used, with what could be read of it.

    `error` is the one-line error (exit code 65/66) raised when this descriptor is the one
    selected for a requested marker; otherwise it is only warned about.
    """

    path: Path
    error: ShivaError
    target: str | None = None
    version: str | None = None
    modalities: tuple[str, ...] | None = None
    names: tuple[str, ...] = ()
    release_date: str | None = None
    is_demo: bool = False

    @property
    def fold_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def problem(self) -> str:
        """The error without the leading `<path>: `."""
        text = str(self.error)
        prefix = f"{self.path}: "
        return text[len(prefix):] if text.startswith(prefix) else text

    @property
    def label(self) -> str:
        return f"{super().label[:-1]}, broken)"


def resolve_model_file(model_dir: Path, name: str) -> Path:
    """Where SHiVAi finds `name` (reference/SHIVA.md §2.3).

    `model_dir / name` if it exists; otherwise, when the first component of `name` equals
    `model_dir`'s own name, `model_dir.parent / name` if that exists. When neither exists the
    first candidate is returned, so the caller's "missing file" message names it.
    """
    primary = model_dir / name
    if primary.exists():
        return primary
    parts = PurePosixPath(name).parts
    if len(parts) > 1 and parts[0] == model_dir.name:
        fallback = model_dir.parent / name
        if fallback.exists():
            return fallback
    return primary


def _model_file(entry: Any, path: Path, key: str) -> ModelFile:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) \
            or not entry["name"]:
        raise BadInputError(f"{path}: every `{key}` entry needs a non-empty \"name\"")
    md5 = entry.get("md5")
    if md5 is None:  # not published (PVS v3): valid, the file runs unverified
        return ModelFile(entry["name"], None)
    if not isinstance(md5, str) or not _MD5.match(md5):
        raise BadInputError(f"{path}: `{key}` entry {entry['name']!r} has a malformed md5 "
                            f"(expected 32 hex digits), got {md5!r}")
    return ModelFile(entry["name"], md5.lower())


def canonical_target(value: Any) -> str | None:
    """The TARGETS spelling of a descriptor's `target` (case-insensitive), None if unknown."""
    return {t.lower(): t for t in TARGETS}.get(str(value).lower())


def parse_descriptor(data: Mapping[str, Any], path: Path) -> ModelDescriptor:
    """Build a :class:`ModelDescriptor` from the decoded JSON of `path` (validated)."""
    if not isinstance(data, Mapping):
        raise BadInputError(f"{path}: a model descriptor must be a JSON object")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise BadInputError(f"{path}: model descriptor lacks {', '.join(missing)}")
    canonical = canonical_target(data["target"])
    if canonical is None:
        raise BadInputError(f"{path}: unknown target {str(data['target'])!r} "
                            f"(known: {', '.join(TARGETS)})")
    modalities = data["modalities"]
    if not isinstance(modalities, list) or not modalities or \
            any(str(m).lower() not in MODALITIES for m in modalities):
        raise BadInputError(f"{path}: modalities must be a non-empty list of "
                            f"{', '.join(MODALITIES)}; got {modalities!r}")
    files = data["files"]
    if not isinstance(files, list) or not files:
        raise BadInputError(f"{path}: `files` must list at least one fold")
    sha = data.get("sha256_zip")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise BadInputError(f"{path}: sha256_zip must be 64 hex digits, got {sha!r}")

    def text(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else str(value)

    return ModelDescriptor(
        path=path,
        version=str(data["version"]),
        target=canonical,
        modalities=tuple(str(m).lower() for m in modalities),
        files=tuple(_model_file(entry, path, "files") for entry in files),
        release_date=text("release date"),
        author=text("author"),
        url=text("url"),
        script=None if data.get("script") is None else _model_file(data["script"], path,
                                                                   "script"),
        architecture=text("architecture"),
        model_format=text("model_format"),
        tensorflow_min_version=text("tensorflow_min_version"),
        sha256_zip=sha,  # kept as published (upper-case hex, §2.1)
        is_demo=bool(data.get("demo", False)),
        description=text("description"),
        extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
    )


def load_descriptor(path: Path | str) -> ModelDescriptor:
    """Read and validate one `model_info*.json` (one-line errors, exit codes 65/66).

    `path` may also be a model folder holding exactly one `model_info*.json`.
    """
    path = Path(path).absolute()
    if path.is_dir():
        found = sorted(path.glob(DESCRIPTOR_GLOB))
        if len(found) != 1:
            raise MissingInputError(f"{path}: expected one model_info*.json in this folder, "
                                    f"found {len(found)}")
        path = found[0]
    return parse_descriptor(_read_json(path), path)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MissingInputError(f"{path}: cannot read model descriptor "
                                f"({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    return data


def read_descriptor(path: Path) -> ModelDescriptor | BrokenDescriptor:
    """:func:`load_descriptor`, or, when that fails, a :class:`BrokenDescriptor` holding the
    error and whatever fields of the file could still be read."""
    path = Path(path).absolute()
    data: Any = {}
    try:
        data = _read_json(path)
        return parse_descriptor(data, path)
    except (BadInputError, MissingInputError) as exc:
        return _broken(path, exc, data if isinstance(data, Mapping) else {})


def _broken(path: Path, error: ShivaError, data: Mapping[str, Any]) -> BrokenDescriptor:
    """What ranks a broken descriptor, read leniently from its decoded JSON."""
    modalities = data.get("modalities")
    files = data.get("files")
    names = tuple(entry["name"] for entry in files if isinstance(entry, Mapping)
                  and isinstance(entry.get("name"), str) and entry["name"]) \
        if isinstance(files, list) else ()
    return BrokenDescriptor(
        path=path, error=error,
        target=canonical_target(data["target"]) if "target" in data else None,
        version=str(data["version"]) if "version" in data else None,
        modalities=tuple(str(m).lower() for m in modalities)
        if isinstance(modalities, list) and modalities else None,
        names=names,
        release_date=str(data["release date"]) if "release date" in data else None,
        is_demo=bool(data.get("demo", False)))
