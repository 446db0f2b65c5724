"""One phantom participant and its sessions, in memory (no files).

A participant has a fixed anatomy variation (size, deformation), lesion set, age, sex and
acquisition protocol (one grid preset per modality); each session adds its own head pose,
field-of-view placement and scanner effects. Seeds: the participant's random stream is
`SeedSequence([seed, 1, participant_index])`, a session's `[seed, 2, participant_index,
session_index]`, so any unit can be rebuilt alone and the same seed gives the same bytes.

Ground truth: the lesion classes live on the 1 mm canvas; each native grid gets them by
nearest-neighbour sampling at its voxel centres, through the very coordinates used to sample
the image (grids.sample). A voxel is in a marker's mask exactly when the image value at its
centre was computed from a lesion voxel of that marker.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from shiva_bids.synthetic.anatomy import load_anatomy
from shiva_bids.synthetic.contrasts import MARKER_CLASS, with_lesions
from shiva_bids.synthetic.grids import (GRID_PRESETS, GridPreset, NativeGrid, Pose,
                                        SubjectShape, Warp, preset_grid, sample)
from shiva_bids.synthetic.lesions import LESION_LOADS_DEFAULT, LesionMap, paint_lesions
from shiva_bids.synthetic.scanner import ScannerEffects, acquire, to_int16

MODALITIES: tuple[str, ...] = ("T1w", "FLAIR", "T2starw", "T2w")
MODALITY_CONTRAST: dict[str, str] = {"T1w": "t1", "FLAIR": "flair", "T2starw": "swi",
                                     "T2w": "t2"}
# `space-` label of each modality's native space in derivative names (the app writes CMB in
# space-SWI, DESIGN.md "Conventions").
SPACE_LABEL: dict[str, str] = {"T1w": "T1w", "FLAIR": "FLAIR", "T2starw": "SWI", "T2w": "T2w"}
BRAIN_BIT = 8  # label volumes: lesion class in bits 0-2, brain in bit 3
CLASS_BITS = 7


@dataclass(frozen=True)
class TruthLesion:
    """One ground-truth lesion of a unit, in that unit's scanner (world) coordinates."""

    marker: str  # PVS, WMH, CMB, LAC
    kind: str  # e.g. "periventricular cap", "deep", "centrum semiovale", "focus", "cavity"
    region: str  # lobar, deep WM, basal ganglia, infratentorial, periventricular
    centroid_mm: tuple[float, float, float]
    voxels: int  # 1 mm phantom voxels
    volume_mm3: float  # voxels times the participant's size factor (deformation ignored)
    # With a true segmentation (generate_dataset(segmentation=True), segmentation.py): the
    # lesion's region in its marker's scheme (SHIVA.md §9.3) and its depth inside it (mm).
    scheme_region: str | None = None
    boundary_mm: float | None = None


@dataclass(frozen=True, eq=False)
class Participant:
    """Everything fixed for one participant across sessions."""

    label: str
    index: int
    load: str
    age: int
    sex: str
    shape: SubjectShape
    lesions: LesionMap
    presets: dict[str, GridPreset]
    seed: int

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Canvas label volume: lesion class | brain bit."""
        out = self.lesions.classes.copy()
        out[load_anatomy().brain] |= BRAIN_BIT
        return out

    @functools.cached_property
    def canvases(self) -> dict[str, np.ndarray]:
        """The four contrasts with this participant's lesions, on the canvas."""
        return with_lesions(self.lesions.classes)


@dataclass(frozen=True, eq=False)
class NativeImage:
    """One acquired image: int16 data on its grid, and its truth labels on the same grid."""

    modality: str
    grid: NativeGrid
    data: np.ndarray
    labels: np.ndarray
    effects: ScannerEffects

    def brain_mask(self) -> np.ndarray:
        return ((self.labels & BRAIN_BIT) > 0).astype(np.uint8)

    def marker_mask(self, marker: str) -> np.ndarray:
        return ((self.labels & CLASS_BITS) == MARKER_CLASS[marker]).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class Session:
    """One participant-session: its warp, images and truth lesions in world coordinates."""

    participant: Participant
    label: str | None
    warp: Warp
    images: dict[str, NativeImage] = field(default_factory=dict)
    lesions: tuple[TruthLesion, ...] = ()


