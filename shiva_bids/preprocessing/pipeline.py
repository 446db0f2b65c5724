"""Preprocessing of one unit (participant/session) in the order SHiVAi uses (SHIVA.md §6).

T1w space (PVS, WMH, LAC; channels t1 / flair / t2): load + check img1 (T1w, or T2w with
--replace-t1), conform, brain mask, crop box, crop, normalise (channel "t1", inverted with
--inverse-t2); FLAIR/T2w: rigid onto the cropped T1w (fixed mask = cropped brain mask), warped
straight onto the cropped grid, normalised with the cropped mask.

SWI space (CMB): with a T1w, the conformed SWI is registered rigidly to the cropped T1w (fixed
mask = cropped brain mask, which SHiVAi does not use for SWI: see `_swi_space_from_t1`), the T1w
mask is brought into conformed SWI space with the inverse transform (nearest neighbour), the
SWI is cropped around that mask and normalised with it (§6 "CMB with a T1 available"); without a
T1w, the SWI is img1 and gets its own brain mask.

Defacing (Quickshear, §5.8) is not done: see docs/preprocessing.md.
Expensive stages (brain mask, rigid registrations) are cached in the work directory under a key
of their inputs and options.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from shiva_bids.bids.derivatives import derivative_name
from shiva_bids.bids.inputs import InputSet, input_roles
from shiva_bids.errors import MissingInputError, UsageError
from shiva_bids.io import atomic_save_nifti, atomic_write_json
from shiva_bids.markers import SHIVA_MODEL_SHAPE
from shiva_bids.preprocessing import brainmask, registration, shiva_mask
from shiva_bids.preprocessing.brainmask import BrainMask, TemplateTransform
from shiva_bids.preprocessing.conform import conform
from shiva_bids.preprocessing.crop import CropBox, crop, crop_array, crop_box, mask_inside_box
from shiva_bids.preprocessing.headers import LoadedImage, load_image
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.preprocessing.normalise import norm_peak, normalise
from shiva_bids.preprocessing.templates import load_template
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

T1_SPACE_CHANNELS = ("t1", "flair", "t2")
# Channel -> (BIDS suffix used in transform names, InputSet role).
CHANNEL_INFO = {"t1": ("T1w", "t1w"), "flair": ("FLAIR", "flair"), "t2": ("T2w", "t2w"),
                "swi": ("SWI", "swi")}
BRAIN_MASK_METHODS = ("auto", "template", "shiva")


@dataclass(frozen=True)
class PreprocOptions:
    """Options of the preprocessing (from RunConfig)."""

    model_shape: tuple[int, int, int] = SHIVA_MODEL_SHAPE
    brain_mask_method: str = "auto"  # auto | template | shiva
    premasked: bool = False
    replace_t1: str | None = None  # "t2": the T2w is img1 (channel "t1")
    inverse_t2: bool = False
    threads: int = 1
    seed: int = 0
    keep_model_space: bool = False
    registration: str = "reference"  # SHiVAi's settings (SHIVA.md §5.6); "fast" caps them
    # ANTs interpolator of the FLAIR/T2w/SWI warp onto the cropped T1w grid: SHiVAi's Welch
    # windowed sinc (~25 s of CPU per image); "bSpline" costs ~2 s.
    warp_interpolator: str = "welchWindowedSinc"
    templateflow_home: Path | None = None
    models_dir: Path | None = None
    device: str = "auto"  # where the SHIVA brain-mask model runs (--brain-mask shiva)
    verify_checksums: bool = True
    # Register the template even when the brain mask came another way (atlas regions need
    # the template -> participant transform: postprocessing/sources.py).
    template_registration: bool = False


@dataclass
class ModelSpace:
    """One model grid (a crop of the conformed reference image) and its inputs."""

    name: str  # "T1w" or "SWI"
    channels: dict[str, np.ndarray]
    brain_mask: np.ndarray
    affine: np.ndarray
    native_reference: Path
    native_shape: tuple[int, int, int]
    native_affine: np.ndarray  # the affine the pipeline used for the native reference
    native_header_affine: np.ndarray  # the file's own affine, written on native outputs
    conformed_mask: Volume
    box: CropBox

    @property
    def native_to_model(self) -> np.ndarray:
        """Native voxel indices -> model voxel indices (4x4), the mapping by which
        `PreprocessedUnit.to_native` resamples."""
        return np.linalg.inv(self.affine) @ self.native_affine

    def stack(self, modalities: Sequence[str]) -> np.ndarray:
        """Channels in descriptor order, (X, Y, Z, C) float32."""
        missing = [m for m in modalities if m not in self.channels]
        if missing:
            raise KeyError(f"{self.name} space has no channel {missing}")
        return np.stack([self.channels[m] for m in modalities], axis=-1).astype(np.float32)


@dataclass
class PreprocessedUnit:
    """Everything inference and post-processing need for one unit."""

    unit_id: str
    spaces: dict[str, ModelSpace]
    transforms: dict[str, Path] = field(default_factory=dict)
    brain_mask_method: str = ""
    warnings: list[str] = field(default_factory=list)
    qc: dict[str, float | int | str] = field(default_factory=dict)
    template_transform: TemplateTransform | None = None
    _native_masks: dict[str, Volume] = field(default_factory=dict, repr=False)

    def to_native(self, space: str, array: np.ndarray, kind: str = "linear") -> Volume:
        """A model-grid map resampled onto the native grid of the space's reference image
        (probabilities: kind="linear", float32; labels: kind="nearest", dtype kept)."""
        ms = self.spaces[space]
        if tuple(array.shape[:3]) != tuple(ms.brain_mask.shape):
            raise ValueError(f"array shape {array.shape} is not the {space} model grid "
                             f"{ms.brain_mask.shape}")
        data = resample_world(array, ms.affine, ms.native_shape, ms.native_affine, kind)
        return Volume(data, ms.native_header_affine)

    def template_registration(self) -> TemplateTransform | None:
        """The template -> participant registration of this unit (template name and ANTs
        transforms in `ants.apply_transforms` order, for any grid in the participant's
        world), or None when none was made."""
        return self.template_transform

    def native_brain_mask(self, space: str) -> Volume:
        """The brain mask (uint8) on the native grid of the space's reference image
        (resampled once per space, then re-used by every marker)."""
        if space not in self._native_masks:
            ms = self.spaces[space]
            data = resample_world(ms.conformed_mask.data, ms.conformed_mask.affine,
                                  ms.native_shape, ms.native_affine, "nearest")
            self._native_masks[space] = Volume(data.astype(np.uint8), ms.native_header_affine)
        return self._native_masks[space]


def preprocess_unit(inputs: InputSet, needs: set[str], opts: PreprocOptions,
                    work_dir: Path) -> PreprocessedUnit:
    """Preprocess one unit for the channels in `needs` (subset of t1, flair, t2, swi)."""
    unknown = set(needs) - set(CHANNEL_INFO)
    if unknown:
        raise ValueError(f"unknown channels {sorted(unknown)}")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(max(1, opts.threads)))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    unit = PreprocessedUnit(inputs.unit_id, {})
    img1_role = "t2w" if opts.replace_t1 == "t2" else "t1w"
    check_inputs(inputs, needs, img1_role)
    want_t1_space = bool(set(needs) & set(T1_SPACE_CHANNELS))
    if want_t1_space or ("swi" in needs and inputs.has(img1_role)):
        if not inputs.has(img1_role):
            raise MissingInputError(f"{inputs.unit_id}: no {img1_role} image for the "
                                    f"channels {sorted(needs)}")
        _t1_space(unit, inputs, needs, opts, work_dir, img1_role)
    if "swi" in needs:
        if not inputs.has("swi"):
            raise MissingInputError(f"{inputs.unit_id}: no SWI/T2starw image for CMB")
        if "T1w" in unit.spaces:
            _swi_space_from_t1(unit, inputs, opts, work_dir)
        else:
            _swi_space_alone(unit, inputs, opts, work_dir)
    if opts.keep_model_space:
        _save_model_space(unit, inputs, work_dir / "model_space")
    return unit


def check_inputs(inputs: InputSet, needs: set[str], img1_role: str) -> None:
    """Read every image the unit needs before any costly step, so that a corrupt or unusable
    file fails the unit at once (one line naming it) instead of after the T1w work. Header
    warnings are logged once, when the image is loaded for use."""
    for role in sorted(input_roles(needs, img1_role)):
        if inputs.has(role):
            load_image(inputs.image(role), log_warnings=False)


# --- T1w space -------------------------------------------------------------------------------

def _t1_space(unit: PreprocessedUnit, inputs: InputSet, needs: set[str], opts: PreprocOptions,
              work_dir: Path, img1_role: str) -> None:
    img1 = _load(unit, inputs.image(img1_role), check_skull=not opts.premasked)
    conformed = conform(img1.volume)
    mask = make_brain_mask(img1, conformed, inputs, opts, work_dir / "brainmask")
    _record_mask(unit, mask)
    _ensure_template_registration(unit, img1, conformed, inputs, opts, work_dir)
    space = _model_space("T1w", img1, conformed, mask.mask, opts.model_shape, unit)
    inverse = opts.inverse_t2 and opts.replace_t1 == "t2"
    space.channels["t1"] = normalise(crop(conformed, space.box).data, space.brain_mask, inverse)
    unit.qc["brain_mask_size"] = int(np.count_nonzero(space.brain_mask))
    unit.qc["brain_mask_volume_ml"] = round(mask.volume_ml, 1)
    unit.qc["main_norm_peak"] = norm_peak(space.channels["t1"])
    unit.spaces["T1w"] = space
    fixed = Volume(space.channels["t1"], space.affine)
    for channel in ("flair", "t2"):
        if channel not in needs or (channel == "t2" and img1_role == "t2w"):
            continue
        suffix, role = CHANNEL_INFO[channel]
        if not inputs.has(role):
            raise MissingInputError(f"{inputs.unit_id}: no {suffix} image for channel {channel}")
        moving = _load(unit, inputs.image(role))
        result = _register(unit, inputs, fixed, moving.volume, suffix, space.brain_mask,
                           opts, work_dir)
        space.channels[channel] = normalise(result.warped.data, space.brain_mask)
        unit.qc[f"{channel}_norm_peak"] = norm_peak(space.channels[channel])


# --- SWI space -------------------------------------------------------------------------------

def _swi_space_from_t1(unit: PreprocessedUnit, inputs: InputSet, opts: PreprocOptions,
                       work_dir: Path) -> None:
    t1 = unit.spaces["T1w"]
    swi = _load(unit, inputs.swi)
    conformed = conform(swi.volume)
    fixed = Volume(t1.channels["t1"], t1.affine)
    # SHiVAi registers the SWI without a fixed mask (SHIVA.md §5.6); with none, the schedule
    # ran to its iteration caps on phantoms (~110 s per start on 2 cores, 0.03 mm error), with
    # the cropped brain mask it converged in ~10 s (0.11 mm): the mask is used, as for FLAIR.
    # Only the transform is used (CMB stays in SWI space), so the SWI is not warped onto the
    # T1w grid (SHiVAi's sinc-warped SWI is an unused by-product costing ~16 s here).
    result = _register(unit, inputs, fixed, conformed, "SWI", t1.brain_mask, opts, work_dir,
                       warp=False)
    t1_mask = Volume(t1.brain_mask.astype(np.float32), t1.affine)
    mask = registration.apply_rigid(t1_mask, conformed.shape, conformed.affine,
                                    result.transform, "nearestNeighbor", invert=True)
    mask_data = (mask.data > 0.5).astype(np.uint8)
    space = _model_space("SWI", swi, conformed, mask_data, opts.model_shape, unit)
    _finish_swi(unit, space, conformed)


def _swi_space_alone(unit: PreprocessedUnit, inputs: InputSet, opts: PreprocOptions,
                     work_dir: Path) -> None:
    swi = _load(unit, inputs.swi, check_skull=not opts.premasked)
    conformed = conform(swi.volume)
    mask = make_brain_mask(swi, conformed, inputs, opts, work_dir / "brainmask_swi")
    _record_mask(unit, mask)
    _ensure_template_registration(unit, swi, conformed, inputs, opts, work_dir)
    space = _model_space("SWI", swi, conformed, mask.mask.data, opts.model_shape, unit)
    unit.qc["brain_mask_size"] = int(np.count_nonzero(space.brain_mask))
    _finish_swi(unit, space, conformed)


def _finish_swi(unit: PreprocessedUnit, space: ModelSpace, conformed: Volume) -> None:
    space.channels["swi"] = normalise(crop(conformed, space.box).data, space.brain_mask)
    unit.qc["swi_norm_peak"] = norm_peak(space.channels["swi"])
    unit.spaces["SWI"] = space


# --- shared stages ---------------------------------------------------------------------------

def _load(unit: PreprocessedUnit, path: Path, check_skull: bool = False) -> LoadedImage:
    loaded = load_image(path, check_skull=check_skull)
    unit.warnings.extend(loaded.warnings)
    unit.qc[f"affine_source_{_suffix_of(path)}"] = loaded.affine_source
    return loaded


def _suffix_of(path: Path) -> str:
    return Path(path).name.split(".", 1)[0].rsplit("_", 1)[-1]


def _record_mask(unit: PreprocessedUnit, mask: BrainMask) -> None:
    """The mask's method (and model, for method shiva) in the unit's summary and QC."""
    unit.brain_mask_method = mask.method
    unit.template_transform = mask.template_transform
    if mask.model:
        unit.qc["brain_mask_model"] = mask.model["descriptor"]
        unit.qc["brain_premask_volume_ml"] = mask.model["premask_volume_ml"]
        if mask.model["demo"]:
            message = ("the brain mask comes from a DEMO brain-mask model trained on "
                       "phantoms: not for research")
            log.warning(message)
            unit.warnings.append(message)


def _ensure_template_registration(unit: PreprocessedUnit, img1: LoadedImage,
                                  conformed: Volume, inputs: InputSet, opts: PreprocOptions,
                                  work_dir: Path) -> None:
    """With `opts.template_registration`, register the template as method (c) does when the
    mask came another way (derivatives, premasked, SHIVA model); the mask itself is kept."""
    if not opts.template_registration or unit.template_transform is not None:
        return
    template_opts = replace(opts, brain_mask_method="template", premasked=False)
    unit.template_transform = make_brain_mask(img1, conformed, inputs, template_opts,
                                              work_dir / "template_registration"
                                              ).template_transform


def _model_space(name: str, image: LoadedImage, conformed: Volume, mask: Volume | np.ndarray,
                 shape: tuple[int, int, int], unit: PreprocessedUnit) -> ModelSpace:
    """Crop box from the conformed mask, warnings when brain may be cut, the ModelSpace."""
    mask_data = np.asarray(mask.data if isinstance(mask, Volume) else mask, dtype=np.uint8)
    box = crop_box(mask_data, shape)
    kept = mask_inside_box(mask_data, box)
    messages = []
    if kept < 0.999:
        messages.append(f"{image.path.name}: the {shape} crop box leaves out "
                        f"{100 * (1 - kept):.1f}% of the brain mask")
    if touches_fov_edge(mask_data, conformed.affine, image.volume):
        messages.append(f"{image.path.name}: the brain mask touches the edge of the field of "
                        "view; the brain may be cut")
    for message in messages:
        log.warning(message)
    unit.warnings.extend(messages)
    affine = conformed.affine @ box.translation()
    return ModelSpace(name, {}, crop_array(mask_data, box), affine, image.path,
                      tuple(image.volume.shape), image.volume.affine, image.header_affine,
                      Volume(mask_data, conformed.affine), box)


def touches_fov_edge(mask: np.ndarray, mask_affine: np.ndarray, native: Volume,
                     margin_vox: float = 1.0) -> bool:
    """True when mask voxels lie within `margin_vox` native voxels of the native FOV's edge."""
    points = np.argwhere(mask > 0)
    if points.size == 0:
        return False
    mapping = np.linalg.inv(native.affine) @ mask_affine
    native_ijk = points @ mapping[:3, :3].T + mapping[:3, 3]
    upper = np.asarray(native.shape) - 1 - margin_vox
    return bool(((native_ijk < margin_vox) | (native_ijk > upper)).any())


