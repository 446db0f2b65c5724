"""BIDS-Derivatives output naming, sidecars and dataset-level files.

One module owns every output name (DESIGN.md "Conventions"; reference/BIDS_APPS.md §2):

* entity order is the schema's (`rules.entities`): source entities, then space, atlas, seg,
  scale, res, label, desc;
* `label-` is allowed on mask/probseg, never on dseg (use `seg-`);
* a non-standard `space-` (T1w, SWI, ...) makes `SpatialReference` required in the sidecar;
* sources are listed as BIDS URIs (`bids:raw:<path>`), which needs `DatasetLinks`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from shiva_bids import __version__
from shiva_bids.io import atomic_write_json, atomic_write_text

PIPELINE_NAME = "shiva-bids"
CODE_URL = "https://github.com/shiva-bids/shiva-bids"
BIDS_VERSION = "1.11.0"

# Schema entity order (bidsschematools 2.0.1, rules.entities), with the short keys.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "tpl", "ses", "cohort", "sample", "task", "tracksys", "acq", "nucleus", "volume",
    "ce", "trc", "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part",
    "proc", "hemi", "space", "split", "recording", "chunk", "atlas", "seg", "scale", "res",
    "den", "label", "desc",
)
# pybids entity names -> BIDS filename keys.
PYBIDS_TO_KEY: dict[str, str] = {
    "subject": "sub", "session": "ses", "acquisition": "acq", "ceagent": "ce",
    "reconstruction": "rec", "run": "run", "direction": "dir", "echo": "echo", "part": "part",
    "space": "space", "description": "desc", "label": "label", "segmentation": "seg",
    "resolution": "res", "task": "task", "inversion": "inv", "flip": "flip", "mtransfer": "mt",
    "processing": "proc", "hemisphere": "hemi", "atlas": "atlas",
}
_LABEL_RE = re.compile(r"^[0-9a-zA-Z+]+$")
# Entities of the input that derivative names keep (the rest describe the raw suffix only).
SOURCE_KEYS: tuple[str, ...] = ("sub", "ses", "acq", "ce", "rec", "run", "echo", "part")
# Suffix -> entities it may carry beyond the source ones (BIDS_APPS.md §2.1).
SUFFIX_ENTITIES: dict[str, frozenset[str]] = {
    "mask": frozenset({"space", "res", "label", "desc"}),
    "probseg": frozenset({"space", "seg", "res", "label", "desc"}),
    "dseg": frozenset({"space", "seg", "res", "desc"}),
    "xfm": frozenset({"desc"}),
}


def parse_entities(filename: str) -> dict[str, str]:
    """Entities of a BIDS file name, e.g. `sub-01_ses-1_T1w.nii.gz` -> {sub: 01, ses: 1}."""
    stem = Path(filename).name.split(".", 1)[0]
    entities: dict[str, str] = {}
    for part in stem.split("_")[:-1]:
        key, sep, value = part.partition("-")
        if sep:
            entities[key] = value
    return entities


def source_entities(filename: str) -> dict[str, str]:
    """The entities of an input file that its derivatives carry over."""
    return {k: v for k, v in parse_entities(filename).items() if k in SOURCE_KEYS}


def derivative_name(source: Mapping[str, str], suffix: str, extension: str,
                    **entities: str | None) -> str:
    """Build a derivative file name with entities in schema order.

    `source` holds the input's entities (`sub`, `ses`, `acq`, ...); `entities` the derivative
    ones (`space`, `seg`, `label`, `desc`, `res`, or `from_`/`to`/`mode` for transforms).
    Raises ValueError for combinations the schema forbids.
    """
    if "sub" not in source:
        raise ValueError("a derivative name needs the `sub` entity")
    given = {k: v for k, v in entities.items() if v is not None}
    allowed = SUFFIX_ENTITIES.get(suffix)
    if suffix == "xfm":
        return _xfm_name(source, given, extension)
    if allowed is not None and not set(given) <= allowed:
        raise ValueError(f"entities {sorted(set(given) - allowed)} are not allowed on {suffix}")
    merged = {k: v for k, v in source.items() if k in SOURCE_KEYS}
    merged.update(given)
    for key, value in merged.items():
        if key not in ENTITY_ORDER:
            raise ValueError(f"unknown entity {key!r}")
        if not _LABEL_RE.match(str(value)):
            raise ValueError(f"entity value {key}-{value!r} must be alphanumeric")
    parts = [f"{k}-{merged[k]}" for k in ENTITY_ORDER if k in merged]
    return "_".join(parts + [suffix]) + extension


def _xfm_name(source: Mapping[str, str], given: dict[str, str], extension: str) -> str:
    """`sub-X[_ses-Y]_from-A_to-B_mode-image[_desc-D]_xfm<ext>` (fMRIPrep's transform names)."""
    missing = {"from_", "to"} - set(given)
    if missing:
        raise ValueError("a transform name needs from_ and to")
    head = [f"{k}-{source[k]}" for k in ENTITY_ORDER if k in source and k in SOURCE_KEYS]
    parts = head + [f"from-{given['from_']}", f"to-{given['to']}",
                    f"mode-{given.get('mode', 'image')}"]
    if "desc" in given:
        parts.append(f"desc-{given['desc']}")
    return "_".join(parts + ["xfm"]) + extension


def unit_dir(output_dir: Path, source: Mapping[str, str], datatype: str = "anat") -> Path:
    """`output_dir/sub-X[/ses-Y]/<datatype>`."""
    folder = output_dir / f"sub-{source['sub']}"
    if source.get("ses"):
        folder = folder / f"ses-{source['ses']}"
    return folder / datatype


def derivative_path(output_dir: Path, source: Mapping[str, str], suffix: str,
                    extension: str = ".nii.gz", **entities: str | None) -> Path:
    """Full path of a derivative under `output_dir` (see :func:`derivative_name`)."""
    return unit_dir(output_dir, source) / derivative_name(source, suffix, extension, **entities)


def bids_uri(path: Path, dataset_root: Path, dataset_name: str = "") -> str:
    """BIDS URI of `path`: `bids:<name>:<relative path>` (`bids::...` for this dataset)."""
    relative = Path(os.path.relpath(path, dataset_root)).as_posix()
    if relative.startswith(".."):
        raise ValueError(f"{path} is not inside {dataset_root}")
    return f"bids:{dataset_name}:{relative}"


def sidecar_path(image: Path) -> Path:
    """The JSON sidecar next to a `.nii[.gz]` or `.tsv` file."""
    name = image.name
    for ext in (".nii.gz", ".nii", ".tsv", ".mat", ".h5"):
        if name.endswith(ext):
            return image.with_name(name[: -len(ext)] + ".json")
    raise ValueError(f"no sidecar rule for {image}")


def write_sidecar(image: Path, fields: Mapping[str, Any]) -> Path:
    """Write the JSON sidecar of `image` atomically; `SpatialReference` is required for
    non-standard spaces and is checked here so no file can miss it."""
    entities = parse_entities(image.name)
    if "space" in entities and not entities["space"].startswith("MNI") \
            and "SpatialReference" not in fields:
        raise ValueError(f"{image.name}: a non-standard space needs SpatialReference")
    payload = {"SoftwareVersion": f"{PIPELINE_NAME} {__version__}", **fields}
    return atomic_write_json(sidecar_path(image), payload)


@dataclass(frozen=True)
class DatasetInfo:
    """What `dataset_description.json` says about the run."""

    bids_dir: Path
    output_dir: Path
    description: str = "SHIVA small vessel disease markers"
    container: Mapping[str, str] | None = None


def raw_dataset_link(bids_dir: Path, output_dir: Path) -> str:
    """`DatasetLinks.raw`: a relative path when the outputs live under the raw dataset's
    derivatives folder (portable), else an absolute `file://` URI."""
    bids = bids_dir.resolve()
    out = output_dir.resolve()
    if out.is_relative_to(bids):
        return Path(os.path.relpath(bids, out)).as_posix()
    return bids.as_uri()


def container_info() -> dict[str, str] | None:
    """Container provenance, from variables the image sets (see Dockerfile)."""
    tag = os.environ.get("SHIVA_BIDS_CONTAINER_TAG")
    if not tag:
        return None
    return {"Type": os.environ.get("SHIVA_BIDS_CONTAINER_TYPE", "docker"), "Tag": tag}


def write_dataset_description(info: DatasetInfo) -> Path:
    """Write the derivative `dataset_description.json` (BIDS_APPS.md §2.5)."""
    generated: dict[str, Any] = {"Name": PIPELINE_NAME, "Version": __version__,
                                 "CodeURL": CODE_URL, "Description": info.description}
    container = info.container if info.container is not None else container_info()
    if container:
        generated["Container"] = dict(container)
    payload = {
        "Name": f"{PIPELINE_NAME} derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": raw_dataset_link(info.bids_dir, info.output_dir)}],
        "DatasetLinks": {"raw": raw_dataset_link(info.bids_dir, info.output_dir)},
    }
    return atomic_write_json(info.output_dir / "dataset_description.json", payload)


def ensure_bidsignore(output_dir: Path, patterns: Iterable[str]) -> Path:
    """Add `patterns` to `output_dir/.bidsignore` (kept sorted, no duplicates)."""
    path = output_dir / ".bidsignore"
    existing = set(path.read_text().split()) if path.is_file() else set()
    wanted = existing | set(patterns)
    if wanted != existing or not path.is_file():
        atomic_write_text(path, "\n".join(sorted(wanted)) + "\n")
    return path


# Non-BIDS files the app writes; listed in .bidsignore (BIDS_APPS.md §2.5). Checked with the
# official validator 3.0.2 (tests/test_derivatives.py): folder patterns must not end in `/`
# (`group/` does not ignore the folder, `group` does, at any depth); transforms (`*_xfm.*`,
# fMRIPrep's BEP014 names) are not in its schema, so every `_xfm` file and its sidecar is
# NOT_INCLUDED unless ignored.
NON_BIDS_PATTERNS: tuple[str, ...] = (
    "logs", "figures", "group", "*_stats.tsv", "*_stats.json", "*_summary.json",
    "*.html", "*_desc-done.json", "*_xfm.*",
)
