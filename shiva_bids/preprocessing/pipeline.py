"""Preprocessing of one unit (participant/session) in the order SHiVAi uses (SHIVA.md §6).

T1w space (PVS, WMH, LAC; channels t1 / flair / t2): load + check img1 (T1w, or T2w with
--replace-t1), conform, brain mask, crop box, crop, normalise (channel "t1", inverted with
--inverse-t2); FLAIR/T2w: rigid onto the cropped, not normalised T1w (fixed mask = cropped
brain mask), warped straight onto the cropped grid (Welch-windowed sinc), normalised with the
cropped mask (registration.py has SHiVAi's set-up, §5.6).

SWI space (CMB): with a T1w, the conformed SWI is registered rigidly to the cropped T1w (fixed
mask: the T1w's head, see PreprocOptions.swi_registration_mask; SHiVAi uses none), the T1w
mask is brought into conformed SWI space with the inverse transform (nearest neighbour), the
SWI is cropped around that mask and normalised with it (§6 "CMB with a T1 available"); without a
T1w, the SWI is img1 and gets its own brain mask.

Every ANTs computation runs in single-threaded worker processes (workers.py), so that the
bytes never depend on --nprocs / --omp-nthreads (issue #19); the template registration of the
template mask runs while this process conforms the SWI, and the SWI and FLAIR/T2w
registrations run side by side. When the mask came another way but the atlas regions need the
template registration (PreprocOptions.template_registration), it runs beside the SWI and
FLAIR/T2w registrations instead of before them.
Defacing (Quickshear, §5.8) is not done: see docs/preprocessing.md.
The brain mask and the template registration (the expensive stages that do not depend on the
other images) are cached in the work directory under a key of their inputs and options; one
template registration serves both the template mask and the atlas regions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from shiva_bids.bids.derivatives import derivative_name
from shiva_bids.bids.inputs import InputSet, input_roles
from shiva_bids.errors import MissingInputError, UsageError
from shiva_bids.io import atomic_save_nifti, atomic_write_json
from shiva_bids.markers import SHIVA_MODEL_SHAPE
from shiva_bids.preprocessing import brainmask, registration, shiva_mask, sinc
from shiva_bids.preprocessing.brainmask import BrainMask, TemplateTransform
from shiva_bids.preprocessing.conform import conform
from shiva_bids.preprocessing.crop import CropBox, crop, crop_array, crop_box, mask_inside_box
from shiva_bids.preprocessing.headers import LoadedImage, load_image
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.preprocessing.normalise import norm_peak, normalise
from shiva_bids.preprocessing.templates import template_name
from shiva_bids.preprocessing.workers import Workers
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

T1_SPACE_CHANNELS = ("t1", "flair", "t2")
# Channel -> (BIDS suffix used in transform names, InputSet role).
CHANNEL_INFO = {"t1": ("T1w", "t1w"), "flair": ("FLAIR", "flair"), "t2": ("T2w", "t2w"),
                "swi": ("SWI", "swi")}
BRAIN_MASK_METHODS = ("auto", "template", "shiva")
SWI_REGISTRATION_MASKS = ("head", "none")
TEMPLATE_DIR = "template"  # <work_dir>/template/: the template registration (one per unit)
REGISTRATION_RECORD = "registration.json"


@dataclass(frozen=True)
class PreprocOptions:
    """Options of the preprocessing (from RunConfig)."""

    model_shape: tuple[int, int, int] = SHIVA_MODEL_SHAPE
    brain_mask_method: str = "auto"  # auto | template | shiva
    premasked: bool = False
    replace_t1: str | None = None  # "t2": the T2w is img1 (channel "t1")
    inverse_t2: bool = False
    threads: int = 1  # worker processes for the ANTs steps (results do not depend on it)
    seed: int = 0
    keep_model_space: bool = False
    registration: str = "reference"  # SHiVAi's settings (SHIVA.md §5.6); "sloppy": --sloppy
    # Fixed mask of the SWI -> T1w registration: "head" (the cropped T1w's head, background
    # air left out; on SHiVAi's fixture 0.016 mm from SHiVAi's transform, as close as "none",
    # for ~3/4 of its CPU time) or "none" (SHiVAi's): docs/preprocessing.md.
    swi_registration_mask: str = "head"
    # Interpolator of the FLAIR/T2w resampling onto the cropped T1w grid: SHiVAi's Welch
    # windowed sinc (compiled, sinc.py: ~3 s of CPU); any other ANTs interpolator name.
    warp_interpolator: str = "welchWindowedSinc"
    templateflow_home: Path | None = None
    models_dir: Path | None = None
    device: str = "auto"  # where the SHIVA brain-mask model runs (--brain-mask shiva)
    engine: str = "auto"  # and on which engine (models/engines.py), in what precision
    precision: str = "fp32"
    ir_cache: Path | None = None  # the work directory's OpenVINO IR cache
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
    # The template -> participant registration (template name and ANTs transforms in
    # `ants.apply_transforms` order, for any grid in the participant's world), or None.
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

    def native_brain_mask(self, space: str) -> Volume:
        """The brain mask (uint8) on the native grid of the space's reference image
        (resampled once per space, then re-used by every marker)."""
        if space not in self._native_masks:
            ms = self.spaces[space]
            data = resample_world(ms.conformed_mask.data, ms.conformed_mask.affine,
                                  ms.native_shape, ms.native_affine, "nearest")
            self._native_masks[space] = Volume(data.astype(np.uint8), ms.native_header_affine)
        return self._native_masks[space]


@dataclass
class _Run:
    """What every stage of one preprocess_unit call shares."""

    unit: PreprocessedUnit
    inputs: InputSet
    images: dict[str, LoadedImage]  # role -> the checked image (loaded once)
    opts: PreprocOptions
    work_dir: Path
    workers: Workers  # every ANTs call runs there (workers.py)
    started: float = field(default_factory=time.perf_counter)

    def done(self, stage: str) -> None:
        """Log that `stage` is done, with the seconds since the unit started."""
        log.info("%s: %s (%.1f s)", self.unit.unit_id, stage,
                 time.perf_counter() - self.started)

    def load(self, role: str) -> LoadedImage:
        """The role's image, its warnings logged and recorded on the unit with its affine
        source (once per role: check_inputs read it without logging)."""
        loaded = self.images[role]
        for message in loaded.warnings:
            log.warning(message)
        self.unit.warnings.extend(loaded.warnings)
        self.unit.qc[f"affine_source_{_suffix_of(loaded.path)}"] = loaded.affine_source
        return loaded


def preprocess_unit(inputs: InputSet, needs: set[str], opts: PreprocOptions,
                    work_dir: Path) -> PreprocessedUnit:
    """Preprocess one unit for the channels in `needs` (subset of t1, flair, t2, swi).

    Registrations run in `opts.threads` single-threaded worker processes (`workers.py`): the
    FLAIR/T2w and SWI branches side by side, and the bytes never depend on `opts.threads`."""
    unknown = set(needs) - set(CHANNEL_INFO)
    if unknown:
        raise ValueError(f"unknown channels {sorted(unknown)}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    unit = PreprocessedUnit(inputs.unit_id, {})
    img1_role = "t2w" if opts.replace_t1 == "t2" else "t1w"
    if "swi" in needs and not inputs.has("swi"):
        raise MissingInputError(f"{inputs.unit_id}: no SWI/T2starw image for CMB")
    images = check_inputs(inputs, needs, img1_role, check_skull=not opts.premasked)
    want_t1_space = bool(set(needs) & set(T1_SPACE_CHANNELS))
    with Workers(opts.threads) as workers:
        run = _Run(unit, inputs, images, opts, work_dir, workers)
        if want_t1_space or ("swi" in needs and inputs.has(img1_role)):
            if not inputs.has(img1_role):
                raise MissingInputError(f"{inputs.unit_id}: no {img1_role} image for the "
                                        f"channels {sorted(needs)}")
            _t1_space(run, needs, img1_role)
        elif "swi" in needs:
            _swi_space_alone(run)
    if opts.keep_model_space:
        _save_model_space(unit, inputs, work_dir / "model_space")
    return unit


def check_inputs(inputs: InputSet, needs: set[str], img1_role: str,
                 check_skull: bool = False) -> dict[str, LoadedImage]:
    """Read every image the unit needs before any costly step, so that a corrupt or unusable
    file fails the unit at once (one line naming it) instead of after the T1w work. Returns
    the loaded images by role (each file is read once); `check_skull` applies to img1 (and to
    the SWI, which is img1 when there is no T1w). Header warnings are logged by `_Run.load`,
    when the image is used."""
    roles = input_roles(needs, img1_role)
    skull_checked = {img1_role} if inputs.has(img1_role) else {"swi"}
    return {role: load_image(inputs.image(role), check_skull=check_skull and role in skull_checked,
                             log_warnings=False)
            for role in sorted(roles) if inputs.has(role)}


# --- T1w space -------------------------------------------------------------------------------

def _t1_space(run: _Run, needs: set[str], img1_role: str) -> None:
    """The T1w model space (channel "t1"), then the FLAIR/T2w channels, the SWI space and the
    atlas regions' template registration, which run side by side in the workers."""
    t1 = _t1_channel(run, needs, img1_role)
    space, cropped = t1.space, t1.cropped
    jobs = {}  # the SWI first: its registration takes longest
    if t1.swi is not None:
        jobs["swi"] = _start_registration(run, cropped, space, t1.swi[1], "SWI")
    finish_template = _start_atlas_registration(run, t1.image, t1.conformed, t1.template)
    for channel in ("flair", "t2"):
        if channel not in needs or (channel == "t2" and img1_role == "t2w"):
            continue
        suffix, role = CHANNEL_INFO[channel]
        if not run.inputs.has(role):
            raise MissingInputError(f"{run.inputs.unit_id}: no {suffix} image for channel "
                                    f"{channel}")
        moving = run.load(role).volume
        jobs[channel] = (moving, _start_registration(run, cropped, space, moving, suffix))
    if jobs and run.opts.registration == registration.SLOPPY.name:
        message = ("sloppy rigid registration (--sloppy, testing only): not SHiVAi's schedule, "
                   "less accurate (phantoms: 0.21 against 0.12 mm)")
        log.warning("%s: %s", run.inputs.unit_id, message)
        run.unit.warnings.append(message)
    if run.opts.warp_interpolator == "welchWindowedSinc" and {"flair", "t2"} & set(jobs):
        sinc.compile_now()  # while the workers register
    for channel in ("flair", "t2"):
        if channel in jobs:
            moving, job = jobs[channel]
            result = _finish_registration(run, CHANNEL_INFO[channel][0], job)
            warped = registration.warp(run.workers, moving, space.brain_mask.shape,
                                       space.affine, result.transform,
                                       run.opts.warp_interpolator)
            space.channels[channel] = normalise(warped.data, space.brain_mask)
            run.unit.qc[f"{channel}_norm_peak"] = norm_peak(space.channels[channel])
            run.done(f"{CHANNEL_INFO[channel][0]} on the T1w model grid")
    _finish_atlas_registration(run, finish_template)
    if t1.swi is not None:
        _prefetch_atlas_alignment(run)
        result = _finish_registration(run, "SWI", jobs["swi"])
        _swi_space_from_t1(run, space, t1.swi[0], t1.swi[1], result)


