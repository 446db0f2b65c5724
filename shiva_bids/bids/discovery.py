"""Input discovery: the BIDS dataset -> one :class:`InputSet` per participant/session.

Raw images are found with pybids (DESIGN.md "Data flow"; reference/BIDS_APPS.md §1.3):

* the layout is built with ``validate=False``: pybids' validating indexer drops names the
  schema does not know, such as the common but non-standard ``_swi.nii.gz``; without
  validation every ``sub-*`` file is indexed and ``suffix="swi"`` finds it. The
  ``derivatives/``, ``code/``, ``sourcedata/``, ``models/`` and ``stimuli/`` folders are
  ignored so that, e.g., an fMRIPrep ``desc-preproc_T1w`` is never taken for a raw T1w, and
  pybids never enters dot-folders, so a DataLad clone's ``.git/annex`` is not walked
  (tests/test_annex.py; its un-fetched files are checked by shiva_bids.bids.annex);
* metadata (JSON sidecars) is not indexed: discovery needs names only, and skipping it
  halves indexing time (reference/MEASUREMENTS.md, pybids);
* with ``--bids-database-dir`` the index is saved once and re-loaded by later calls
  (``<dir>/shiva-bids-<key>``, keyed by the dataset path so it is not shared by accident
  with another dataset or another tool's differently configured index).

Default queries per role (``datatype=anat``, extension ``.nii``/``.nii.gz``): t1w
``suffix=T1w``; flair ``suffix=FLAIR``; swi ``suffix`` in ``T2starw``, ``swi`` with ``part``
absent or ``mag`` (phase images are never inputs); t2w ``suffix=T2w``. ``--bids-filter-file``
entries (keys t1w, flair, swi, t2w) override these entity by entity, with fMRIPrep's
semantics: ``null`` -> ``Query.NONE`` (entity must be absent), ``"*"`` -> any value.

When several files match a role, :func:`choose` picks one deterministically and the reason is
logged and stored in ``InputSet.choices`` (see its docstring for the rule).

Precomputed brain masks and segmentations come from ``--derivatives NAME=PATH`` datasets,
found by scanning the unit's own folders (no index of a possibly huge fMRIPrep dataset is
built); see :func:`find_derivatives`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from shiva_bids.bids.access import folder_pattern, unreadable_folders
from shiva_bids.bids.derivatives import parse_entities
from shiva_bids.bids.inputs import ROLES, InputSet
from shiva_bids.config import RunConfig
from shiva_bids.errors import MissingInputError, NothingSelectedError, OutputError, UsageError

log = logging.getLogger(__name__)

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
# Default pybids query per role (see the module docstring).
DEFAULT_QUERIES: dict[str, dict[str, Any]] = {
    "t1w": {"datatype": "anat", "suffix": "T1w"},
    "flair": {"datatype": "anat", "suffix": "FLAIR"},
    "swi": {"datatype": "anat", "suffix": ["T2starw", "swi"], "part": [None, "mag"]},
    "t2w": {"datatype": "anat", "suffix": "T2w"},
}
# Folders of a raw dataset that never hold raw inputs.
IGNORED_FOLDERS: tuple[str, ...] = ("code", "derivatives", "models", "sourcedata", "stimuli")
# Derivative brain masks: `desc-brain_mask` in native space (no space, or space-T1w / orig).
MASK_SPACES: tuple[str | None, ...] = (None, "T1w", "orig")
# Derivative segmentations with FreeSurfer labels, best first (desc values, case-insensitive):
# fMRIPrep/sMRIPrep `desc-aseg_dseg`, `desc-aparcaseg_dseg`, SynthSeg-style `desc-synthseg`.
# fMRIPrep's plain `_dseg` (3 tissue classes, not a parcellation) is not used.
DSEG_DESCS: tuple[str, ...] = ("aseg", "aparcaseg", "synthseg")
# FreeSurfer subjects-directory segmentations (`<dir>/sub-X[_ses-Y]/mri/<name>`), best first.
FREESURFER_SEGS: tuple[str, ...] = ("aparc+aseg.mgz", "aseg.mgz", "aparc+aseg.nii.gz",
                                    "aseg.nii.gz", "aparc+aseg.nii", "aseg.nii")


@dataclass(frozen=True)
class Unit:
    """One participant/session to process (session None: the dataset has no sessions)."""

    subject: str
    session: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A file that matched a role query, with its file-name entities (short keys: acq, run...)."""

    path: Path
    entities: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the layout