def make_brain_mask(img1: LoadedImage, conformed: Volume, inputs: InputSet,
                    opts: PreprocOptions, cache_dir: Path) -> BrainMask:
    """The brain mask on the conformed img1 grid by the method the options select."""
    if opts.premasked:
        return brainmask.mask_from_image(img1.volume, conformed, "premasked")
    if opts.brain_mask_method not in BRAIN_MASK_METHODS:
        raise UsageError(f"--brain-mask {opts.brain_mask_method}: unknown method")
    if opts.brain_mask_method == "shiva":
        descriptor = shiva_mask.choose_model(opts.models_dir)
        key = _key(img1.path, descriptor.path, descriptor.files, opts.model_shape)
        cached = _cached_mask(cache_dir, key, conformed)
        if cached is None:
            settings = shiva_mask.ShivaMaskSettings(opts.device, opts.threads,
                                                    opts.verify_checksums)
            cached = shiva_mask.shiva_brain_mask(img1.volume, conformed, descriptor, settings,
                                                 img1.path.name)
            _save_mask(cache_dir, key, cached)
        return cached
    if opts.brain_mask_method == "auto" and inputs.brain_mask is not None:
        given = load_image(inputs.brain_mask)
        return brainmask.mask_from_image(given.volume, conformed, str(inputs.brain_mask))
    template = load_template(opts.templateflow_home)
    key = _key(img1.path, template.name, brainmask.TEMPLATE_STAGES, opts.seed)
    cached = _cached_mask(cache_dir, key, conformed)
    if cached is None:
        cached = brainmask.template_mask(conformed, template, cache_dir, seed=opts.seed)
        _save_mask(cache_dir, key, cached)
    return cached