@dataclass
class _T1Channel:
    """What `_t1_channel` hands on to the registrations."""

    space: ModelSpace  # the T1w model space, channel "t1"
    cropped: Volume  # the cropped, not normalised img1: the registrations' fixed image
    image: LoadedImage  # img1
    conformed: Volume  # img1 conformed
    template: Future | None  # the template being prepared for registration, if any
    swi: tuple[LoadedImage, Volume] | None  # the SWI and its conformed image, if needed


def _t1_channel(run: _Run, needs: set[str], img1_role: str) -> _T1Channel:
    """img1 conformed, its brain mask, the T1w model space with channel "t1", and the SWI
    conformed (measured: conforming it in a worker instead started the SWI registration,
    the longest, 2 s later: the workers were still importing ANTs)."""
    unit, opts = run.unit, run.opts
    img1 = run.load(img1_role)
    cache_dir = run.work_dir / "brainmask"
    template = _prepare_template(run, img1, cache_dir)
    from_img1 = {"t1", "t2"} if img1_role == "t2w" else {"t1"}
    if set(needs) - from_img1:  # rigid registrations will run: the workers import ANTs
        run.workers.warm_up()  # while this process conforms
    conformed = conform(img1.volume)  # while a worker prepares the template
    finish_mask = start_brain_mask(run, img1, conformed, cache_dir, template)
    swi = None
    if "swi" in needs:  # conformed while a worker registers the template, if any
        loaded = run.load("swi")
        swi = (loaded, conform(loaded.volume))
    mask = finish_mask()
    run.done("brain mask")
    _record_mask(unit, mask)
    space = _model_space("T1w", img1, conformed, mask.mask, opts.model_shape, unit)
    cropped = crop(conformed, space.box)
    inverse = opts.inverse_t2 and opts.replace_t1 == "t2"
    space.channels["t1"] = normalise(cropped.data, space.brain_mask, inverse)
    unit.qc["brain_mask_size"] = int(np.count_nonzero(space.brain_mask))
    unit.qc["brain_mask_volume_ml"] = round(mask.volume_ml, 1)
    unit.qc["main_norm_peak"] = norm_peak(space.channels["t1"])
    unit.spaces["T1w"] = space
    return _T1Channel(space, cropped, img1, conformed, template, swi)


