"""Region maps in native space and the assignment of clusters to regions.

Sources, in order of preference (issue #6):

1. a FreeSurfer-style segmentation (`--derivatives`): the derived parcellation
   (reference/SHIVA.md §9.1, `parcellation.py`) mapped to the marker's scheme (§9.3: PVS, WMH,
   MARS), hemispheres separate;
2. the same from the template atlas's `aparc+aseg` warped onto the participant
   (`atlases.py`, chosen in `sources.py`): a :class:`Parcellation` built once per unit and
   resampled (nearest neighbour) onto any reference grid (native T1w/SWI, model grid);
   `RegionMap.source` is "atlas:<name>" and the map is approximate, so the outside-brain
   filter keeps using the brain mask;
3. an atlas with its own labels in template space warped with ANTs transforms (:class:`Atlas`,
   split into hemispheres on the template's x = 0 plane when asked);
4. nothing: whole-brain statistics only (`RegionMap.source == "none"`).

Cluster assignment (§9.2): winner-takes-all over the cluster's voxels; background (0) never
wins. SHiVAi breaks ties with an unseeded random draw; shiva-bids takes the **lowest region
label** among the tied ones, so results are deterministic. WMH priority (§9.2, segmentation
source only): a cluster touching Left or Right PV WM goes to whichever of the two it overlaps
more (tie: left), overriding the vote.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from shiva_bids.postprocessing import parcellation as parc
from shiva_bids.postprocessing.grids import resample_nearest, same_grid
from shiva_bids.volume import Volume

SCHEMES: tuple[str, ...] = ("pvs", "wmh", "mars")
WHOLE_BRAIN = "Whole brain"
SIDES = ("Left", "Right")

# §9.3 schemes: (region name, derived labels of the left hemisphere). Region labels are
# 1..k for the left, k+1..2k for the right, 2k+1 for the brainstem (SHiVAi's numbering).
# 61-64 are shiva-bids' unparcellated-cortex labels (parcellation.py).
_LOBAR_GM_JC = (1, 2, 5, 6, 9, 10, 13, 14)
_LOBAR_DEEP = (3, 7, 11, 15)
_LOBAR_PV = (4, 8, 12, 16)
SCHEME_TABLES: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "pvs": (
        ("Deep WM", tuple(range(1, 17)) + (46, 61, 62, 63, 64)),
        ("Basal Gang.", (17, 40, 41, 44, 45, 78, 79, 80)),
        ("Hippoc.", (43,)),
        ("Cerebellar", (47,)),
        ("Ventral DC", (42,)),
    ),
    "wmh": (
        ("Shallow WM", _LOBAR_GM_JC + (17, 45, 61, 62)),
        ("Deep WM", _LOBAR_DEEP + (44, 46, 40, 41, 63)),
        ("PV WM", _LOBAR_PV + (78, 79, 80, 64)),
        ("Cerebellar", (47,)),
    ),
    # SHiVAi puts internal-capsule PV (80) in "Insula" (SHIVA.md §9.3, §14 item 9, a slip);
    # shiva-bids puts it in "Int. Caps.". "Lobar" holds unparcellated cortex (no Desikan).
    "mars": (
        ("Frontal", (1, 2)),
        ("Parietal", (5, 6)),
        ("Temporal", (9, 10)),
        ("Occipital", (13, 14)),
        ("Insula", (17,)),
        ("Basal Gang.", (40, 78)),
        ("Thalamus", (41, 79)),
        ("Ventral DC", (42,)),
        ("Hippoc.", (43,)),
        ("Int. Caps.", (44, 80)),
        ("Ext. Caps.", (45,)),
        ("Corp. Call.", (46,)),
        ("D&PV WM", _LOBAR_DEEP + _LOBAR_PV + (63, 64)),
        ("Cerebellum", (47,)),
        ("Lobar", (61, 62)),
    ),
}
# Regions that exist only for some segmentations (dropped from names when not applicable).
_UNPARCELLATED_ONLY = {"Lobar"}
_PARCELLATED_ONLY = {"Frontal", "Parietal", "Temporal", "Occipital"}
# WMH priority regions (§9.2): Left/Right PV WM.
WMH_PRIORITY_REGION = "PV WM"


@dataclass(frozen=True)
class RegionMap:
    """Integer region labels on the native grid and their names.

    `source` is "dseg:<path or name>", "atlas:<name>" or "none". `brain_without_csf` is the
    "inside the brain" mask for the outside-brain cluster filter when the region source
    knows where CSF is (a segmentation); None otherwise (use the brain mask).
    `priority` lists region labels that override the vote (WMH periventricular rule).
    `provenance` describes a template atlas (sidecar "RegionAtlas"), None otherwise.
    """

    labels: Volume
    names: Mapping[int, str]
    source: str
    scheme: str
    brain_without_csf: Volume | None = None
    priority: tuple[int, ...] = ()
    provenance: Mapping[str, Any] | None = None

    @property
    def whole_brain_only(self) -> bool:
        return self.source == "none"

    def name(self, label: int) -> str:
        """Region name of a label (SHiVAi's `Label_<n>` for unknown labels, "n/a" for 0)."""
        if label == 0:
            return "n/a"
        return self.names.get(int(label), f"Label_{int(label)}")


@dataclass(frozen=True)
class Atlas:
    """A labelled atlas in template space and how to bring it to the native grid.

    `transforms` is the ANTs transform list that `ants.apply_transforms(fixed=native,
    moving=atlas)` takes: the `fwdtransforms` of `ants.registration(fixed=native,
    moving=template)`, or its `invtransforms` with `invert` when the template was the fixed
    image. Empty means the atlas and the native image share world coordinates. `lateralize`
    splits every label into Left/Right on the template's x = 0 plane.
    """

    image: Volume | Path
    names: Mapping[int, str]
    name: str
    transforms: Sequence[str] = field(default_factory=tuple)
    lateralize: bool = True
    invert: Sequence[bool] | None = None  # `whichtoinvert` of ants.apply_transforms


def scheme_names(scheme: str, parcellated: bool = True) -> dict[int, str]:
    """Region label -> name of a §9.3 scheme (SHiVAi order; brainstem last)."""
    table = SCHEME_TABLES[scheme]
    skip = _PARCELLATED_ONLY if not parcellated else _UNPARCELLATED_ONLY
    regions = [name for name, _ in table if name not in skip]
    names = {i + 1: f"Left {r}" for i, r in enumerate(regions)}
    names.update({i + 1 + len(regions): f"Right {r}" for i, r in enumerate(regions)})
    names[2 * len(regions) + 1] = "Brainstem"
    return names


def scheme_from_derived(derived: np.ndarray, scheme: str,
                        parcellated: bool = True) -> tuple[np.ndarray, dict[int, str]]:
    """Map derived-parcellation labels (§9.1) to a scheme's region labels (§9.3)."""
    if scheme not in SCHEME_TABLES:
        raise ValueError(f"unknown region scheme {scheme!r} (expected one of {SCHEMES})")
    names = scheme_names(scheme, parcellated)
    by_name = {v: k for k, v in names.items()}
    lut = np.zeros(max(int(derived.max(initial=0)), 100) + 1, dtype=np.int16)
    for region, codes in SCHEME_TABLES[scheme]:
        for side_index, side in enumerate(SIDES):
            label = by_name.get(f"{side} {region}")
            if label is None:
                continue
            for code in codes:
                lut[code if side_index == 0 else parc.right_of(code)] = label
    lut[parc.D_BRAINSTEM] = by_name["Brainstem"]
    return lut[derived], names


@dataclass(frozen=True)
class Parcellation:
    """The §9.1 derived parcellation of one unit's segmentation (a user's, or the template
    atlas warped onto the participant), built once per unit and put on any reference grid by
    nearest neighbour (:func:`build_regions`). `source` becomes `RegionMap.source`;
    `approximate` (atlas-based) keeps the brain mask for the outside-brain filter."""

    derived: Volume
    parcellated: bool
    source: str
    approximate: bool = False
    provenance: Mapping[str, Any] | None = None


def make_parcellation(dseg: Volume, source: str, approximate: bool = False,
                      provenance: Mapping[str, Any] | None = None) -> Parcellation:
    """Derive the §9.1 parcellation of a FreeSurfer-labelled `dseg` (any grid)."""
    return Parcellation(parc.derived_parcellation(dseg), parc.has_cortical_parcels(dseg),
                        source, approximate, provenance)


def _scheme_map(scheme: str, native: Volume, parcellated: bool, source: str,
                exact: bool = True, provenance: Mapping[str, Any] | None = None) -> RegionMap:
    labels, names = scheme_from_derived(native.data, scheme, parcellated)
    priority: tuple[int, ...] = ()
    if scheme == "wmh":
        priority = tuple(k for k, v in names.items() if v.endswith(WMH_PRIORITY_REGION))
    inside = native.with_data((labels > 0).astype(np.uint8)) if exact else None
    return RegionMap(native.with_data(labels), names, source, scheme, inside, priority,
                     provenance)


def _regions_from_dseg(scheme: str, reference: Volume, dseg: Volume, source: str,
                       derived: Volume | None, transforms: Sequence[str]) -> RegionMap:
    native, parcellated = derived_on_grid(dseg, reference, derived, transforms)
    return _scheme_map(scheme, native, parcellated, source)


# The last (parcellation, reference grid, transforms, invert) -> derived labels on that grid:
# the markers sharing a space (PVS, WMH, LAC on the T1w grid) resample it once.
_GRID_CACHE: dict[str, tuple[Parcellation, Volume, tuple, tuple | None, Volume]] = {}


def _parcellation_on_grid(parcellation: Parcellation, reference: Volume,
                          transforms: Sequence[str], invert: Sequence[bool] | None) -> Volume:
    transforms, invert = tuple(transforms), None if invert is None else tuple(invert)
    hit = _GRID_CACHE.get("last")
    if hit is not None and hit[0] is parcellation and same_grid(hit[1], reference) \
            and hit[2] == transforms and hit[3] == invert:
        return hit[4]
    native = warp_atlas(parcellation.derived, reference, transforms, invert,
                        interpolator="nearestNeighbor")
    grid = Volume(np.broadcast_to(np.zeros(1, np.uint8), reference.shape[:3]), reference.affine)
    _GRID_CACHE["last"] = (parcellation, grid, transforms, invert, native)
    return native


# The last (segmentation, reference grid, transforms) -> (derived parcellation on that grid,
# parcellated).
_DERIVED_CACHE: dict[str, tuple[Volume, Volume, tuple[str, ...], Volume, bool]] = {}


def derived_on_grid(dseg: Volume, reference: Volume, derived: Volume | None = None,
                    transforms: Sequence[str] = ()) -> tuple[Volume, bool]:
    """The derived parcellation of `dseg` on the `reference` grid and whether `dseg` has
    cortical parcels. Remembered for the last segmentation and grid, so that the three schemes
    of one participant derive and resample it once (the cache holds the segmentation object
    itself, so its identity cannot be reused while cached). `derived` may pass a precomputed
    `parcellation.derived_parcellation(dseg)`. `transforms` (ANTs, reference -> segmentation
    space, e.g. the inverse SWI->T1 rigid for CMB, SHIVA.md §7) map it when the two images do
    not share world coordinates."""
    transforms = tuple(transforms)
    hit = _DERIVED_CACHE.get("last")
    if hit is not None and hit[0] is dseg and same_grid(hit[1], reference) \
            and hit[2] == transforms:
        return hit[3], hit[4]
    if derived is None:
        derived = parc.derived_parcellation(dseg)
    native = warp_atlas(derived, reference, transforms, interpolator="nearestNeighbor")
    parcellated = parc.has_cortical_parcels(dseg)
    grid = Volume(np.broadcast_to(np.zeros(1, np.uint8), reference.shape[:3]), reference.affine)
    _DERIVED_CACHE["last"] = (dseg, grid, transforms, native, parcellated)
    return native, parcellated


def _load(image: Volume | Path) -> Volume:
    if isinstance(image, Volume):
        return image
    return Volume.from_nifti(nib.load(str(image)), dtype=np.int32)


def lateralize(atlas: Volume, names: Mapping[int, str]) -> tuple[Volume, dict[int, str]]:
    """Split each label into Left (x < 0, RAS) and Right (x >= 0): label L -> 2L-1 / 2L."""
    data = np.rint(atlas.data).astype(np.int32)
    ijk = np.indices(data.shape[:3]).reshape(3, -1)
    x = (atlas.affine[0, :3] @ ijk + atlas.affine[0, 3]).reshape(data.shape[:3])
    out = np.where(data > 0, 2 * data - (x < 0), 0).astype(np.int32)
    new_names: dict[int, str] = {}
    for label, name in names.items():
        new_names[2 * label - 1] = f"Left {name}"
        new_names[2 * label] = f"Right {name}"
    return atlas.with_data(out), new_names


def warp_atlas(atlas: Volume | Path, reference: Volume, transforms: Sequence[str] = (),
               invert: Sequence[bool] | None = None,
               interpolator: str = "genericLabel") -> Volume:
    """Labels of `atlas` on the grid of `reference` (nearest neighbour / an ANTs label
    interpolator).

    With no transforms the atlas is resampled through world coordinates; otherwise
    `ants.apply_transforms(fixed=reference, moving=atlas, transformlist=transforms,
    whichtoinvert=invert, interpolator=interpolator)`. The transforms apply to the reference's
    points in list order. "genericLabel" interpolates each label separately (smooth edges, but
    its cost grows with the number of labels: ~30 s for 110 FreeSurfer labels);
    "nearestNeighbor" takes ~1 s.
    """
    atlas = _load(atlas)
    if not transforms:
        return resample_nearest(atlas, reference)
    import ants  # heavy import, only for this path

    with tempfile.TemporaryDirectory(prefix="shiva-atlas-") as tmp:
        fixed_path = os.path.join(tmp, "fixed.nii.gz")
        moving_path = os.path.join(tmp, "moving.nii.gz")
        nib.save(reference.with_data(np.zeros(reference.shape[:3], np.float32)).to_nifti(),
                 fixed_path)
        nib.save(atlas.to_nifti(np.float32), moving_path)
        warped = ants.apply_transforms(fixed=ants.image_read(fixed_path),
                                       moving=ants.image_read(moving_path),
                                       transformlist=list(transforms),
                                       interpolator=interpolator,
                                       whichtoinvert=None if invert is None else list(invert))
        out_path = os.path.join(tmp, "warped.nii.gz")
        ants.image_write(warped, out_path)
        data = np.rint(np.asarray(nib.load(out_path).dataobj)).astype(atlas.data.dtype)
    return reference.with_data(data)


def _regions_from_atlas(scheme: str, reference: Volume, atlas: Atlas,
                        brain: Volume | None) -> RegionMap:
    image, names = _load(atlas.image), dict(atlas.names)
    if atlas.lateralize:
        image, names = lateralize(image, names)
    native = warp_atlas(image, reference, atlas.transforms, atlas.invert)
    data = native.data
    if brain is not None:
        data = np.where(brain.data > 0, data, 0)
    return RegionMap(reference.with_data(data.astype(np.int32)), names,
                     f"atlas:{atlas.name}", scheme)


def build_regions(scheme: str, reference: Volume, dseg: Volume | None = None,
                  atlas: Atlas | None = None, brain: Volume | None = None,
                  dseg_source: str = "segmentation",
                  derived: Volume | None = None,
                  dseg_transforms: Sequence[str] = (),
                  parcellation: Parcellation | None = None,
                  dseg_invert: Sequence[bool] | None = None) -> RegionMap:
    """Region map of a marker's `scheme` on the `reference` grid (see module doc).

    `parcellation` (built once per unit, :func:`make_parcellation`) wins over `dseg`.
    `dseg_source` names the segmentation in `RegionMap.source` (give its path or BIDS URI).
    `derived` may pass a precomputed `parcellation.derived_parcellation(dseg)`.
    `dseg_transforms`: ANTs transforms from the reference to the segmentation's space when
    they do not share world coordinates (none: resampled through world coordinates), with
    `dseg_invert` (their `whichtoinvert`; only with `parcellation`).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown region scheme {scheme!r} (expected one of {SCHEMES})")
    if parcellation is not None:
        native = _parcellation_on_grid(parcellation, reference, dseg_transforms, dseg_invert)
        return _scheme_map(scheme, native, parcellation.parcellated, parcellation.source,
                           not parcellation.approximate, parcellation.provenance)
    if dseg is not None:
        return _regions_from_dseg(scheme, reference, dseg, f"dseg:{dseg_source}", derived,
                                  dseg_transforms)
    if atlas is not None:
        return _regions_from_atlas(scheme, reference, atlas, brain)
    zeros = reference.with_data(np.zeros(reference.shape[:3], dtype=np.int16))
    return RegionMap(zeros, {}, "none", scheme)


def assign_regions(cluster_labels: np.ndarray, count: int, regions: RegionMap) -> np.ndarray:
    """Region label of each cluster 1..count (array index 0 = cluster 1); 0 = no region.

    Winner-takes-all, ties -> lowest label, background never wins, then the priority rule.
    """
    if not same_grid(regions.labels, Volume(cluster_labels, regions.labels.affine)):
        raise ValueError("clusters and regions are not on the same grid")
    if count == 0:
        return np.zeros(0, dtype=np.int32)
    inside = cluster_labels > 0
    cluster = cluster_labels[inside].astype(np.int64)
    values, region = np.unique(regions.labels.data[inside], return_inverse=True)
    n_regions = len(values)
    votes = np.bincount(cluster * n_regions + region.ravel(),
                        minlength=(count + 1) * n_regions).reshape(count + 1, n_regions)[1:]
    votes[:, values == 0] = 0
    winner = values[np.argmax(votes, axis=1)]  # argmax: first (lowest label) among ties
    winner[votes.max(axis=1, initial=0) == 0] = 0
    priority = [i for i, v in enumerate(values) if v in set(regions.priority)]
    if priority:
        pv_votes = votes[:, priority]
        touched = pv_votes.max(axis=1) > 0
        winner[touched] = values[np.asarray(priority)[np.argmax(pv_votes[touched], axis=1)]]
    return winner.astype(np.int32)
