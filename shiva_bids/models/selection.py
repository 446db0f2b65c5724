"""Find descriptors under `--models-dir` and choose one per marker.

Choice rule (issue #4; documented in docs/models.md), for each requested marker:

1. `--model M=path` wins (a descriptor file, or a folder holding one; a path that does not
   exist as given is joined onto `--models-dir`, as SHiVAi does, reference/SHIVA.md §2.3).
2. Otherwise the descriptors whose `target` is the marker and whose modalities are all
   available; among them, prefer the ones whose model files are all present, then real
   models over demo models, then the newest `version`, then the newest `release date`
   (then the path, for determinism).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from shiva_bids.bids.inputs import MODALITY_TO_ROLE, ROLES
from shiva_bids.errors import MissingInputError, UsageError
from shiva_bids.models.descriptors import ModelDescriptor, load_descriptor

log = logging.getLogger(__name__)
DESCRIPTOR_GLOB = "model_info*.json"


def discover_descriptors(models_dir: Path) -> list[ModelDescriptor]:
    """Every `model_info*.json` under `models_dir` (recursive), parsed, sorted by path.

    Raises MissingInputError (66) when the folder is missing or holds no descriptor, and
    BadInputError (65) naming the file when a descriptor is malformed or names an unknown
    target.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise MissingInputError(f"--models-dir {models_dir}: not a folder")
    paths = sorted(models_dir.rglob(DESCRIPTOR_GLOB))
    if not paths:
        raise MissingInputError(f"--models-dir {models_dir}: no {DESCRIPTOR_GLOB} found "
                                f"(see docs/models.md for the expected layout)")
    return [load_descriptor(p) for p in paths]


def roles_of(modalities: Iterable[str]) -> set[str]:
    """Map descriptor modality names ("t1", "t2s"...) or InputSet roles to roles."""
    out = set()
    for name in modalities:
        name = name.lower()
        if name in MODALITY_TO_ROLE:
            out.add(MODALITY_TO_ROLE[name])
        elif name in ROLES:
            out.add(name)
        else:
            raise ValueError(f"unknown modality or role {name!r}")
    return out


def _files_present(descriptor: ModelDescriptor) -> bool:
    return all(p.exists() for p in descriptor.folds)


def preference(descriptor: ModelDescriptor) -> tuple:
    """Sort key of the choice rule (module docstring, step 2): higher is preferred."""
    release = descriptor.release
    return (_files_present(descriptor), not descriptor.is_demo, descriptor.version_number,
            release.toordinal() if release else 0, str(descriptor.path))


def _override(marker: str, path: Path, models_dir: Path | None) -> ModelDescriptor:
    candidate = Path(path)
    if not candidate.exists() and models_dir is not None:
        relative = candidate
        if candidate.is_absolute() and candidate.is_relative_to(Path.cwd()):
            relative = candidate.relative_to(Path.cwd())
        if not relative.is_absolute() and (Path(models_dir) / relative).exists():
            candidate = Path(models_dir) / relative
    descriptor = load_descriptor(candidate)
    if descriptor.target != marker:
        raise UsageError(f"--model {marker}={path}: that descriptor is for "
                         f"{descriptor.target}, not {marker}")
    return descriptor


def select_descriptors(descriptors: Sequence[ModelDescriptor], markers: Sequence[str],
                       available_modalities: Iterable[str],
                       overrides: Mapping[str, Path] | None = None,
                       models_dir: Path | None = None,
                       ) -> tuple[dict[str, ModelDescriptor], dict[str, str]]:
    """Choose one descriptor per marker (rule in the module docstring).

    `available_modalities` may hold descriptor names ("t1", "flair", "swi", "t2", "t2s") or
    InputSet roles ("t1w", "flair", "swi", "t2w"); "swi" and "t2s" both mean the SWI role.
    Returns (chosen {marker: descriptor}, skipped {marker: reason}).
    """
    available = roles_of(available_modalities)
    overrides = overrides or {}
    chosen: dict[str, ModelDescriptor] = {}
    skipped: dict[str, str] = {}
    for marker in markers:
        if marker in overrides:
            candidates = [_override(marker, overrides[marker], models_dir)]
        else:
            candidates = [d for d in descriptors if d.target == marker]
        if not candidates:
            skipped[marker] = f"no model descriptor with target {marker}"
            continue
        usable = [d for d in candidates if roles_of(d.modalities) <= available]
        if not usable:
            needs = " or ".join(sorted({"+".join(d.modalities) for d in candidates}))
            have = "+".join(sorted(available)) or "none"
            skipped[marker] = f"{marker} models need {needs}; available: {have}"
            continue
        best = max(usable, key=preference)
        chosen[marker] = best
        log.info("%s: using %s (%s)", marker, best.label, best.path)
    return chosen, skipped