# --- SWI space -------------------------------------------------------------------------------

def _swi_space_from_t1(run: _Run, t1: ModelSpace, swi: LoadedImage, conformed: Volume,
                       result: registration.RigidResult) -> None:
    """SHIVA.md §6 "CMB with a T1 available", steps 11-15: the cropped T1w mask into conformed
    SWI space (inverse rigid, nearest neighbour), the SWI cropped around it and normalised.
    Only the transform is used (CMB stays in SWI space), so the SWI is not warped onto the T1w
    grid (SHiVAi's sinc-warped SWI is an unused by-product costing ~16 s here)."""
    t1_mask = Volume(t1.brain_mask.astype(np.float32), t1.affine)
    mask = run.workers.submit(registration.apply_rigid, t1_mask, conformed.shape,
                              conformed.affine, result.transform, "nearestNeighbor",
                              invert=True).result()
    mask_data = (mask.data > 0.5).astype(np.uint8)
    space = _model_space("SWI", swi, conformed, mask_data, run.opts.model_shape, run.unit)
    _finish_swi(run.unit, space, conformed)
    run.done("SWI model space")


def _swi_space_alone(run: _Run) -> None:
    swi = run.load("swi")
    cache_dir = run.work_dir / "brainmask_swi"
    template = _prepare_template(run, swi, cache_dir)
    conformed = conform(swi.volume)
    mask = start_brain_mask(run, swi, conformed, cache_dir, template)()
    _record_mask(run.unit, mask)
    _finish_atlas_registration(run, _start_atlas_registration(run, swi, conformed, template))
    space = _model_space("SWI", swi, conformed, mask.mask.data, run.opts.model_shape, run.unit)
    run.unit.qc["brain_mask_size"] = int(np.count_nonzero(space.brain_mask))
    _finish_swi(run.unit, space, conformed)