def participant_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, index])


def session_rng(seed: int, index: int, session: int) -> np.random.Generator:
    return np.random.default_rng([seed, 2, index, session])


def make_participant(seed: int, index: int, load: str | None = None,
                     label: str | None = None) -> Participant:
    """Participant `index` (0-based) of the dataset with this seed."""
    rng = participant_rng(seed, index)
    load = load or LESION_LOADS_DEFAULT[index % len(LESION_LOADS_DEFAULT)]
    age = int(rng.integers(55, 86))
    sex = "F" if rng.random() < 0.5 else "M"
    shape = SubjectShape.random(rng)
    presets = {m: GRID_PRESETS[m][int(rng.integers(len(GRID_PRESETS[m])))] for m in MODALITIES}
    lesions = paint_lesions(load_anatomy(), load, rng)
    return Participant(label=label or f"{index + 1:02d}", index=index, load=load, age=age,
                       sex=sex, shape=shape, lesions=lesions, presets=presets, seed=seed)


def make_warp(shape: SubjectShape, pose: Pose) -> Warp:
    anatomy = load_anatomy()
    return Warp(shape=shape, pose=pose, brain_center=anatomy.brain_center,
                canvas_origin=anatomy.affine[:3, 3].copy())


def session_geometry(participant: Participant, session_index: int
                     ) -> tuple[Warp, dict[str, tuple[NativeGrid, ScannerEffects, int]]]:
    """The session's warp and, per modality, its grid, scanner effects and image seed (drawn
    in a fixed order, so the random stream does not depend on which modalities are written;
    a benchmark can rebuild a session's geometry without sampling its images)."""
    rng = session_rng(participant.seed, participant.index, session_index)
    warp = make_warp(participant.shape, Pose.random(rng))
    geometry = {}
    for modality in MODALITIES:
        grid = preset_grid(participant.presets[modality], warp.pose.translation, rng)
        effects = ScannerEffects.random(rng)
        geometry[modality] = (grid, effects, int(rng.integers(2 ** 63)))
    return warp, geometry


def acquire_session(participant: Participant, session_index: int, label: str | None,
                    modalities=MODALITIES) -> Session:
    """Sample, and add scanner effects to, each modality of one session."""
    warp, geometry = session_geometry(participant, session_index)
    images = {}
    for modality, (grid, effects, seed) in geometry.items():
        image_rng = np.random.default_rng(seed)
        if modality not in modalities:
            continue
        contrast = MODALITY_CONTRAST[modality]
        sampled, labels = sample({contrast: participant.canvases[contrast]},
                                 participant.labels, grid, warp)
        data = to_int16(acquire(sampled[contrast], grid.zooms, effects, image_rng))
        images[modality] = NativeImage(modality, grid, data, labels, effects)
    return Session(participant=participant, label=label, warp=warp, images=images,
                   lesions=truth_lesions(participant, warp))


def truth_lesions(participant: Participant, warp: Warp) -> tuple[TruthLesion, ...]:
    """The participant's marker lesions with centroids in this session's world mm."""
    painted = participant.lesions.lesions
    if not painted:
        return ()
    world = warp.canvas_to_world(np.array([les.centroid for les in painted]))
    size = float(np.prod(participant.shape.scale))
    return tuple(TruthLesion(marker=les.marker, kind=les.kind, region=les.region,
                             centroid_mm=tuple(round(float(v), 2) for v in pos),
                             voxels=les.voxels, volume_mm3=round(les.voxels * size, 2))
                 for les, pos in zip(painted, world))