def _save_mask(cache_dir: Path, key: str, mask: BrainMask) -> None:
    """Cache a computed mask (and what made it) in the work directory."""
    atomic_save_nifti(mask.mask.to_nifti(np.uint8), cache_dir / "brain_mask.nii.gz")
    record: dict = {"key": key, "method": mask.method, "model": mask.model}
    tt = mask.template_transform
    if tt is not None:
        record.update(template=tt.template, template_image=str(tt.template_image),
                      transforms=[str(t) for t in tt.transforms])
    atomic_write_json(cache_dir / "brain_mask.json", record)


def _cached_mask(cache_dir: Path, key: str, conformed: Volume) -> BrainMask | None:
    record = cache_dir / "brain_mask.json"
    image = cache_dir / "brain_mask.nii.gz"
    if not (record.is_file() and image.is_file()):
        return None
    meta = json.loads(record.read_text())
    transforms = tuple(Path(t) for t in meta.get("transforms", ()))
    if meta.get("key") != key or not all(t.is_file() for t in transforms):
        return None
    data = np.asarray(nib.load(image).dataobj, dtype=np.uint8)
    log.info("brain mask reused from %s", image)
    tt = None
    if "template" in meta:
        tt = TemplateTransform(meta["template"], Path(meta["template_image"]), transforms)
    return BrainMask(Volume(data, conformed.affine), meta["method"], tt, meta.get("model"))