def _finish_swi(unit: PreprocessedUnit, space: ModelSpace, conformed: Volume) -> None:
    space.channels["swi"] = normalise(crop(conformed, space.box).data, space.brain_mask)
    unit.qc["swi_norm_peak"] = norm_peak(space.channels["swi"])
    unit.spaces["SWI"] = space


# --- shared stages ---------------------------------------------------------------------------

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


def _start_atlas_registration(run: _Run, img1: LoadedImage, conformed: Volume,
                              template: Future | None) -> Callable[[], TemplateTransform] | None:
    """With `opts.template_registration`, when the mask came another way (derivatives,
    premasked, SHIVA model): start the template registration the atlas regions need, the one
    the template mask method uses (:func:`start_template_registration`); None when there is
    nothing to do. It runs in a worker beside the rigid registrations (it used to run before
    them: 17-26 s of the 72 s preprocessing of the SHiVAi fixture, issue #24)."""
    if not run.opts.template_registration or run.unit.template_transform is not None:
        return None
    return start_template_registration(run, img1, conformed, template)


def _finish_atlas_registration(run: _Run,
                               finish: Callable[[], TemplateTransform] | None) -> None:
    """Wait for what `_start_atlas_registration` started; the transform goes on the unit
    (the mask itself is kept)."""
    if finish is not None:
        run.unit.template_transform = finish()
        run.done("template registration (for the atlas regions)")


def _prefetch_atlas_alignment(run: _Run) -> None:
    """While the SWI registration (the longest) runs, another worker would wait: when the
    atlas regions will be made (`opts.template_registration`), it computes the template ->
    atlas alignment into the user cache (postprocessing/atlases.py `prefetch_alignment`), so
    that the post-processing finds it there (~12 s once per user cache). Not with a single
    worker (it would queue before the SWI's last step)."""
    if run.opts.template_registration and run.workers.processes >= 2:
        from shiva_bids.postprocessing.atlases import prefetch_alignment
        run.workers.submit(prefetch_alignment, run.opts.templateflow_home, run.opts.seed)


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


