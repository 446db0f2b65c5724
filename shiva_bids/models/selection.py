"""Find descriptors under `--models-dir` and choose one release per marker.

Choice rule (docs/models.md "Which model is used"), for each requested marker:

1. `--model M=path` wins (a descriptor file, or a folder holding one; a path that does not
   exist as given is joined onto `--models-dir`, as SHiVAi does, reference/SHIVA.md §2.3).
2. Otherwise the descriptors whose `target` is the marker and whose modalities the unit has,
   ranked by :func:`preference`: all fold files present first, then real models over demo
   models, then the newest `version` (v4 over v3 over v2 ...), then, within one version, the
   model that uses more of the unit's images (SHiVAi's `all` runs the T1+FLAIR PVS model,
   SHIVA.md §1.1), then the newest `release date`, then the path (for determinism).
3. Broken descriptors (bad JSON, unknown target, malformed fields; see
   :class:`~shiva_bids.models.descriptors.BrokenDescriptor`) take part in the ranking with what
   could be read of them. One that ranks first for a requested marker stops the run with its
   one-line error; the others are warned about once (:func:`warn_unused`) and ignored. A
   selected descriptor with a missing fold or a wrong md5 stops the run when its ensemble is
   built (exit 66 / 65); md5s are not computed for releases that are not selected.

Every choice carries why that release runs and why each other release of the marker does not
(:class:`MarkerChoice`), for the log, the report and the sidecars.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from shiva_bids.bids.inputs import MODALITY_TO_ROLE, ROLES
from shiva_bids.errors import BadInputError, MissingInputError, UsageError
from shiva_bids.models.descriptors import (DESCRIPTOR_GLOB, BrokenDescriptor, ModelDescriptor,
                                           ReleaseFacts, load_descriptor, read_descriptor)

log = logging.getLogger(__name__)

# What a run without any model says (usage error, 64): where to get the SHIVA models, and
# `shiva-bids demo` to try the tool without them.
NO_MODELS_MESSAGE = (
    "no --models-dir given: shiva-bids needs the SHIVA model files (the model_info*.json "
    "descriptors and their fold files), which are not bundled. Download them once from the "
    "SHIVA model repositories (https://github.com/pboutinaud/SHIVA_PVS, SHIVA_WMH, SHIVA_CMB, "
    "SHIVA_LAC; licence CC BY-NC-SA 4.0), unzip them into one folder and pass "
    "--models-dir FOLDER. To try shiva-bids without them, run `shiva-bids demo OUT` "
    "(demo models trained on synthetic phantoms, not for research).")


@dataclass(frozen=True)
class ModelScan:
    """Every `model_info*.json` under a models folder: the usable ones and the broken ones."""

    models_dir: Path
    descriptors: tuple[ModelDescriptor, ...]
    broken: tuple[BrokenDescriptor, ...]

    def require_usable(self) -> None:
        """Raise BadInputError (65) naming every broken file when no descriptor is usable
        (a folder of broken descriptors only is bad input, not a missing model)."""
        if not self.descriptors:
            raise BadInputError(f"--models-dir {self.models_dir}: no usable model descriptor: "
                                + "; ".join(str(b.error) for b in self.broken))


def scan_models_dir(models_dir: Path) -> ModelScan:
    """Read every `model_info*.json` under `models_dir` (recursive, sorted by path).

    Raises MissingInputError (66) when the folder is missing or holds no descriptor; broken
    descriptors are returned, not raised.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise MissingInputError(f"--models-dir {models_dir}: not a folder")
    paths = sorted(models_dir.rglob(DESCRIPTOR_GLOB))
    if not paths:
        raise MissingInputError(f"--models-dir {models_dir}: no {DESCRIPTOR_GLOB} found "
                                f"(see docs/models.md for the expected layout)")
    read = [read_descriptor(p) for p in paths]
    return ModelScan(models_dir,
                     tuple(d for d in read if isinstance(d, ModelDescriptor)),
                     tuple(d for d in read if isinstance(d, BrokenDescriptor)))


def discover_descriptors(models_dir: Path) -> list[ModelDescriptor]:
    """The usable descriptors under `models_dir` (see :func:`scan_models_dir`).

    Raises BadInputError (65) naming every broken file when none is usable.
    """
    scan = scan_models_dir(models_dir)
    scan.require_usable()
    return list(scan.descriptors)


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


def preference(descriptor: ReleaseFacts) -> tuple:
    """Sort key of the choice rule (module docstring, step 2): higher is preferred."""
    release = descriptor.release
    return (descriptor.files_present, not descriptor.is_demo, descriptor.version_number,
            len(descriptor.modalities or ()), release.toordinal() if release else 0,
            str(descriptor.path))


def _why_not(other: ReleaseFacts, best: ReleaseFacts) -> str:
    """Why `other` ranks below `best`: the first sort key where they differ."""
    if isinstance(other, BrokenDescriptor):
        return f"broken descriptor: {other.problem}"
    if not other.files_present and best.files_present:
        missing = other.missing_folds
        return (f"{len(missing)} of {len(other.fold_names)} fold file(s) missing under "
                f"{other.directory}")
    if other.is_demo and not best.is_demo:
        return "demo model; a real model is available"
    if other.version_number != best.version_number:
        return f"older release ({other.version} < {best.version})"
    if len(other.modalities) != len(best.modalities):
        return (f"same version, uses fewer of the unit's images "
                f"({'+'.join(other.modalities)} < {'+'.join(best.modalities)})")
    if other.release != best.release:
        return f"older release date ({other.release_date} < {best.release_date})"
    return "same version and release date; the first path in sort order is used"