def database_path(database_dir: Path, bids_dir: Path) -> Path:
    """Folder of this dataset's saved pybids index inside `--bids-database-dir`."""
    key = hashlib.sha1(f"{bids_dir.resolve()}|validate=0|metadata=0".encode()).hexdigest()[:12]
    return database_dir / f"shiva-bids-{key}"


def _indexer(bids_dir: Path):
    """pybids' indexer: no validation, no metadata, the non-raw folders ignored, and so are
    folders this user cannot read (pybids would stop on them; the units inside fail one by
    one with a clear line, shiva_bids.participant.unit_folder_error)."""
    from bids.layout import BIDSLayoutIndexer

    ignore = [re.compile(rf"^/({'|'.join(IGNORED_FOLDERS)})/")]
    unreadable = unreadable_folders(bids_dir, skip=IGNORED_FOLDERS)
    if unreadable:
        log.info("%d folder(s) of %s cannot be read and are not searched: %s",
                 len(unreadable), bids_dir, ", ".join(str(f) for f in unreadable[:5]))
        ignore.append(folder_pattern(bids_dir, unreadable))
    return BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore)


def open_layout(bids_dir: Path, database_dir: Path | None = None):
    """The pybids layout of `bids_dir`, indexed once and re-used through `database_dir`.

    A new index is built in a temporary folder and renamed into place, so concurrent jobs
    (one per participant on a cluster) never read a half-written database; the first
    complete one wins and the others re-use it.
    """
    from bids import BIDSLayout

    if database_dir is None:
        return BIDSLayout(bids_dir, validate=False, indexer=_indexer(bids_dir))
    target = database_path(database_dir, bids_dir)
    if (target / "layout_index.sqlite").is_file():
        log.info("re-using the pybids index %s", target)
        return BIDSLayout(bids_dir, validate=False, database_path=target)
    try:
        database_dir.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=database_dir))
    except OSError as exc:
        raise OutputError(f"--bids-database-dir {database_dir}: cannot be created or written "
                          f"({exc.strerror or exc})") from exc
    log.info("indexing %s into %s", bids_dir, target)
    BIDSLayout(bids_dir, validate=False, indexer=_indexer(bids_dir), database_path=building)
    try:
        os.rename(building, target)
    except OSError:  # another job finished first: use its index
        shutil.rmtree(building, ignore_errors=True)
    return BIDSLayout(bids_dir, validate=False, database_path=target)


# --------------------------------------------------------------------------- units

def _format_labels(kind: str, labels: Iterable[str]) -> str:
    return ", ".join(f"{kind}-{label}" for label in labels)


def _folder_labels(folder: Path, prefix: str) -> list[str]:
    return sorted(p.name[len(prefix):] for p in folder.glob(f"{prefix}*") if p.is_dir())


def folder_subjects(bids_dir: Path) -> list[str]:
    """Participant labels: the dataset's `sub-*` folders. BIDS defines participants and
    sessions by folders, and listing them is far cheaper than pybids' `get_subjects()`, which
    loads every indexed file (4 s for 150 participants x 6 files here)."""
    return _folder_labels(bids_dir, "sub-")


def folder_sessions(bids_dir: Path, subject: str) -> list[str]:
    """Session labels of a participant: its `ses-*` folders."""
    return _folder_labels(bids_dir / f"sub-{subject}", "ses-")