def _mask_method(run: _Run) -> str:
    """"shiva", "derivatives" (a mask given with --derivatives) or "template": the brain-mask
    method the options select for img1 (--premasked aside)."""
    method = run.opts.brain_mask_method
    if method not in BRAIN_MASK_METHODS:
        raise UsageError(f"--brain-mask {method}: unknown method")
    if method == "auto":
        return "derivatives" if run.inputs.brain_mask is not None else "template"
    return method


def _template_key(run: _Run, img1: LoadedImage) -> str:
    return _key(img1.path, template_name(run.opts.templateflow_home),
                brainmask.TEMPLATE_STAGES, run.opts.seed)


def _prepare_template(run: _Run, img1: LoadedImage, cache_dir: Path) -> Future | None:
    """When this run will register the template (the template mask method without a cached
    mask in `cache_dir`, or the atlas regions' registration not made yet), start preparing
    the template in a worker now, so that it overlaps the conform of img1."""
    key = _template_key(run, img1)
    if not run.opts.premasked and _mask_method(run) == "template":
        needed = _cached_record(cache_dir, key) is None
    else:
        needed = (run.opts.template_registration
                  and _cached_registration(run.work_dir / TEMPLATE_DIR, key) is None)
    if not needed:
        return None
    return run.workers.submit(brainmask.prepare_template, run.opts.templateflow_home)


def start_template_registration(run: _Run, img1: LoadedImage, conformed: Volume,
                                template: Future | None = None
                                ) -> Callable[[], TemplateTransform]:
    """The template -> img1 registration as a function returning it. One registration serves
    both the template brain mask and the atlas regions: it is kept in
    `<work_dir>/template/` under a key of img1, the template, the schedule and the seed, and
    reused from there by whichever needs it next (a rerun with another mask method too).
    Otherwise it is submitted to the workers now (`template`: the template being prepared by
    :func:`_prepare_template`, if any)."""
    folder = run.work_dir / TEMPLATE_DIR
    key = _template_key(run, img1)
    cached = _cached_registration(folder, key)
    if cached is not None:
        log.info("template registration reused from %s", folder)
        return lambda: cached
    if template is None:
        template = run.workers.submit(brainmask.prepare_template, run.opts.templateflow_home)
    registered = brainmask.start_template_registration(conformed, template.result(), folder,
                                                       run.workers, run.opts.seed)

    def finish_and_save() -> TemplateTransform:
        transform = registered.result()
        atomic_write_json(folder / REGISTRATION_RECORD,
                          {"key": key, **_transform_record(transform)})
        return transform

    return finish_and_save


def start_brain_mask(run: _Run, img1: LoadedImage, conformed: Volume, cache_dir: Path,
                     template: Future | None = None) -> Callable[[], BrainMask]:
    """The brain mask on the conformed img1 grid by the method the options select, as a
    function returning it: the template method only starts its registration here (with the
    template being prepared by :func:`_prepare_template`, if any), so that the caller can
    work while a worker registers."""
    opts = run.opts
    if opts.premasked:
        mask = brainmask.mask_from_image(img1.volume, conformed, "premasked")
        return lambda: mask
    method = _mask_method(run)
    if method == "derivatives":
        given = load_image(run.inputs.brain_mask)
        mask = brainmask.mask_from_image(given.volume, conformed, str(run.inputs.brain_mask))
        return lambda: mask
    if method == "shiva":
        descriptor = shiva_mask.choose_model(opts.models_dir)
        key = _key(img1.path, descriptor.path, descriptor.files, opts.model_shape)
        cached = _cached_mask(cache_dir, key, conformed)
        if cached is None:
            settings = shiva_mask.ShivaMaskSettings(opts.device, opts.threads,
                                                    opts.verify_checksums, opts.engine,
                                                    opts.precision, opts.ir_cache)
            cached = shiva_mask.shiva_brain_mask(img1.volume, conformed, descriptor, settings,
                                                 img1.path.name)
            _save_mask(cache_dir, key, cached)
        return lambda: cached
    key = _template_key(run, img1)
    cached = _cached_mask(cache_dir, key, conformed)
    if cached is not None:
        return lambda: cached
    if template is None:
        template = run.workers.submit(brainmask.prepare_template, opts.templateflow_home)
    registration = start_template_registration(run, img1, conformed, template)
    run.workers.warm_up()  # the other workers import ANTs while this one registers

    def finish_and_save() -> BrainMask:
        mask = brainmask.template_mask(conformed, template.result(), registration(),
                                       run.workers)
        _save_mask(cache_dir, key, mask)
        return mask

    return finish_and_save


