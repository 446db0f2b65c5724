"""Rigid registration of FLAIR / T2w / SWI onto the cropped T1w grid with ANTs, set up as SHiVAi
sets it up (reference/SHIVA.md §5.6), and reproducible.

SHiVAi's set-up (:func:`shivai_job`; pinned by tests/test_registration_setup.py):

| | FLAIR / T2w -> T1w | SWI -> T1w |
|---|---|---|
| fixed image | the cropped T1w (conformed, cropped, *not* normalised) | the same |
| fixed mask | the cropped brain mask | none |
| moving image | the image as loaded (native grid) | the conformed SWI |
| output | resampled onto the cropped grid, Welch-windowed sinc | transform only (CMB stays in SWI space) |

One antsRegistration stage (`REFERENCE`): Rigid[0.1]; Mattes MI, 64 bins, regular sampling of
25 % of the voxels; shrink factors 4x2x1x1, smoothing 4x2x1x0 mm, 1000x500x250x125 iterations,
convergence 1e-6 over a window of 10; winsorising [0.005, 0.995]; no histogram matching; float
precision; start from the intensity centres of mass; transforms collapsed into one `.mat`.
`SLOPPY` (`--sloppy`, testing only) drops the unsmoothed full-resolution level and samples 10 %
of the voxels: ~3.5x less CPU, up to 1.7x the error (docs/preprocessing.md).

Reproducibility (issue #19): antsRegistration treats `--random-seed 0` as "seed from the clock"
(its help: "the fixed seed can be any nonzero int value"; measured: seed 0 gave different
transforms run to run), so our seed is mapped to a nonzero ANTs seed (:func:`ants_seed`); and
every registration runs in a single-threaded worker process (`workers.py`), because ITK's
multi-threaded mutual information is not reproducible. SHiVAi passes no `--random-seed`, which
is the same as 0 (ANTs then reseeds nothing and ITK seeds its sampler from the clock; measured
on the SHiVAi fixture, one thread: two such runs 0.004 mm apart), so no fixed seed can be
"SHiVAi's"; ours (1) lands 0.005 mm from SHiVAi's transform, within that spread (issue #24).

Parity (issue #24): from SHiVAi's own fixed image, moving image and mask
(`../shared/fixtures/shivai_0.5.9_phantom101`), SHiVAi's command line run here gives its FLAIR
transform within 0.006 mm; so does this module's (`mask_image`: the mask must reach ANTs as
unsigned char). Quickshear (SHiVAi defaces the fixed T1w, we do not) does not matter for the
FLAIR (the metric only reads the brain mask; 0.0057 mm either way) and little for the SWI with
the head mask (0.016 mm undefaced, 0.012 mm defaced; tests/test_shivai_parity.py).

Robustness (not in SHiVAi): from the centres of mass, a moving image whose field of view is much
smaller than the T1w's (a FLAIR cut to the upper head) can end several mm off (measured: 14-21 mm
on phantoms). When the headers' own alignment (no registration at all) scores better than the
centre-of-mass result (:func:`alignment_score`), the schedule is run again from the headers'
alignment, and that result is kept only when it scores clearly better (`CLEARLY_BETTER`). On
ordinary data the second start never runs and the result is SHiVAi's.
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
from shiva_bids.preprocessing.sinc import welch_sinc_resample
from shiva_bids.preprocessing.workers import Workers
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
        sampling = f",{self.sampling},{self.sampling_rate:g}" if self.sampling != "None" else ""
        return [
            "--metric", f"{self.metric}[{fixed},{moving},1,{self.bins}{sampling}]",
            "--transform", self.transform,
            "--convergence", f"[{x.join(map(str, self.iterations))},"
                             f"{self.convergence_threshold:g},{self.convergence_window}]",
            "--shrink-factors", x.join(map(str, self.shrink_factors)),
            "--smoothing-sigmas", x.join(f"{s:g}" for s in self.smoothing_mm) + "mm",
            "--masks", mask,
        ]


REFERENCE = Stage("reference", (1000, 500, 250, 125), (4, 2, 1, 1), (4, 2, 1, 0))
# Measured on phantoms 301-305 (docs/preprocessing.md): FLAIR error 0.207 mm against 0.123,
# 13 s of CPU against 46; SWI 0.076 mm against 0.049, 27 s against 93.
SLOPPY = Stage("sloppy", (1000, 500, 250), (4, 2, 1), (4, 2, 1), sampling_rate=0.10)
SETTINGS = {s.name: s for s in (REFERENCE, SLOPPY)}

# "com": intensity centres of mass (SHiVAi, SHIVA.md §5.6); "header": identity, i.e. the
# alignment the image headers already give.
STARTS: tuple[str, ...] = ("com", "header")
# Mutual information (nats) by which the header start must beat the centre-of-mass result to
# be kept. Starts that reach the same optimum score within 0.001 of each other; a failed start
# scored 0.03 against 0.93 (cut FLAIR, phantom).
CLEARLY_BETTER = 0.02
# FLAIR/T2w outputs are resampled in this many slabs of the target grid, side by side in the
# workers; fixed so that the bytes do not depend on the number of workers.
WARP_SLABS = 4
WARP_INTERPOLATOR = "welchWindowedSinc"  # SHiVAi's `interpolation` (SHIVA.md §5.2, §5.6)
_ANTS_SEED_MODULUS = 2 ** 31 - 1


def ants_seed(seed: int) -> int:
    """antsRegistration's `--random-seed` for our `--random-seed`: 1 + seed modulo 2^31 - 1,
    i.e. never 0, which ANTs would replace by the clock."""
    return 1 + int(seed) % _ANTS_SEED_MODULUS


def registration_arguments(fixed: str, moving: str, prefix: str, stages: list[Stage],
                           mask: str | None = None, seed: int = 0,
                           start: str = "com") -> list[str]:
    """The antsRegistration command line (without the program) for images referred to as
    `fixed`, `moving` and `mask` (file names, or ANTsPy pointer strings).

    Outputs follow ANTs naming under `prefix` (`0GenericAffine.mat`, `1Warp.nii.gz`, ...);
    transforms only: callers resample what they need.
    """
    if start not in STARTS:
        raise ValueError(f"unknown registration start {start!r}")
    masks = f"[{mask},NA]" if mask is not None else "[NA,NA]"
    args = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
            "--random-seed", str(ants_seed(seed)), "--write-composite-transform", "0"]
    if start == "com":
        args += ["--initial-moving-transform", f"[{fixed},{moving},1]"]
    for stage in stages:
        args += stage.args(fixed, moving, masks)
    return args + ["--winsorize-image-intensities", "[0.005,0.995]",
                   "--use-histogram-matching", "0", "--output", prefix]


def mask_image(fixed: "ants.ANTsImage", mask: np.ndarray) -> "ants.ANTsImage":
    """`mask` (non-zero = inside) as the unsigned-char ANTs image that antsRegistration's
    `--masks` expects on `fixed`'s grid.

    The pixel type matters: antsRegistration takes an image passed by pointer as an image of
    its mask type (unsigned char) without converting it (ANTs' ReadImage casts the pointer), so
    a float mask is read byte by byte: a different, mostly empty mask. Measured on the SHiVAi
    fixture (issue #24): with a float mask our FLAIR -> T1w transform was 0.158 mm from
    SHiVAi's (0.134 mm from the truth) and the optimiser stopped after 3.7 s; with this one,
    0.006 mm (0.087 mm from the truth, SHiVAi 0.085), 45 s."""
    return fixed.new_image_like((np.asarray(mask) != 0).astype(np.uint8))


def run_ants(fixed: "ants.ANTsImage", moving: "ants.ANTsImage", prefix: str,
             stages: list[Stage], fixed_mask: np.ndarray | None = None, seed: int = 0,
             start: str = "com") -> None:
    """Run antsRegistration in this process (call it in a `workers.Workers` process: with more
    than one ITK thread the result is not reproducible)."""
    keep = []  # ANTs images referenced by pointer must stay alive during the call
    mask = None
    if fixed_mask is not None:
        mask_img = mask_image(fixed, fixed_mask)
        keep.append(mask_img)
        mask = get_pointer_string(mask_img)
    args = registration_arguments(get_pointer_string(fixed), get_pointer_string(moving), prefix,
                                  stages, mask, seed, start)
    status = get_lib_fn("antsRegistration")(process_arguments(args))
    del keep
    if status != 0:
        raise RuntimeError(f"antsRegistration failed with code {status}")


@dataclass(frozen=True)
class RigidJob:
    """One rigid registration onto the cropped T1w, everything a worker needs to run it."""

    fixed: Volume
    moving: Volume
    fixed_mask: np.ndarray | None  # of the registration metric (None: whole fixed image)
    score_mask: np.ndarray  # where alignment_score compares the images (the brain mask)
    stage: Stage = REFERENCE
    seed: int = 0

    def arguments(self, prefix: str, start: str = "com") -> list[str]:
        """The command line, with the images named "fixed", "moving" and "mask"."""
        mask = None if self.fixed_mask is None else "mask"
        return registration_arguments("fixed", "moving", prefix, [self.stage], mask,
                                      self.seed, start)


def shivai_job(cropped_t1: Volume, brain_mask: np.ndarray, moving: Volume, modality: str,
               stage: Stage = REFERENCE, seed: int = 0,
               swi_mask: np.ndarray | None = None) -> RigidJob:
    """SHiVAi's registration of `modality` ("FLAIR", "T2w" or "SWI") to the T1w (SHIVA.md §5.6,
    table above): fixed = the cropped, not normalised T1w; fixed mask = the cropped brain mask,
    except for SWI: `swi_mask` (SHiVAi: None; see PreprocOptions.swi_registration_mask)."""
    mask = np.asarray(brain_mask)
    fixed_mask = swi_mask if modality == "SWI" else mask
    return RigidJob(cropped_t1, moving, fixed_mask, mask, stage, seed)


@dataclass(frozen=True)
class RigidResult:
    """The estimated transform (ANTs .mat, maps fixed points to moving points, i.e. it resamples
    the moving image onto the fixed grid) and how it was found."""

    transform: Path
    rotation_deg: float  # sum of |Euler angles| (SHIVA.md §11 QC)
    translation_mm: float
    start: str = "com"  # the start whose result was kept (see STARTS)
    scores: dict[str, float] = field(default_factory=dict)  # alignment_score per pose tried


def register(job: RigidJob, transform_path: Path) -> RigidResult:
    """Run `job` from the centres of mass, and from the headers' alignment when that alignment
    alone scores better than the first result (module docstring); save the kept transform as
    `transform_path`. Runs in a `workers.Workers` process."""
    fixed, moving = to_ants(job.fixed), to_ants(job.moving)
    with tempfile.TemporaryDirectory(prefix="shiva_rigid_") as tmp:
        def attempt(start: str) -> Path:
            prefix = str(Path(tmp) / f"{start}_")
            run_ants(fixed, moving, prefix, [job.stage], job.fixed_mask, job.seed, start)
            return Path(prefix + "0GenericAffine.mat")

        def score(transform: Path) -> float:
            return round(alignment_score(job.fixed, job.moving, transform, job.score_mask), 4)

        kept, best = "com", attempt("com")
        scores = {"com": score(best),
                  "headers": score(write_rigid(np.eye(4), Path(tmp) / "identity.mat"))}
        if scores["headers"] > scores["com"]:
            header = attempt("header")
            scores["header"] = score(header)
            if scores["header"] > scores["com"] + CLEARLY_BETTER:
                kept, best = "header", header
            log.info("rigid registration: centre-of-mass start scored %.3f, the headers' "
                     "alignment %.3f, the header start %.3f: kept %s", scores["com"],
                     scores["headers"], scores["header"], kept)
        transform_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, transform_path)
    rotation, translation = rigid_magnitude(transform_path)
    return RigidResult(transform_path, rotation, translation, kept, scores)


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
    Each output voxel depends only on its own position, so the result does not depend on ITK's
    thread count.
    """
    transforms = [str(t) for t in (transform if isinstance(transform, list) else [transform])]
    out = ants.apply_transforms(grid_image(shape, affine), to_ants(moving), transforms,
                                interpolator=interpolator,
                                whichtoinvert=[invert] * len(transforms))
    return from_ants(out)


def slabs(shape: tuple[int, ...], affine: np.ndarray,
          count: int = WARP_SLABS) -> list[tuple[slice, tuple[int, ...], np.ndarray]]:
    """The target grid cut into `count` slabs along its last axis: (index, shape, affine)."""
    edges = np.linspace(0, shape[2], count + 1).round().astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        shift = np.eye(4)
        shift[2, 3] = lo
        out.append((slice(int(lo), int(hi)), (shape[0], shape[1], int(hi - lo)), affine @ shift))
    return out


def warp(workers: Workers, moving: Volume, shape: tuple[int, ...], affine: np.ndarray,
         transform: Path | list[Path], interpolator: str = WARP_INTERPOLATOR) -> Volume:
    """`moving` resampled onto the grid (shape, affine) through `transform`.

    Welch-windowed sinc through one rigid transform runs here, compiled (`sinc.py`: ITK's
    arithmetic, ~25x faster than ITK's); any other case runs `apply_rigid` in `WARP_SLABS`
    slabs of the grid side by side in the workers (a slab's voxels equal the whole grid's)."""
    if interpolator == "welchWindowedSinc" and isinstance(transform, (str, Path)):
        to_moving = (np.linalg.inv(moving.affine) @ rigid_matrix(Path(transform))
                     @ np.asarray(affine, dtype=float))
        return Volume(welch_sinc_resample(moving.data, to_moving, shape),
                      np.asarray(affine, dtype=float))
    parts = [(index, workers.submit(apply_rigid, moving, part_shape, part_affine, transform,
                                    interpolator))
             for index, part_shape, part_affine in slabs(shape, affine)]
    data = np.zeros(shape, np.float32)
    for index, part in parts:
        data[:, :, index] = part.result().data
    return Volume(data, np.asarray(affine, dtype=float))


def rigid_matrix(transform: Path) -> np.ndarray:
    """The 4x4 RAS world matrix of an ANTs affine .mat (fixed point -> moving point): ITK's
    y = M (x - c) + c + t in LPS, with c its centre (fixed parameters)."""
    tx = ants.read_transform(str(transform))
    params = np.asarray(tx.parameters, dtype=float)
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = params[9:12] + centre - matrix @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def write_rigid(ras: np.ndarray, path: Path) -> Path:
    """Save a RAS world transform (fixed point -> moving point) as an ANTs .mat (LPS)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ np.asarray(ras, dtype=float) @ flip
    ants.write_transform(ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3],
        translation=lps[:3, 3]), str(path))
    return path


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
