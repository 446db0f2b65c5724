"""Rigid registration of FLAIR / SWI / T2w onto the cropped T1w grid with ANTsPy.

Reference settings (SHiVAi, reference/SHIVA.md §5.6): Rigid[0.1], Mattes MI with 64 bins,
4 levels, shrink 4x2x1x1, smoothing 4x2x1x0 mm, iterations 1000x500x250x125 (convergence 1e-6
over 10), regular sampling of 25 % of the voxels, winsorising [0.005, 0.995], no histogram
matching, centre-of-mass initialisation, fixed mask = cropped brain mask for FLAIR (and here for
SWI too, see preprocessing/pipeline.py).

`REFERENCE` (the default) reproduces that command; `FAST` keeps the metric, sampling and
initialisation and drops the full-resolution repetition and most iterations. Both converge
early and cost the same here (~32 s CPU), and `FAST` once left a 3 mm error on a phantom with a
12-degree misalignment, so the reference settings are the default. The antsRegistration command
is assembled here rather than through `ants.registration(type_of_transform="Rigid")`, whose
fixed settings differ from SHiVAi's.

Start: SHiVAi starts from the intensity centres of mass only. When the moving image's field of
view is much smaller than the T1w's (a FLAIR cut to the upper part of the head), its centre of
mass is pulled away from the brain centre and the optimiser can stop several mm off. We
therefore also run the same schedule from the headers' own alignment (identity start) and keep
the result whose mutual information with the fixed image is higher (:func:`alignment_score`);
the centre-of-mass result wins ties, so on ordinary data the result is SHiVAi's. Each extra
start costs one registration (~7 s of CPU), not another sinc warp.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ants
import numpy as np
from ants.internal import get_lib_fn, get_pointer_string, process_arguments
from scipy.spatial.transform import Rotation

from shiva_bids.preprocessing.antsio import from_ants, grid_image, to_ants
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One antsRegistration stage (transform, metric, multi-resolution schedule)."""

    name: str
    iterations: tuple[int, ...]
    shrink_factors: tuple[int, ...]
    smoothing_mm: tuple[float, ...]
    transform: str = "Rigid[0.1]"
    metric: str = "MI"  # Mattes mutual information
    bins: int = 64
    sampling: str = "Regular"
    sampling_rate: float = 0.25
    convergence_threshold: float = 1e-6
    convergence_window: int = 10

    def args(self, fixed: str, moving: str, mask: str) -> list[str]:
        x = "x"
        sampling = f",{self.sampling},{self.sampling_rate}" if self.sampling != "None" else ""
        return [
            "--metric", f"{self.metric}[{fixed},{moving},1,{self.bins}{sampling}]",
            "--transform", self.transform,
            "--convergence", f"[{x.join(map(str, self.iterations))},"
                             f"{self.convergence_threshold},{self.convergence_window}]",
            "--shrink-factors", x.join(map(str, self.shrink_factors)),
            "--smoothing-sigmas", x.join(f"{s:g}" for s in self.smoothing_mm) + "mm",
            "--masks", mask,
        ]


REFERENCE = Stage("reference", (1000, 500, 250, 125), (4, 2, 1, 1), (4, 2, 1, 0))
FAST = Stage("fast", (200, 100, 30), (4, 2, 1), (4, 2, 1), convergence_window=5)
SETTINGS = {s.name: s for s in (REFERENCE, FAST)}


@dataclass(frozen=True)
class RigidResult:
    """The estimated transform (ANTs .mat, maps fixed points to moving points, i.e. it resamples
    the moving image onto the fixed grid) and the moving image resampled onto the fixed grid
    (None when no interpolator was asked for)."""

    transform: Path
    warped: Volume | None
    rotation_deg: float  # sum of |Euler angles| (SHIVA.md §11 QC)
    translation_mm: float
    start: str = "com"  # the start whose result was kept (see STARTS)
    scores: dict[str, float] = field(default_factory=dict)  # alignment_score per start tried


# "com": intensity centres of mass (SHiVAi, SHIVA.md §5.6); "header": identity, i.e. the
# alignment the image headers already give.
STARTS: tuple[str, ...] = ("com", "header")


def run_ants(fixed: "ants.ANTsImage", moving: "ants.ANTsImage", prefix: str,
             stages: list[Stage], fixed_mask: np.ndarray | None = None, seed: int = 0,
             start: str = "com") -> None:
    """Run antsRegistration from `start` (see STARTS) with the given stages.

    Outputs follow ANTs naming under `prefix` (`0GenericAffine.mat`, `1Warp.nii.gz`, ...).
    Winsorising [0.005, 0.995], no histogram matching and float precision as SHiVAi (§5.6); a
    fixed random seed makes the regular sampling's jitter reproducible.
    """
    if start not in STARTS:
        raise ValueError(f"unknown registration start {start!r}")
    fixed_str, moving_str = get_pointer_string(fixed), get_pointer_string(moving)
    mask = "[NA,NA]"
    keep = []  # ANTs images referenced by pointer must stay alive during the call
    if fixed_mask is not None:
        mask_img = fixed.new_image_like((np.asarray(fixed_mask) != 0).astype(np.float32))
        keep.append(mask_img)
        mask = f"[{get_pointer_string(mask_img)},NA]"
    args = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
            "--random-seed", str(seed), "--write-composite-transform", "0"]
    if start == "com":
        args += ["--initial-moving-transform", f"[{fixed_str},{moving_str},1]"]
    for stage in stages:
        args += stage.args(fixed_str, moving_str, mask)
    args += ["--winsorize-image-intensities", "[0.005,0.995]", "--use-histogram-matching", "0",
             "--output", prefix]  # transforms only: the callers resample what they need
    status = get_lib_fn("antsRegistration")(process_arguments(args))
    del keep
    if status != 0:
        raise RuntimeError(f"antsRegistration failed with code {status}")