def _transform_record(tt: TemplateTransform) -> dict:
    return {"template": tt.template, "template_image": str(tt.template_image),
            "transforms": [str(t) for t in tt.transforms]}


def _read_transform(meta: dict) -> TemplateTransform:
    return TemplateTransform(meta["template"], Path(meta["template_image"]),
                             tuple(Path(t) for t in meta["transforms"]))


def _save_mask(cache_dir: Path, key: str, mask: BrainMask) -> None:
    """Cache a computed mask (and what made it) in the work directory."""
    atomic_save_nifti(mask.mask.to_nifti(np.uint8), cache_dir / "brain_mask.nii.gz")
    record: dict = {"key": key, "method": mask.method, "model": mask.model}
    if mask.template_transform is not None:
        record.update(_transform_record(mask.template_transform))
    atomic_write_json(cache_dir / "brain_mask.json", record)


def _read_record(record: Path, key: str, *files: Path) -> dict | None:
    """The JSON `record` if it was written under `key` and every file it needs is there."""
    if not (record.is_file() and all(f.is_file() for f in files)):
        return None
    meta = json.loads(record.read_text())
    if meta.get("key") != key or not all(Path(t).is_file() for t in meta.get("transforms", ())):
        return None
    return meta


def _cached_record(cache_dir: Path, key: str) -> dict | None:
    """The cache record of a mask computed under `key`, if it and its files are all there."""
    return _read_record(cache_dir / "brain_mask.json", key, cache_dir / "brain_mask.nii.gz")


def _cached_registration(folder: Path, key: str) -> TemplateTransform | None:
    """The template registration made under `key` in `folder`, if it is all there."""
    meta = _read_record(folder / REGISTRATION_RECORD, key)
    return None if meta is None else _read_transform(meta)


def _cached_mask(cache_dir: Path, key: str, conformed: Volume) -> BrainMask | None:
    meta = _cached_record(cache_dir, key)
    if meta is None:
        return None
    image = cache_dir / "brain_mask.nii.gz"
    data = np.asarray(nib.load(image).dataobj, dtype=np.uint8)
    log.info("brain mask reused from %s", image)
    tt = _read_transform(meta) if "template" in meta else None
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


def _start_registration(run: _Run, cropped_t1: Volume, space: ModelSpace, moving: Volume,
                        suffix: str) -> Future:
    """Submit SHiVAi's registration of `suffix` ("FLAIR", "T2w", "SWI") onto the cropped T1w
    to the workers (registration.shivai_job); the transform goes under its BIDS name."""
    opts = run.opts
    if opts.registration not in registration.SETTINGS:
        raise UsageError(f"unknown registration settings {opts.registration!r}")
    if opts.swi_registration_mask not in SWI_REGISTRATION_MASKS:
        raise UsageError(f"unknown SWI registration mask {opts.swi_registration_mask!r}")
    swi_mask = None
    if suffix == "SWI" and opts.swi_registration_mask == "head":
        swi_mask = brainmask.head_mask(cropped_t1.data)
    job = registration.shivai_job(cropped_t1, space.brain_mask, moving, suffix,
                                  registration.SETTINGS[opts.registration], opts.seed, swi_mask)
    name = derivative_name(run.inputs.entities, "xfm", ".mat", from_=suffix, to="T1w")
    return run.workers.submit(registration.register, job, run.work_dir / "xfm" / name)


def _finish_registration(run: _Run, suffix: str, job: Future) -> registration.RigidResult:
    """Wait for a registration; record its transform and QC on the unit."""
    result = job.result()
    run.done(f"{suffix} -> T1w registration")
    run.unit.transforms[f"{suffix}->T1w"] = result.transform
    key = suffix.lower()
    run.unit.qc[f"rotation_{key}_reg"] = round(result.rotation_deg, 4)
    run.unit.qc[f"translation_{key}_reg"] = round(result.translation_mm, 4)
    run.unit.qc[f"start_{key}_reg"] = result.start
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