def _key(*parts) -> str:
    """A cache key over input files (path, size, mtime) and options."""
    text = []
    for part in parts:
        if isinstance(part, Path) and part.exists():
            stat = part.stat()
            text.append(f"{part.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        else:
            text.append(repr(part))
    return hashlib.sha256("|".join(text).encode()).hexdigest()[:16]


def _register(unit: PreprocessedUnit, inputs: InputSet, fixed: Volume, moving: Volume,
              suffix: str, fixed_mask: np.ndarray | None, opts: PreprocOptions,
              work_dir: Path, warp: bool = True) -> registration.RigidResult:
    """Rigid `suffix` -> T1w onto the cropped grid; transform saved under its BIDS name; with
    `warp`, the moving image is also resampled onto the cropped grid."""
    if opts.registration not in registration.SETTINGS:
        raise UsageError(f"unknown registration settings {opts.registration!r}")
    name = derivative_name(inputs.entities, "xfm", ".mat", from_=suffix, to="T1w")
    path = work_dir / "xfm" / name
    result = registration.register_rigid(fixed, moving, path, fixed_mask,
                                         registration.SETTINGS[opts.registration],
                                         opts.warp_interpolator if warp else None,
                                         seed=opts.seed)
    unit.transforms[f"{suffix}->T1w"] = path
    key = suffix.lower()
    unit.qc[f"rotation_{key}_reg"] = round(result.rotation_deg, 4)
    unit.qc[f"translation_{key}_reg"] = round(result.translation_mm, 4)
    unit.qc[f"start_{key}_reg"] = result.start
    return result


def _save_model_space(unit: PreprocessedUnit, inputs: InputSet, folder: Path) -> None:
    """--keep-model-space: each channel and mask as NIfTI on its model grid."""
    for space in unit.spaces.values():
        for channel, data in space.channels.items():
            name = f"{inputs.unit_id}_space-{space.name}model_desc-{channel}_preproc.nii.gz"
            atomic_save_nifti(Volume(data, space.affine).to_nifti(np.float32), folder / name)
        name = f"{inputs.unit_id}_space-{space.name}model_desc-brain_mask.nii.gz"
        atomic_save_nifti(Volume(space.brain_mask, space.affine).to_nifti(np.uint8),
                          folder / name)