def select_units(bids_dir: Path, participant_labels: Sequence[str] = (),
                 session_labels: Sequence[str] = ()) -> list[Unit]:
    """The participant/session units selected by the labels, sorted.

    Every session of a participant is its own unit; a participant without sessions is one
    unit with `session=None`. A label that matches nothing raises
    :class:`NothingSelectedError` (exit 18) naming it.
    """
    root = Path(bids_dir)
    subjects = folder_subjects(root)
    if not subjects:
        raise MissingInputError(f"{root}: no sub-* folder in the dataset")
    unknown = [label for label in participant_labels if label not in subjects]
    if unknown:
        raise NothingSelectedError(f"participant label(s) not found in {root}: "
                                   f"{_format_labels('sub', unknown)}")
    units: list[Unit] = []
    seen_sessions: set[str] = set()
    for subject in sorted(participant_labels or subjects):
        sessions = folder_sessions(root, subject)
        seen_sessions.update(sessions)
        if session_labels:
            units.extend(Unit(subject, s) for s in sessions if s in session_labels)
        elif sessions:
            units.extend(Unit(subject, s) for s in sessions)
        else:
            units.append(Unit(subject))
    unknown = [label for label in session_labels if label not in seen_sessions]
    if unknown:
        raise NothingSelectedError(f"session label(s) not found for the selected participants "
                                   f"in {root}: {_format_labels('ses', unknown)}")
    if not units:
        raise NothingSelectedError("the participant and session labels select no "
                                   "participant/session together")
    return units


# --------------------------------------------------------------------------- queries

def _filter_value(value: Any) -> Any:
    """fMRIPrep's filter-file semantics: null -> Query.NONE, "*" -> any value."""
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.REQUIRED  # pybids' name for fMRIPrep's Query.ANY
    if isinstance(value, list):
        return [_filter_value(v) for v in value]
    return value