@dataclass(frozen=True)
class MarkerChoice:
    """The release chosen for one marker of one unit (None: skipped), why, and why not the
    marker's other releases ((label, descriptor path, reason) each)."""

    marker: str
    descriptor: ModelDescriptor | None
    reason: str
    others: tuple[tuple[str, str, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"chosen": self.descriptor.label if self.descriptor else None,
                "reason": self.reason,
                "not_used": [{"model": label, "descriptor": path, "reason": why}
                             for label, path, why in self.others]}

    def log_lines(self) -> list[str]:
        """One line for the choice, one per release not used."""
        head = (f"{self.marker}: using {self.descriptor.label} ({self.descriptor.path}): "
                f"{self.reason}" if self.descriptor else f"{self.marker}: skipped: {self.reason}")
        return [head] + [f"{self.marker}: not using {label} ({path}): {why}"
                         for label, path, why in self.others]


def _needs(descriptor: ReleaseFacts, available: set[str]) -> str | None:
    """Why the unit's images do not fit `descriptor` (None when they do, or are unknown)."""
    if descriptor.modalities is None:
        return None
    try:
        needed = roles_of(descriptor.modalities)
    except ValueError:
        return None
    if needed <= available:
        return None
    have = "+".join(sorted(available)) or "none"
    return f"needs {'+'.join(descriptor.modalities)}; the unit has {have}"


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


def choose_marker(marker: str, candidates: Sequence[ReleaseFacts],
                  available: set[str]) -> MarkerChoice:
    """The choice rule of the module docstring for one marker over `candidates` (valid and
    broken descriptors whose target is `marker`). Raises the error of a broken descriptor
    that ranks first."""
    if not candidates:
        return MarkerChoice(marker, None, f"no model descriptor with target {marker}")
    unfit = {id(d): why for d in candidates if (why := _needs(d, available))}
    usable = sorted((d for d in candidates if id(d) not in unfit), key=preference,
                    reverse=True)
    if not usable:
        needs = " or ".join(sorted({"+".join(d.modalities) for d in candidates
                                    if d.modalities}))
        have = "+".join(sorted(available)) or "none"
        return MarkerChoice(marker, None, f"{marker} models need {needs}; available: {have}",
                            tuple((d.label, str(d.path), unfit[id(d)]) for d in candidates))
    best = usable[0]
    if isinstance(best, BrokenDescriptor):
        raise type(best.error)(f"{best.error} (the release selected for {marker}; fix it, "
                               f"remove it, or choose another with --model {marker}=...)")
    reason = (f"newest release for the unit's images ({'+'.join(sorted(available))})"
              if len(usable) > 1 or unfit else "the only release for this marker")
    others = [(d.label, str(d.path), _why_not(d, best)) for d in usable[1:]]
    others += [(d.label, str(d.path), why) for d in candidates if (why := unfit.get(id(d)))]
    return MarkerChoice(marker, best, reason, tuple(others))  # type: ignore[arg-type]


def choose_models(descriptors: Sequence[ModelDescriptor], markers: Sequence[str],
                  available_modalities: Iterable[str],
                  overrides: Mapping[str, Path] | None = None,
                  models_dir: Path | None = None,
                  broken: Sequence[BrokenDescriptor] = ()) -> dict[str, MarkerChoice]:
    """One :class:`MarkerChoice` per requested marker (rule in the module docstring).

    `available_modalities` may hold descriptor names ("t1", "flair", "swi", "t2", "t2s") or
    InputSet roles ("t1w", "flair", "swi", "t2w"); "swi" and "t2s" both mean the SWI role.
    """
    available = roles_of(available_modalities)
    overrides = overrides or {}
    choices = {}
    for marker in markers:
        if marker in overrides:
            forced = _override(marker, overrides[marker], models_dir)
            candidates: list[ReleaseFacts] = [forced]
        else:
            candidates = [d for d in [*descriptors, *broken] if d.target == marker]
            if not any(isinstance(d, ModelDescriptor) for d in candidates):
                # a descriptor too broken to name its target may be this marker's model
                candidates += [d for d in broken if d.target is None]
        choice = choose_marker(marker, candidates, available)
        if marker in overrides and choice.descriptor is not None:
            choice = MarkerChoice(marker, choice.descriptor,
                                  f"forced with --model {marker}={overrides[marker]}")
        choices[marker] = choice
    return choices


def select_descriptors(descriptors: Sequence[ModelDescriptor], markers: Sequence[str],
                       available_modalities: Iterable[str],
                       overrides: Mapping[str, Path] | None = None,
                       models_dir: Path | None = None,
                       broken: Sequence[BrokenDescriptor] = (),
                       ) -> tuple[dict[str, ModelDescriptor], dict[str, str]]:
    """:func:`choose_models` as (chosen {marker: descriptor}, skipped {marker: reason})."""
    choices = choose_models(descriptors, markers, available_modalities, overrides, models_dir,
                            broken)
    for choice in choices.values():
        if choice.descriptor is not None:
            log.info("%s: using %s (%s)", choice.marker, choice.descriptor.label,
                     choice.descriptor.path)
    return ({m: c.descriptor for m, c in choices.items() if c.descriptor is not None},
            {m: c.reason for m, c in choices.items() if c.descriptor is None})


def warn_unused(scan: ModelScan, used: Iterable[Path]) -> None:
    """Warn once about each broken descriptor, and each release with missing fold files,
    that no unit uses (used ones stop the run instead)."""
    used = set(used)
    for broken in scan.broken:
        log.warning("%s: ignored: %s", broken.path, broken.problem)
    for descriptor in scan.descriptors:
        if descriptor.path not in used and descriptor.missing_folds:
            log.warning("%s: ignored: %d of %d fold file(s) missing under %s (%s)",
                        descriptor.path, len(descriptor.missing_folds), len(descriptor.files),
                        descriptor.directory, descriptor.missing_folds[0])
