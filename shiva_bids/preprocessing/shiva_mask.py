"""Method (d) of the brain mask: the SHIVA brain-mask model, two passes (reference/SHIVA.md §5.4).

1. *Preconform* img1 straight onto the model grid (160x214x176, RAS, cubic spline) with the
   voxel size that keeps the whole field of view: per axis, header dim x pixdim / model dim,
   pairing the file's axes with the model's in file order, as SHiVAi's `Conform` does
   (:func:`preconform_voxel_size`).
2. Normalise over the whole volume (p99, no mask, §5.7).
3. Predict with the fold ensemble (mean of the folds, per-fold values < 0.001 set to 0, no mask).
4. Bring the prediction onto the conformed 256^3 grid, nearest neighbour (SHiVAi conforms it
   with order 0; the preconformed and conformed grids share their centre and axes, so this is
   the same grid, reached through world coordinates).
5. Pre-mask: > 0.5, opening r = 3 mm, `minVol` 600 000 mm^3, `clusterCheck` "size" (§5.3).
6. Normalise the conformed img1 with p99 inside the pre-mask.
7. Crop the model grid around the pre-mask's centre of mass (with the neck rule, §5.5).
8. Predict again on that crop.
9. Put the result back on the conformed grid (order 0) and binarise: > 0.5, opening r = 3 mm,
   `minVol` 30 000 mm^3, `clusterCheck` "size".

The model is chosen among the `model_info*.json` under --models-dir whose `target` is
"brain_mask" (the published format is `.keras` + `script`, §2.2), by the rule the markers use.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shiva_bids.errors import MissingInputError, UsageError
from shiva_bids.models.descriptors import ModelDescriptor
from shiva_bids.models.ensemble import EnsemblePredictor
from shiva_bids.models.selection import discover_descriptors, preference
from shiva_bids.preprocessing.brainmask import BrainMask, threshold_mask
from shiva_bids.preprocessing.conform import conform
from shiva_bids.preprocessing.crop import crop_array, crop_box
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.preprocessing.normalise import normalise
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

TARGET = "brain_mask"  # descriptor `target` of the SHIVA brain-mask model (§2.1)
OPEN_MM = 3.0  # §5.4: opening r = 3 in both passes
PREMASK_MIN_MM3 = 600_000.0  # §5.4 step 5 (raised in SHiVAi 0.5.9: "half the average brain")
FINAL_MIN_MM3 = 30_000.0  # §5.4 table, final pass


@dataclass(frozen=True)
class ShivaMaskSettings:
    """How to run the brain-mask model (from RunConfig)."""

    device: str = "auto"
    threads: int = 1
    verify_checksums: bool = True
    engine: str = "auto"
    precision: str = "fp32"
    ir_cache: Path | None = None


def choose_model(models_dir: Path | None) -> ModelDescriptor:
    """The brain-mask descriptor under `models_dir` (preferred as for markers: files present,
    real before demo, newest version and release)."""
    if models_dir is None:
        raise UsageError("--brain-mask shiva needs --models-dir with a SHIVA brain-mask model "
                         f"(a model_info*.json whose target is {TARGET!r})")
    candidates = [d for d in discover_descriptors(models_dir) if d.target == TARGET]
    if not candidates:
        raise MissingInputError(f"--brain-mask shiva: no model_info*.json with target "
                                f"{TARGET!r} under --models-dir {models_dir}")
    best = max(candidates, key=preference)
    log.info("brain mask: SHIVA model %s (%s)", best.label, best.path)
    return best


def preconform_voxel_size(volume: Volume, grid: Sequence[int]) -> tuple[float, float, float]:
    """SHiVAi's "keep the field of view" voxel size: dim_i x zoom_i / grid_i, with dims and
    zooms in the file's axis order and `grid` in RAS order (SHiVAi's `Conform` without a voxel
    size; for files whose axes are not stored in RAS order this stretches the image, exactly
    as the model saw in SHiVAi)."""
    fov = np.asarray(volume.shape[:3], float) * np.asarray(volume.zooms, float)
    return tuple(float(v) for v in fov / np.asarray(grid, float))


def preconform(volume: Volume, grid: Sequence[int]) -> Volume:
    """Step 1: img1 straight onto the model grid, whole field of view kept (cubic spline)."""
    return conform(volume, tuple(int(g) for g in grid), preconform_voxel_size(volume, grid))


def shiva_brain_mask(image: Volume, conformed: Volume, descriptor: ModelDescriptor,
                     settings: ShivaMaskSettings, source: str) -> BrainMask:
    """Steps 1-9 of the module docstring; `image` is img1 as loaded (native grid),
    `conformed` its 256^3 conformed volume. Returns the mask on the conformed grid."""
    predictor = EnsemblePredictor(descriptor, device=settings.device, threads=settings.threads,
                                  verify_checksums=settings.verify_checksums,
                                  engine=settings.engine, precision=settings.precision,
                                  ir_cache=settings.ir_cache)
    grid = model_grid(predictor)
    pre = preconform(image, grid)
    first = _predict(predictor, normalise(pre.data, None))
    on_conformed = resample_world(first, pre.affine, conformed.shape, conformed.affine,
                                  "nearest")
    premask = threshold_mask(on_conformed, conformed.zooms, f"{source} (SHIVA pre-mask)",
                             open_mm=OPEN_MM, min_vol_mm3=PREMASK_MIN_MM3, cluster_check="size")
    box = crop_box(premask, grid)
    cropped = crop_array(normalise(conformed.data, premask), box)
    second = _predict(predictor, cropped)
    back = resample_world(second, conformed.affine @ box.translation(), conformed.shape,
                          conformed.affine, "nearest")
    final = threshold_mask(back, conformed.zooms, f"{source} (SHIVA brain mask)",
                           open_mm=OPEN_MM, min_vol_mm3=FINAL_MIN_MM3, cluster_check="size")
    voxel_ml = conformed.voxel_volume / 1000.0
    log.info("brain mask from the SHIVA model: pre-mask %.0f mL, mask %.0f mL",
             premask.sum() * voxel_ml, final.sum() * voxel_ml)
    provenance: dict[str, Any] = {"descriptor": str(descriptor.path),
                                  "version": descriptor.version, "demo": descriptor.is_demo,
                                  "premask_volume_ml": round(float(premask.sum() * voxel_ml), 1)}
    method = f"shiva:{descriptor.version}" + (":demo" if descriptor.is_demo else "")
    return BrainMask(Volume(final.astype(np.uint8), np.asarray(conformed.affine, float)),
                     method, model=provenance)


def model_grid(predictor: EnsemblePredictor) -> tuple[int, int, int]:
    """The brain-mask model's fixed input grid (the preconform target)."""
    shape = tuple(predictor.input_shape)
    if len(shape) != 3 or None in shape:
        raise UsageError(f"{predictor.descriptor.path}: the brain-mask model has no fixed input "
                         f"grid ({shape}); SHIVA's takes 160x214x176")
    return shape  # type: ignore[return-value]


def _predict(predictor: EnsemblePredictor, image: np.ndarray) -> np.ndarray:
    """Fold-ensemble mean of one volume, unmasked (SHIVA.md §4 item 6)."""
    return predictor.predict([image], [None])[0].mean
