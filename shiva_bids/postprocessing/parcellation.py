"""Derived parcellation from a FreeSurfer / SynthSeg segmentation (reference/SHIVA.md §9.1).

Input: a FreeSurfer-style label image (`aseg`, `aparc+aseg`, SynthSeg with or without
`--parc`, fMRIPrep `desc-aseg_dseg`). Output: the derived labels of the §9.1 table (lobar
GM / juxtacortical / deep / periventricular WM per hemisphere, deep grey structures, capsules,
corpus callosum, cerebellum, brainstem). CSF and ventricles get 0.

Distances are counted in voxels of a 1 mm grid (FreeSurfer and SynthSeg outputs are 1 mm;
other grids are resampled to 1 mm first, `grids.isotropic_1mm`), as SHiVAi does on its 1 mm
cropped grid.

Where shiva-bids differs (documented in docs/outputs.md):

* a segmentation without Desikan cortical parcels (plain `aseg`, fMRIPrep `desc-aseg_dseg`,
  SynthSeg without `--parc`) has no lobes: its cortex (3/42) is the seed of an "unparcellated"
  pseudo-lobe with derived labels 61-64 (left) / 81-84 (right), same GM/JC/deep/PV order;
* FreeSurfer's lateralised WM hypointensities 78/79 go to left/right WM like 77 does;
* the SynthSeg corpus-callosum seam (§9.1 item 8) only relabels lobar WM voxels (capsule
  labels win);
* the external capsule (§9.1 item 7) is built as described but the closing uses a 3x3x3
  structure iterated 3 times (a cube, not a ball).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from shiva_bids.postprocessing.grids import isotropic_1mm
from shiva_bids.volume import Volume, bounding_box

LEFT, RIGHT = 0, 1
WM = (2, 41)
CORTEX = (3, 42)
WM_HYPO = {77: None, 78: LEFT, 79: RIGHT}
# SHIVA.md §9.1 item 2: Desikan parcels per lobe (left; right = left + 1000).
LOBE_PARCELS: dict[int, tuple[int, ...]] = {
    0: (1002, 1003, 1012, 1014, 1017, 1018, 1019, 1020, 1024, 1026, 1027, 1028, 1032),  # frontal
    1: (1008, 1010, 1022, 1023, 1025, 1029, 1031),  # parietal
    2: (1001, 1006, 1007, 1009, 1015, 1016, 1030, 1033, 1034),  # temporal
    3: (1005, 1011, 1013, 1021),  # occipital
}
UNPARCELLATED = 4  # pseudo-lobe of plain aseg cortex (shiva-bids extension)
NOT_SEEDS = (1002, 1017, 1026, 1010, 1023)  # cingulate, paracentral: treated as WM
INSULA = (1035, 2035)
VENTRICLES = (4, 5, 43, 44, 31, 63)
# Per hemisphere (left, right): FreeSurfer labels of each structure (§9.1 item 3).
BASAL_GANGLIA = ((11, 12, 13, 26), (50, 51, 52, 58))
PUTAMEN = ((12,), (51,))
THALAMUS = ((10,), (49,))
VENTRAL_DC = ((28,), (60,))
HIPPOCAMPUS = ((17, 18), (53, 54))
CEREBELLUM = ((7, 8), (46, 47))
BRAINSTEM = 16
CORPUS_CALLOSUM = (251, 252, 253, 254, 255)
CINGULATE = (1002, 1010, 1023, 1026)  # left Desikan cingulate parcels (right = + 1000)
CC_SEAM_GROWTH = 10  # taxicab, SynthSeg callosum (item 8)
CC_OPENINGS = 2

# Derived label values (§9.1 table); right = left + 20 (lobar, insula) or + 10 (deep grey).
LOBE_BASE = {0: 1, 1: 5, 2: 9, 3: 13, UNPARCELLATED: 61}  # + 0 GM, 1 JC, 2 deep, 3 PV
D_INSULA, D_BG, D_THAL, D_VDC, D_HIPPO = 17, 40, 41, 42, 43
D_IC, D_EC, D_CC, D_CEREB = 44, 45, 46, 47
D_BG_PV, D_THAL_PV, D_IC_PV = 78, 79, 80
D_BRAINSTEM = 60
JUXTA_DISTANCE = 3  # taxicab, item 4
PV_DILATIONS = 2  # 6-connected, item 5
EC_NEAR = 10  # taxicab, item 7
EC_AWAY_HIPPO = 5
EC_CLOSING = 3
_LUT_SIZE = 1 << 16  # label look-up tables cover uint16 label values
MARGIN = EC_NEAR + 2  # voxels of background kept around the head when cropping


def right_of(left_code: int) -> int:
    """Right-hemisphere derived label of a left one (SHIVA.md §9.3)."""
    if left_code == D_BRAINSTEM:
        return D_BRAINSTEM
    if left_code <= 17 or 61 <= left_code <= 64:
        return left_code + 20
    return left_code + 10


def _side(code: int, side: int) -> int:
    return code if side == LEFT else right_of(code)


def _isin(seg: np.ndarray, labels) -> np.ndarray:
    """`np.isin` for uint16 label images (`_derive` converts), through a look-up table."""
    lut = np.zeros(_LUT_SIZE, dtype=bool)
    lut[[label for label in labels if label < _LUT_SIZE]] = True
    return lut[seg]


def _fill_convex_hull(mask: np.ndarray) -> np.ndarray:
    """Voxels inside the convex hull of `mask` (fewer than 4 or coplanar points: `mask`)."""
    points = np.argwhere(mask)
    if len(points) < 4:
        return mask.copy()
    try:
        hull = ConvexHull(points)
    except QhullError:  # coplanar points
        return mask.copy()
    low, high = points.min(axis=0), points.max(axis=0) + 1
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)],
                                indexing="ij"), axis=-1).reshape(-1, 3)
    # inside = on the inner side of every facet plane (normal . x + offset <= 0); the hull of
    # voxel centres has many coplanar triangles, so planes are deduplicated first
    planes = np.unique(np.round(hull.equations, 9), axis=0)
    inside = np.ones(len(grid), dtype=bool)
    for plane in planes:
        inside &= grid @ plane[:3] + plane[3] <= 1e-6
    out = np.zeros_like(mask)
    out[tuple(grid[inside].T)] = True
    return out | mask


def _taxicab_distance(targets: np.ndarray) -> np.ndarray:
    """Taxicab distance (voxels) of every voxel to the nearest `targets` voxel."""
    if not targets.any():
        return np.full(targets.shape, np.iinfo(np.int32).max, dtype=np.int32)
    return ndimage.distance_transform_cdt(~targets, metric="taxicab")


def _assign_wm_hypointensities(seg: np.ndarray) -> None:
    """§9.1 item 1: each 77 blob joins the WM side it touches more after a 1-voxel dilation;
    ties go to the larger WM, else left. 78/79 (lateralised) join their side directly."""
    for label, side in WM_HYPO.items():
        if side is not None:
            seg[seg == label] = WM[side]
    blobs, n = ndimage.label(seg == 77, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return
    cube = np.ones((3, 3, 3), bool)
    box = bounding_box(blobs > 0, 2)
    touch = [np.bincount(blobs[box][ndimage.binary_dilation(seg[box] == wm, cube)],
                         minlength=n + 1) for wm in WM]
    left_bigger = (seg == WM[LEFT]).sum() >= (seg == WM[RIGHT]).sum()
    goes_left = (touch[LEFT] > touch[RIGHT]) | ((touch[LEFT] == touch[RIGHT]) & left_bigger)
    seg[blobs > 0] = np.where(goes_left[blobs[blobs > 0]], WM[LEFT], WM[RIGHT])


def _lobe_seeds(seg: np.ndarray) -> np.ndarray:
    """Per voxel: lobe (0-3; UNPARCELLATED for cortex without Desikan parcels) of lobar
    cortex seeds, -1 elsewhere."""
    lobe = np.full(seg.shape, -1, dtype=np.int8)
    if _has_desikan(seg):
        for index, parcels in LOBE_PARCELS.items():
            seeds = [p for p in parcels if p not in NOT_SEEDS]
            lobe[_isin(seg, seeds + [p + 1000 for p in seeds])] = index
    else:
        lobe[_isin(seg, CORTEX)] = UNPARCELLATED
    return lobe


def _nearest_lobe(lobe: np.ndarray, hemi: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """§9.1 item 2: lobe of the nearest lobar cortex seed (chessboard distance) for every WM
    voxel, looking only at seeds of the voxel's own hemisphere (a midline voxel could
    otherwise take a lobe of the other side). Voxels without a seed get UNPARCELLATED."""
    out = np.full(lobe.shape, UNPARCELLATED, dtype=np.int8)
    for side in (LEFT, RIGHT):
        seeds = (lobe >= 0) & (hemi == side)
        targets = wm & (hemi == side)
        if not seeds.any() or not targets.any():
            continue
        box = bounding_box(seeds | targets, 1)
        _, nearest = ndimage.distance_transform_cdt(~seeds[box], metric="chessboard",
                                                    return_indices=True)
        local = targets[box]
        out[box][local] = lobe[box][tuple(index[local] for index in nearest)]
    return out


def _derive(seg: np.ndarray) -> np.ndarray:
    """The derived parcellation of a cropped FreeSurfer label array (see module doc)."""
    seg = np.clip(seg, 0, _LUT_SIZE - 1).astype(np.uint16)
    _assign_wm_hypointensities(seg)
    out = np.zeros(seg.shape, dtype=np.int16)
    lobe = _lobe_seeds(seg)
    seeds = lobe >= 0
    not_seeds = list(NOT_SEEDS) + [p + 1000 for p in NOT_SEEDS]
    hemi = np.full(seg.shape, -1, dtype=np.int8)  # hemisphere of cortex/WM voxels
    for side in (LEFT, RIGHT):
        hemi[_isin(seg, (WM[side], CORTEX[side]))] = side
        offset = 1000 * (side + 1)
        hemi[(seg >= offset) & (seg < offset + 1000)] = side
    wm_core = _isin(seg, WM)
    wm = wm_core | _isin(seg, not_seeds)
    wm_lobe = _nearest_lobe(lobe, hemi, wm)
    juxta = wm_core & (_taxicab_distance(seeds) <= JUXTA_DISTANCE)  # item 4
    ventricles = _isin(seg, VENTRICLES)
    pv = np.zeros(seg.shape, bool)  # item 5, in the ventricles' box
    box = bounding_box(ventricles, PV_DILATIONS + 1)
    pv[box] = ndimage.binary_dilation(ventricles[box], ndimage.generate_binary_structure(3, 1),
                                      iterations=PV_DILATIONS) & ~ventricles[box]
    for side in (LEFT, RIGHT):
        h = hemi == side
        for index, base in LOBE_BASE.items():
            code = _side(base, side)
            out[seeds & h & (lobe == index)] = code
            in_lobe = wm & h & (wm_lobe == index)
            out[in_lobe] = code + 2
            out[in_lobe & juxta] = code + 1
            out[in_lobe & pv] = code + 3
        for labels, code in ((INSULA[side:side + 1], D_INSULA), (BASAL_GANGLIA[side], D_BG),
                             (THALAMUS[side], D_THAL), (VENTRAL_DC[side], D_VDC),
                             (HIPPOCAMPUS[side], D_HIPPO), (CEREBELLUM[side], D_CEREB)):
            out[_isin(seg, labels)] = _side(code, side)
        out[_isin(seg, BASAL_GANGLIA[side]) & pv] = _side(D_BG_PV, side)
        out[_isin(seg, THALAMUS[side]) & pv] = _side(D_THAL_PV, side)
        wm_side = wm & (hemi == side)
        ic = _internal_capsule(seg, side) & wm_side
        out[ic] = _side(D_IC, side)
        out[ic & pv] = _side(D_IC_PV, side)
        ec = _external_capsule(seg, side, wm_side & ~juxta & ~ic & ~pv)
        out[ec] = _side(D_EC, side)
    out[seg == BRAINSTEM] = D_BRAINSTEM
    _corpus_callosum(seg, out)
    return out


def _internal_capsule(seg: np.ndarray, side: int) -> np.ndarray:
    """§9.1 item 6: convex hull of basal ganglia + thalamus, eroded twice."""
    deep = _isin(seg, THALAMUS[side] + BASAL_GANGLIA[side][:3])
    out = np.zeros(seg.shape, bool)
    if deep.any():
        box = bounding_box(deep, 1)
        out[box] = ndimage.binary_erosion(_fill_convex_hull(deep[box]), iterations=2)
    return out


def _external_capsule(seg: np.ndarray, side: int, allowed: np.ndarray) -> np.ndarray:
    """§9.1 item 7: between insula and putamen (hull, within 10 of both), away from the
    hippocampus / ventral DC, closed together with insula and putamen, within `allowed` WM.
    Computed in the box of insula + putamen grown by the largest distance used."""
    insula = seg == INSULA[side]
    putamen = _isin(seg, PUTAMEN[side])
    out = np.zeros(seg.shape, bool)
    if not insula.any() or not putamen.any():
        return out
    box = bounding_box(insula | putamen, EC_AWAY_HIPPO + EC_CLOSING + 1)
    insula, putamen, allowed = insula[box], putamen[box], allowed[box]
    hull = _fill_convex_hull(insula | putamen)
    near = (_taxicab_distance(insula) <= EC_NEAR) & (_taxicab_distance(putamen) <= EC_NEAR)
    away = _taxicab_distance(_isin(seg[box], HIPPOCAMPUS[side] + VENTRAL_DC[side])) \
        > EC_AWAY_HIPPO
    capsule = hull & near & away & allowed
    closed = ndimage.binary_closing(capsule | insula | putamen, iterations=EC_CLOSING)
    out[box] = closed & allowed & away
    return out


def _corpus_callosum(seg: np.ndarray, out: np.ndarray) -> None:
    """§9.1 item 8 (FreeSurfer): labels 251-255 take the side of the nearest cerebral WM
    voxel (Euclidean; searched in the callosum's box grown by 20 voxels). Without those labels
    (SynthSeg) the callosum is rebuilt from the seam between left and right WM."""
    cc = _isin(seg, CORPUS_CALLOSUM)
    if not cc.any():
        _callosum_seam(seg, out)
        return
    box = bounding_box(cc, 20)
    local = seg[box]
    wm = _isin(local, WM)
    if not wm.any():
        out[box][cc[box]] = D_CC
        return
    _, nearest = ndimage.distance_transform_edt(~wm, return_indices=True)
    side = local[tuple(index[cc[box]] for index in nearest)]
    out[box][cc[box]] = np.where(side == WM[RIGHT], right_of(D_CC), D_CC)


def _callosum_seam(seg: np.ndarray, out: np.ndarray) -> None:
    """§9.1 item 8 (SynthSeg): where left and right cerebral WM meet after a 1-voxel dilation
    (ventricles and cingulate excluded), grown by taxicab 10, within WM, opened twice. Only
    lobar WM voxels are relabelled (internal/external capsule labels are kept)."""
    cube = np.ones((3, 3, 3), bool)
    left, right = seg == WM[LEFT], seg == WM[RIGHT]
    if not left.any() or not right.any():
        return
    box = bounding_box(ndimage.binary_dilation(left, cube) & ndimage.binary_dilation(right, cube),
                CC_SEAM_GROWTH + 2)
    left, right, local = left[box], right[box], seg[box]
    seam = ndimage.binary_dilation(left, cube) & ndimage.binary_dilation(right, cube)
    seam &= ~_isin(local, VENTRICLES + CINGULATE + tuple(p + 1000 for p in CINGULATE))
    if not seam.any():
        return
    callosum = (_taxicab_distance(seam) <= CC_SEAM_GROWTH) & (left | right)
    callosum = ndimage.binary_opening(callosum, iterations=CC_OPENINGS)
    lobar = np.isin(out[box], [c for base in LOBE_BASE.values() for side in (LEFT, RIGHT)
                               for c in (_side(base, side) + k for k in (1, 2, 3))])
    region = out[box]
    region[callosum & lobar & left] = D_CC
    region[callosum & lobar & right] = right_of(D_CC)


def derived_parcellation(dseg: Volume) -> Volume:
    """The §9.1 derived parcellation of a FreeSurfer/SynthSeg label volume (1 mm grid)."""
    seg = isotropic_1mm(dseg)
    labels = np.rint(seg.data).astype(np.int32)
    box = bounding_box(labels > 0, MARGIN)
    out = np.zeros(labels.shape, dtype=np.int16)
    out[box] = _derive(labels[box])
    return seg.with_data(out)


def _has_desikan(seg: np.ndarray) -> bool:
    """True when `seg` holds Desikan cortical parcels (1001-1035 / 2001-2035)."""
    return bool((((seg > 1000) & (seg <= 1035)) | ((seg > 2000) & (seg <= 2035))).any())


def has_cortical_parcels(dseg: Volume) -> bool:
    """True when the segmentation carries Desikan cortical parcels (`aparc+aseg`, SynthSeg
    `--parc`); False for `aseg`, fMRIPrep `desc-aseg_dseg`, SynthSeg without parcels."""
    return _has_desikan(np.rint(np.asarray(dseg.data)))