def register_rigid(fixed: Volume, moving: Volume, transform_path: Path,
                   fixed_mask: np.ndarray | None = None,
                   settings: Stage = REFERENCE, interpolator: str | None = "welchWindowedSinc",
                   seed: int = 0, starts: tuple[str, ...] = STARTS) -> RigidResult:
    """Register `moving` rigidly to `fixed`, save the transform, warp `moving` onto `fixed`
    (skipped with `interpolator` None: the SWI needs only the transform, §6).

    One registration per start in `starts`; the transform with the best
    :func:`alignment_score` is kept (the first start wins ties). The warped output uses
    Welch-windowed sinc as SHiVAi does (§5.6); it may undershoot below 0, which the
    normalisation sets to 0 like the reference.
    """
    fixed_ants, moving_ants = to_ants(fixed), to_ants(moving)
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="shiva_rigid_") as tmp:
        for start in starts:
            prefix = str(Path(tmp) / f"{start}_")
            run_ants(fixed_ants, moving_ants, prefix, [settings], fixed_mask, seed, start)
            if len(starts) > 1:
                scores[start] = alignment_score(fixed, moving,
                                                Path(prefix + "0GenericAffine.mat"), fixed_mask)
        best = starts[0]
        if scores:
            best = max(starts, key=lambda s: (round(scores[s], 3), -starts.index(s)))
            log.debug("rigid starts %s: kept %s", scores, best)
        transform_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(str(Path(tmp) / f"{best}_0GenericAffine.mat"), transform_path)
    warped = None if interpolator is None else apply_rigid(moving, fixed.shape, fixed.affine,
                                                           transform_path, interpolator)
    rotation, translation = rigid_magnitude(transform_path)
    return RigidResult(transform_path, warped, rotation, translation, best, scores)


def alignment_score(fixed: Volume, moving: Volume, transform: Path,
                    fixed_mask: np.ndarray | None = None, bins: int = 64,
                    stride: int = 2) -> float:
    """Mutual information (nats, 64-bin joint histogram) between `fixed` and `moving` resampled
    through `transform` (linear), over every `stride`-th fixed voxel per axis inside
    `fixed_mask` (all without one) whose mapped position lies inside the moving field of view."""
    step = (slice(None, None, stride),) * 3
    values = np.asarray(fixed.data)[step]
    affine = fixed.affine @ np.diag([stride, stride, stride, 1.0])
    warped = apply_rigid(moving, values.shape, affine, transform, "linear").data
    inside = apply_rigid(Volume(np.ones(moving.shape, np.float32), moving.affine), values.shape,
                         affine, transform, "nearestNeighbor").data > 0.5
    if fixed_mask is not None:
        inside &= np.asarray(fixed_mask)[step] > 0
    if inside.sum() < bins:
        return 0.0
    joint, _, _ = np.histogram2d(values[inside], warped[inside], bins=bins)
    joint /= joint.sum()
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def apply_rigid(moving: Volume, shape: tuple[int, ...], affine: np.ndarray,
                transform: Path | list[Path], interpolator: str = "linear",
                invert: bool = False) -> Volume:
    """Resample `moving` onto the grid (shape, affine) through an ANTs transform file.

    With `invert`, the inverse transform is used (e.g. the T1 mask into SWI space, §6 step 11).
    """
    transforms = [str(t) for t in (transform if isinstance(transform, list) else [transform])]
    out = ants.apply_transforms(grid_image(shape, affine), to_ants(moving), transforms,
                                interpolator=interpolator,
                                whichtoinvert=[invert] * len(transforms))
    return from_ants(out)


def rigid_magnitude(transform: Path) -> tuple[float, float]:
    """(sum of |Euler angles| in degrees, translation norm in mm) of an ANTs rigid .mat,
    the registration QC of reference/SHIVA.md §11."""
    tx = ants.read_transform(str(transform))
    params = np.asarray(tx.parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    angles = Rotation.from_matrix(matrix).as_euler("xyz", degrees=True)
    return float(np.abs(angles).sum()), float(np.linalg.norm(params[9:12]))


def map_points(transform: Path, points: np.ndarray) -> np.ndarray:
    """World (RAS mm) points of the fixed image -> the matching points of the moving image.

    ANTs transforms map fixed-space physical points to moving-space points (that is how they
    resample the moving image onto the fixed grid); this converts RAS <-> LPS around the call.
    """
    tx = ants.read_transform(str(transform))
    flip = np.diag([-1.0, -1.0, 1.0])
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    return np.array([flip @ np.asarray(tx.apply_to_point(tuple(flip @ p))) for p in pts])