def check_filter_entities(layout, filters: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Every key of the filter file must be an entity pybids knows (64 otherwise, naming the
    key and the closest entity), instead of pybids' error from deep inside the query."""
    known = set(layout.get_entities())
    for role, entities in (filters or {}).items():
        for key in entities:
            if key not in known and key not in ("subject", "session"):
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else \
                    f"; known entities: {', '.join(sorted(known))}"
                raise UsageError(f"--bids-filter-file: {key!r} in the {role} filter is not a "
                                 f"BIDS entity{hint}")


def check_filters_select(filters: Mapping[str, Mapping[str, Any]] | None,
                         found: Mapping[Unit, tuple[dict[str, Path | None], dict]]) -> None:
    """A role filtered by the filter file must match a file of some selected unit (18
    otherwise, quoting the filter): a filter that selects nothing is a mistake, not a dataset
    whose participants all lack the image."""
    for role, entities in (filters or {}).items():
        if not any(paths[role] for paths, _ in found.values()):
            raise NothingSelectedError(f"--bids-filter-file: the {role} filter "
                                       f"{json.dumps(entities)} selects no file of the "
                                       f"selected participants/sessions")


def role_queries(filters: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict]:
    """Per-role pybids queries: the defaults, overridden entity by entity by the filter file.

    `subject`/`session` in a filter are ignored: the units (labels) decide them.
    """
    queries: dict[str, dict] = {}
    for role in ROLES:
        query = {"extension": list(NIFTI_EXTENSIONS), **DEFAULT_QUERIES[role]}
        for key, value in (filters or {}).get(role, {}).items():
            if key in ("subject", "session"):
                log.warning("--bids-filter-file: %r in %s is ignored; use --participant-label "
                            "/ --session-label", key, role)
                continue
            query[key] = value
        queries[role] = {k: _filter_value(v) for k, v in query.items()}
    return queries


# Suffixes of one role in order of preference (SWI before T2starw: SHIVA's CMB models are
# trained on SWI, reference/SHIVA.md §1.1); others rank 0.
SUFFIX_RANK: dict[str, int] = {"swi": 0, "T2starw": 1}


def _choice_key(candidate: Candidate) -> tuple:
    ent = candidate.entities
    run = ent.get("run")
    suffix = candidate.path.name.split(".", 1)[0].rsplit("_", 1)[-1]
    return (SUFFIX_RANK.get(suffix, 0), "ce" in ent, "rec" in ent, "acq" in ent,
            int(run) if run is not None else -1, candidate.path.name, str(candidate.path))


def choose(candidates: Sequence[Candidate]) -> tuple[Candidate, str] | None:
    """Pick one file among the candidates of a role; returns it and the reason, or None.

    The rule, in order: `swi` before `T2starw`; no contrast agent (`ce-`) before
    contrast-enhanced (the SHIVA models were trained on non-enhanced images); no `rec-` before
    `rec-`; no `acq-` before `acq-`; lowest `run` (no run first); then file name (so `.nii`
    before `.nii.gz`, alphabetical `acq-` values). Narrow the choice with `--bids-filter-file`.
    """
    if not candidates:
        return None
    ordered = sorted(candidates, key=_choice_key)
    best = ordered[0]
    if len(ordered) == 1:
        return best, "only match"
    others = ", ".join(c.path.name for c in ordered[1:])
    return best, (f"chose {best.path.name} among {len(ordered)} matches (rule: swi before "
                  f"T2starw, no ce, no rec, no acq, lowest run, name); not used: {others}")


def _unit_of(filename: str) -> Unit:
    entities = parse_entities(filename)
    return Unit(entities.get("sub", ""), entities.get("ses"))


def find_raw_inputs(layout, units: Sequence[Unit], queries: Mapping[str, Mapping[str, Any]]
                    ) -> dict[Unit, tuple[dict[str, Path | None], dict[str, str]]]:
    """For each unit, the image chosen per role and the reasons of multi-match choices.

    One pybids query per role for all units (a query costs ~0.1 s whatever it returns, so
    per-unit queries would dominate on large datasets); files are then grouped by their
    `sub`/`ses` entities. Entities are read from file names, not from the index.
    """
    subjects = sorted({unit.subject for unit in units})
    candidates: dict[tuple[Unit, str], list[Candidate]] = {}
    for role in ROLES:
        for filename in layout.get(return_type="filename", subject=subjects, **queries[role]):
            path = Path(filename)
            candidates.setdefault((_unit_of(path.name), role), []).append(
                Candidate(path, parse_entities(path.name)))
    found = {}
    for unit in units:
        paths: dict[str, Path | None] = {}
        choices: dict[str, str] = {}
        for role in ROLES:
            matches = candidates.get((unit, role), [])
            picked = choose(matches)
            paths[role] = picked[0].path if picked else None
            if picked and len(matches) > 1:
                choices[role] = picked[1]
                log.info("%s %s: %s", _unit_id(unit), role, picked[1])
        found[unit] = (paths, choices)
    return found


def _unit_id(unit: Unit) -> str:
    return f"sub-{unit.subject}" + (f"_ses-{unit.session}" if unit.session else "")


# --------------------------------------------------------------------------- derivatives

@dataclass(frozen=True)
class DerivativeMatch:
    """A brain mask or segmentation found in a `--derivatives` dataset."""

    path: Path
    source: str  # NAME of `--derivatives NAME=PATH`
    note: str  # how it was found, for logs and `InputSet.choices`


def _unit_folders(root: Path, unit: Unit) -> list[Path]:
    """Where a unit's anatomical derivatives may be: the session's `anat/` first, then the
    subject's (fMRIPrep writes anatomical outputs per subject even with sessions)."""
    subject = root / f"sub-{unit.subject}"
    folders = [subject / f"ses-{unit.session}" / "anat"] if unit.session else []
    return folders + [subject / "anat"]


def _nifti_entities(folder: Path, unit: Unit) -> list[tuple[Path, dict[str, str], str]]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if not name.endswith(NIFTI_EXTENSIONS) or not name.startswith(f"sub-{unit.subject}_"):
            continue
        entities = parse_entities(name)
        if unit.session and entities.get("ses", unit.session) != unit.session:
            continue
        suffix = name.split(".", 1)[0].rsplit("_", 1)[-1]
        found.append((path, entities, suffix))
    return found


def _pick_mask(files) -> Path | None:
    masks = [(MASK_SPACES.index(e.get("space")), p.name, p) for p, e, s in files
             if s == "mask" and e.get("desc") == "brain" and e.get("space") in MASK_SPACES
             and "label" not in e]
    return min(masks)[2] if masks else None


def _pick_dseg(files) -> Path | None:
    segs = []
    for path, entities, suffix in files:
        desc = entities.get("desc", "").lower()
        if entities.get("space") not in MASK_SPACES:
            continue
        if suffix == "dseg" and desc in DSEG_DESCS:
            segs.append((DSEG_DESCS.index(desc), path.name, path))
        elif "synthseg" in path.name.lower() and suffix != "mask":
            segs.append((len(DSEG_DESCS), path.name, path))
    return min(segs)[2] if segs else None


def _freesurfer_dseg(root: Path, unit: Unit) -> Path | None:
    """`aparc+aseg`/`aseg` in a FreeSurfer subjects directory (`sub-X_ses-Y` then `sub-X`)."""
    names = ([f"sub-{unit.subject}_ses-{unit.session}"] if unit.session else []) \
        + [f"sub-{unit.subject}"]
    for name in names:
        for seg in FREESURFER_SEGS:
            if (root / name / "mri" / seg).is_file():
                return root / name / "mri" / seg
    return None


def find_derivatives(derivatives: Mapping[str, Path], unit: Unit
                     ) -> dict[str, DerivativeMatch]:
    """Brain mask and segmentation for one unit from the `--derivatives` datasets.

    Datasets are searched in the order given; the first match per kind wins. In each:
    the session folder before the subject folder; masks `desc-brain_mask` with no space,
    then `space-T1w`, then `space-orig`; segmentations `desc-aseg_dseg`, `desc-aparcaseg_dseg`,
    `desc-synthseg_dseg`, then any file named `*synthseg*`; and for a FreeSurfer subjects
    directory `sub-X[_ses-Y]/mri/aparc+aseg.mgz` then `aseg.mgz` (also `.nii[.gz]`).
    A subject-level file used for a session is noted: its grid is checked downstream.
    """
    found: dict[str, DerivativeMatch] = {}
    for name, root in derivatives.items():
        for folder in _unit_folders(root, unit):
            files = _nifti_entities(folder, unit)
            where = "session" if folder.parent.name.startswith("ses-") else "subject"
            if unit.session and where == "subject":
                where = "subject (used for this session)"
            for kind, pick in (("brain_mask", _pick_mask), ("dseg", _pick_dseg)):
                path = pick(files) if kind not in found else None
                if path is not None:
                    found[kind] = DerivativeMatch(path, name, f"from --derivatives {name}, "
                                                              f"{where} folder: {path.name}")
        if "dseg" not in found:
            path = _freesurfer_dseg(root, unit)
            if path is not None:
                found["dseg"] = DerivativeMatch(
                    path, name, f"from --derivatives {name}, FreeSurfer {path.name}")
    return found


# --------------------------------------------------------------------------- entry points

def find_inputs(layout, participant_labels: Sequence[str] = (),
                session_labels: Sequence[str] = (),
                filters: Mapping[str, Mapping[str, Any]] | None = None,
                derivatives: Mapping[str, Path] | None = None) -> list[InputSet]:
    """One :class:`InputSet` per selected participant/session of an opened layout.

    Units whose images are all missing still get an InputSet (the caller decides what a unit
    needs and logs why it is skipped).
    """
    queries = role_queries(filters)
    for name, root in (derivatives or {}).items():
        if not root.is_dir():
            raise MissingInputError(f"--derivatives {name}={root}: no such folder")
    units = select_units(Path(layout.root), participant_labels, session_labels)
    check_filter_entities(layout, filters)
    found = find_raw_inputs(layout, units, queries)
    check_filters_select(filters, found)
    inputs = []
    for unit, (paths, choices) in found.items():
        extra = find_derivatives(derivatives or {}, unit)
        for kind, match in extra.items():
            choices[kind] = match.note
        inputs.append(InputSet(subject=unit.subject, session=unit.session, **paths,
                               brain_mask=extra["brain_mask"].path if "brain_mask" in extra
                               else None,
                               dseg=extra["dseg"].path if "dseg" in extra else None,
                               choices=choices))
    return inputs


def discover_inputs(config: RunConfig) -> list[InputSet]:
    """The inputs of every participant/session selected by the run configuration."""
    layout = open_layout(config.bids_dir, config.bids_database_dir)
    return find_inputs(layout, config.participant_labels, config.session_labels,
                       config.bids_filters, config.derivatives)


__all__ = ["discover_inputs", "find_inputs", "open_layout", "select_units", "role_queries",
           "choose", "find_raw_inputs", "find_derivatives", "database_path", "folder_subjects",
           "folder_sessions", "Unit", "Candidate", "DerivativeMatch", "DEFAULT_QUERIES"]
