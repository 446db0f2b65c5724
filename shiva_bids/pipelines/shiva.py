"""The SHIVA pipeline of the participant level: preprocess, predict, post-process, report.

Stages (each a function of typed inputs; `runner` holds the crash/skip/chunk machinery):

* :func:`plan_units`: which marker runs with which model for each unit, and why the others
  are skipped (a missing modality, no model);
* :func:`preprocess_plan`: the unit's images on the model grid (shiva_bids.preprocessing);
* :func:`predict_chunk`: each marker's fold ensemble over all units of a chunk, every fold
  loaded once (shiva_bids.models);
* :func:`finish_unit`: native-space maps, clusters, derivatives, figures, report, and the
  summary written last (shiva_bids.postprocessing, shiva_bids.reports).
"""
from __future__ import annotations

import logging
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from shiva_bids import __version__
from shiva_bids.bids.derivatives import bids_uri, unit_dir
from shiva_bids.bids.inputs import MODALITY_TO_ROLE, InputSet
from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode, UsageError
from shiva_bids.log import unit_log
from shiva_bids.markers import MARKERS
from shiva_bids.models import (
    EnsembleOutput,
    EnsemblePredictor,
    MarkerChoice,
    ModelDescriptor,
    ModelScan,
    choose_models,
    scan_models_dir,
    warn_unused,
)
from shiva_bids.models.engines import (choose_engine, installed_version, openvino_version,
                                      tensorflow_version)
from shiva_bids.models.selection import NO_MODELS_MESSAGE
from shiva_bids.preflight import check_unit_inputs
from shiva_bids.progress import Progress
from shiva_bids.reports.citation import methods_markdown, write_citation
from shiva_bids.runner import (
    RunOutcome,
    UnitOutcome,
    available_modalities,
    chunk_size,
    chunks,
    elapsed,
    parallel_map,
    pending_units,
    record_failure,
)
from shiva_bids.summary import COMPLETE, MarkerSummary, UnitSummary, write_summary
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)


@dataclass
class UnitPlan:
    """What will run for one unit."""

    inputs: InputSet
    descriptors: dict[str, ModelDescriptor]  # marker -> model
    skipped: dict[str, str]  # marker -> reason
    started: float = field(default_factory=time.perf_counter)
    choices: dict[str, MarkerChoice] = field(default_factory=dict)  # why each release

    @property
    def needs(self) -> set[str]:
        """Model channels the unit must provide (t1, flair, swi, t2)."""
        return {m for d in self.descriptors.values() for m in d.modalities}

    @property
    def channels(self) -> set[str]:
        """Channels to preprocess: `needs`, plus the SWI space's image whenever CMB runs."""
        return self.needs | ({"swi"} if "CMB" in self.descriptors else set())


def load_descriptors(config: RunConfig) -> ModelScan:
    """Every descriptor under `--models-dir`; a clear error when no model was given."""
    if config.models_dir is None and not config.model_overrides:
        raise UsageError(NO_MODELS_MESSAGE)
    if config.models_dir is None:
        return ModelScan(Path(), (), ())
    scan = scan_models_dir(config.models_dir)
    if not config.model_overrides:
        scan.require_usable()
    return scan


def plan_units(config: RunConfig, units: Sequence[InputSet], scan: ModelScan) -> list[UnitPlan]:
    """Choose the release of each requested marker for each unit (by its modalities); the
    choice and why the other releases are not used are logged once per set of images."""
    plans, logged = [], set()
    for inputs in units:
        available = available_modalities(inputs, config.replace_t1)
        choices = choose_models(scan.descriptors, config.requested_markers, available,
                                config.model_overrides, config.models_dir, scan.broken)
        for marker, choice in choices.items():
            if choice.descriptor is None:
                log.warning("%s: %s skipped: %s", inputs.unit_id, marker, choice.reason)
            elif (key := (marker, frozenset(available))) not in logged:
                logged.add(key)
                for line in choice.log_lines():
                    log.info("units with %s: %s", "+".join(sorted(available)), line)
        plans.append(UnitPlan(
            inputs, {m: c.descriptor for m, c in choices.items() if c.descriptor is not None},
            {m: c.reason for m, c in choices.items() if c.descriptor is None},
            choices=choices))
    warn_unused(scan, {d.path for plan in plans for d in plan.descriptors.values()})
    return plans


def make_predictors(config: RunConfig, plans: Sequence[UnitPlan]
                    ) -> dict[Path, EnsemblePredictor]:
    """One predictor per descriptor in use (checksums verified once, up front)."""
    predictors: dict[Path, EnsemblePredictor] = {}
    engine = None  # resolved once for all models (one warning at most)
    for plan in plans:
        for descriptor in plan.descriptors.values():
            if descriptor.path not in predictors:
                engine = engine or choose_engine(config.engine, config.device,
                                                 config.precision, config.inference_threads)
                predictors[descriptor.path] = EnsemblePredictor(
                    descriptor, threads=config.inference_threads, mem_gb=config.mem_gb,
                    tta=config.tta, verify_checksums=not config.skip_model_checksum,
                    engine=engine, ir_cache=config.ir_cache)
    return predictors


def model_grid(predictors: dict[Path, EnsemblePredictor]) -> tuple[int, int, int]:
    """The crop grid, taken from the models (SHIVA: 160x214x176); all must agree."""
    shapes = {tuple(p.input_shape) for p in predictors.values()}
    if len(shapes) > 1:
        raise UsageError(f"the selected models expect different input grids {sorted(shapes)}; "
                         "choose models of one grid with --model")
    shape = shapes.pop() if shapes else ()
    if len(shape) != 3 or None in shape:
        raise UsageError(f"cannot read a fixed input grid from the models ({shape})")
    return shape  # type: ignore[return-value]


def preprocess_plan(task: tuple[UnitPlan, RunConfig, tuple[int, int, int]]):
    """Preprocess one unit for the channels its models need (runs in a worker process)."""
    from shiva_bids.postprocessing.sources import needs_template_registration
    from shiva_bids.preprocessing import PreprocOptions, preprocess_unit, registration
    plan, config, shape = task
    options = PreprocOptions(model_shape=shape, brain_mask_method=config.brain_mask,
                             premasked=config.premasked, replace_t1=config.replace_t1,
                             inverse_t2=config.inverse_t2, threads=config.omp_nthreads,
                             seed=config.random_seed, keep_model_space=config.keep_model_space,
                             models_dir=config.models_dir, device=config.device,
                             engine=config.engine, precision=config.precision,
                             ir_cache=config.ir_cache,
                             registration=(registration.SLOPPY if config.sloppy
                                           else registration.REFERENCE).name,
                             verify_checksums=not config.skip_model_checksum,
                             template_registration=needs_template_registration(
                                 config.regions, plan.inputs.dseg is not None))
    with unit_log(config, plan.inputs.unit_id):
        for line in (line for c in plan.choices.values() for line in c.log_lines()):
            log.info("%s: %s", plan.inputs.unit_id, line)
        log.info("%s: preprocessing for %s", plan.inputs.unit_id, ", ".join(plan.descriptors))
        return preprocess_unit(plan.inputs, plan.channels, options,
                               config.work_dir / plan.inputs.unit_id)


def predict_chunk(plans: Sequence[UnitPlan], units: dict[str, object],
                  predictors: dict[Path, EnsemblePredictor]
                  ) -> dict[tuple[str, str], EnsembleOutput]:
    """For each model in use, predict every unit of the chunk that needs it."""
    results: dict[tuple[str, str], EnsembleOutput] = {}
    for path, predictor in predictors.items():
        queue = [(plan, marker) for plan in plans if plan.inputs.unit_id in units
                 for marker, descriptor in plan.descriptors.items() if descriptor.path == path]
        if not queue:
            continue
        images, masks = [], []
        for plan, marker in queue:
            space = units[plan.inputs.unit_id].spaces[MARKERS[marker].space]
            images.append(space.stack(predictor.descriptor.modalities))
            masks.append(space.brain_mask)
        for (plan, marker), output in zip(queue, predictor.predict(images, masks)):
            results[(plan.inputs.unit_id, marker)] = output
    return results


def _uri(path: Path | None, config: RunConfig) -> str | None:
    return bids_uri(path, config.bids_dir, "raw") if path else None


def _reference_image(inputs: InputSet, space: str, config: RunConfig) -> Path:
    if space == "SWI":
        return inputs.swi  # type: ignore[return-value]
    return inputs.t2w if config.replace_t1 == "t2" else inputs.t1w  # type: ignore[return-value]


def unit_regions(config: RunConfig, inputs: InputSet, unit):
    """The unit's derived parcellation by `--regions` (postprocessing/sources.py), built once
    for all markers; the atlas is derived on the 1 mm conformed grid around the brain mask of
    the T1w space (else the SWI space)."""
    from shiva_bids.postprocessing.sources import atlas_grid, unit_parcellation
    source = ""
    if inputs.dseg is not None:
        try:
            source = bids_uri(inputs.dseg, config.bids_dir, "raw")
        except ValueError:  # a segmentation outside the raw dataset
            source = str(inputs.dseg)
    space = unit.spaces["T1w" if "T1w" in unit.spaces else "SWI"]
    return unit_parcellation(config.regions, inputs.unit_id, inputs.dseg, source,
                             unit.template_transform, atlas_grid(space.conformed_mask),
                             config.work_dir / "atlas", config.random_seed)


def _region_transforms(unit, space: str) -> tuple[list[str], list[bool] | None]:
    """ANTs transforms from the marker's grid to the T1w world the parcellation lives in:
    for CMB next to a T1w, the inverse SWI -> T1w rigid (SHIVA.md §7, `seg_to_swi`)."""
    if space == "SWI" and "T1w" in unit.spaces and "SWI->T1w" in unit.transforms:
        return [str(unit.transforms["SWI->T1w"])], [True]
    return [], None


def copy_transforms(output_dir: Path, inputs: InputSet, transforms: dict[str, Path]) -> dict:
    """Copy the unit's transforms (BIDS `_xfm` names) next to its outputs."""
    folder = unit_dir(output_dir, inputs.entities)
    folder.mkdir(parents=True, exist_ok=True)
    copied = {}
    for key, source in transforms.items():
        target = folder / Path(source).name
        if Path(source).resolve() != target.resolve():
            shutil.copyfile(source, target)
        copied[key] = str(target.relative_to(output_dir))
    return copied


def _versions() -> dict[str, str]:
    """Versions of the software that made the outputs, read from the installed packages'
    metadata: importing TensorFlow only for its version cost each post-processing worker
    process ~4 s and ~0.65 GiB (issue #16)."""
    return {"shiva-bids": __version__, "python": platform.python_version(),
            "tensorflow": tensorflow_version(), "openvino": openvino_version(),
            "antspyx": installed_version("antspyx"),
            "nibabel": nib.__version__, "numpy": np.__version__}


# The `res-` entity and `Resolution` of the model-grid outputs (--keep-model-space).
MODEL_RES = "model"


def _model_resolution(space: str, shape: tuple[int, ...]) -> str:
    return (f"1 mm isotropic model grid: the {'x'.join(map(str, shape))} crop of the conformed "
            f"(1 mm, RAS) {space} that the SHIVA models read, SHiVAi's output grid; world "
            "coordinates are those of the SpatialReference")


def finish_marker(config: RunConfig, plan: UnitPlan, unit, marker: str,
                  output: EnsembleOutput, provenance: dict, parcellation
                  ) -> MarkerSummary:
    """SHIVA's census on the model grid, the native images carrying its cluster labels, the
    derivative files of one marker (and the model-grid ones with --keep-model-space)."""
    from shiva_bids.postprocessing import (
        NativeMap,
        build_regions,
        postprocess_marker,
        stats_by_region,
        write_marker_outputs,
    )
    inputs, spec = plan.inputs, MARKERS[marker]
    space = spec.space
    grid = unit.spaces[space]
    prob = Volume(output.mean, grid.affine)
    brain = Volume(grid.brain_mask, grid.affine)
    native = NativeMap(unit.to_native(space, output.mean, "linear"), grid.native_to_model)
    transforms, invert = _region_transforms(unit, space)
    regions = build_regions(spec.region_scheme, brain, parcellation=parcellation,
                            dseg_transforms=transforms, dseg_invert=invert)
    result = postprocess_marker(
        marker, prob, brain, config.threshold(marker), config.min_cluster_size(marker),
        Volume(output.std, grid.affine), regions, native, grid_name=f"{space} model grid")
    descriptor = plan.descriptors[marker]
    if marker in plan.choices:  # which release runs and why the others do not
        provenance = {**provenance, "selection": plan.choices[marker].as_json()}
    sources = [_uri(inputs.image(_role(m, config)), config) for m in descriptor.modalities]
    reference = _uri(_reference_image(inputs, space, config), config)
    params = {"min_cluster_size": config.min_cluster_size(marker),
              "demo_models": descriptor.is_demo, "census_grid": result.grid}
    paths = write_marker_outputs(
        config.output_dir, inputs, marker, native.prob, None, result.native.clusters,
        result.census, result.stats, unit.native_brain_mask(space), sources, reference,
        provenance, {**params, "native_carry": result.native.sidecar()})
    if config.keep_model_space:
        model_paths = write_marker_outputs(
            config.output_dir, inputs, marker, prob, None, result.clusters, result.census,
            result.stats, Volume(grid.brain_mask, grid.affine), sources, reference, provenance,
            {**params, "res": MODEL_RES, "write_stats": False,
             "resolution": _model_resolution(space, grid.brain_mask.shape)})
        paths.update({f"{k}_model": v for k, v in model_paths.items() if k != "census"})
    rel = {k: str(v.relative_to(config.output_dir)) for k, v in paths.items()}
    files = {"probseg": rel["probseg"], "dseg": rel["dseg"], "census": rel["dseg_tsv"],
             "brainmask": rel["brain_mask"], "mask": rel["mask"], "stats": rel["stats"]}
    files.update({k: v for k, v in rel.items() if k.endswith("_model")})
    return MarkerSummary(
        marker=marker, status="done", space=space, threshold=config.threshold(marker),
        min_cluster_size_mm3=float(config.min_cluster_size(marker)),
        n_clusters=result.clusters.count,
        total_volume_mm3=float(sum(result.census.column("volume_mm3"))),
        regions=stats_by_region(result.stats),
        region_source=result.stats.metadata.get("RegionSource", "none"),
        model=provenance, files=files)


def _role(modality: str, config: RunConfig) -> str:
    """Input role feeding a model channel (the T2w feeds `t1` with --replace-t1 t2)."""
    if modality == "t1" and config.replace_t1 == "t2":
        return "t2w"
    return MODALITY_TO_ROLE[modality]


def save_qc_figures(config: RunConfig, inputs: InputSet, unit) -> None:
    """QC figures that need the model-space images: crop box, registration edges,
    normalised intensity histograms (saved under the unit's figures/ folder)."""
    from shiva_bids.reports import figures
    from shiva_bids.reports.participant import save_figure
    for space_name, model_space in unit.spaces.items():
        mask = model_space.brain_mask
        reference = _reference_image(inputs, space_name, config)
        if reference is None:
            continue
        native = nib.load(reference)
        background = Volume(np.asanyarray(native.dataobj).astype(np.float32), native.affine)
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * \
            (np.array(mask.shape) - 1)
        box = nib.affines.apply_affine(model_space.affine, corners)
        name = "cropbox" if space_name == "T1w" else f"cropbox{space_name.lower()}"
        save_figure(config.output_dir, inputs.entities, name, figures.crop_box(
            background, unit.native_brain_mask(space_name), box))
        grid = Volume(model_space.channels[next(iter(model_space.channels))], model_space.affine)
        for channel in ("flair", "swi"):
            if channel in model_space.channels and space_name == "T1w":
                save_figure(config.output_dir, inputs.entities, f"{channel}edges",
                            figures.registration_edges(grid, model_space.channels[channel], mask,
                                                       f"{channel.upper()} edges on T1w"))
        if space_name == "T1w":
            save_figure(config.output_dir, inputs.entities, "histograms",
                        figures.intensity_histograms(dict(model_space.channels), mask))


def finish_unit(config: RunConfig, plan: UnitPlan, unit,
                outputs: dict[str, EnsembleOutput], provenance: dict[str, dict]) -> UnitOutcome:
    """Every output of one unit; the summary (completion record) is written last."""
    from shiva_bids.reports.participant import (
        draw_marker_figures,
        render_participant_report,
    )
    inputs = plan.inputs
    parcellation = unit_regions(config, inputs, unit)
    summary = UnitSummary(
        subject=inputs.subject, session=inputs.session, status=COMPLETE,
        software_version=__version__,
        inputs={role: _uri(inputs.image(role), config) for role in ("t1w", "flair", "swi", "t2w")
                if inputs.has(role)},
        input_choices=dict(inputs.choices), brain_mask_method=unit.brain_mask_method,
        warnings=list(unit.warnings), qc=dict(unit.qc), versions=_versions(),
        demo_models=any(d.is_demo for d in plan.descriptors.values()),
        parameters={"thresholds": {m: config.threshold(m) for m in plan.descriptors},
                    "min_cluster_sizes": {m: config.min_cluster_size(m)
                                          for m in plan.descriptors},
                    "tta": config.tta, "brain_mask": config.brain_mask,
                    "random_seed": config.random_seed},
        extra={"reference_images": {s: str(_reference_image(inputs, s, config))
                                    for s in unit.spaces},
               "transforms": copy_transforms(config.output_dir, inputs, unit.transforms)})
    for marker in plan.descriptors:
        summary.markers[marker] = finish_marker(config, plan, unit, marker, outputs[marker],
                                                provenance[marker], parcellation)
    for marker, reason in plan.skipped.items():
        summary.markers[marker] = MarkerSummary(marker=marker, status="skipped", reason=reason)
    summary.markers = dict(sorted(summary.markers.items(),
                                  key=lambda item: list(MARKERS).index(item[0])))
    brain = unit.native_brain_mask("T1w" if "T1w" in unit.spaces else "SWI")
    summary.brain_volume_mm3 = float(np.count_nonzero(brain.data) * brain.voxel_volume)
    save_qc_figures(config, inputs, unit)
    draw_marker_figures(config.output_dir, summary)
    summary.runtime_s = elapsed(plan.started)
    render_participant_report(config.output_dir, summary)
    write_summary(config.output_dir, summary)
    found = ", ".join(f"{m.marker} {m.n_clusters} clusters" for m in summary.markers.values()
                      if m.status == "done")
    return UnitOutcome(inputs.unit_id, "done", f"done in {summary.runtime_s:.0f} s ({found})")


def run_shiva_units(config: RunConfig, units: Sequence[InputSet]) -> RunOutcome:
    """Process `units` (see the module docstring); returns how each ended."""
    scan = load_descriptors(config)
    if config.brain_mask == "shiva" and not config.premasked:
        from shiva_bids.preprocessing.shiva_mask import choose_model
        choose_model(config.models_dir)  # fail once, up front, when the model is missing
    outcome = RunOutcome()
    todo = pending_units(config, units, outcome)
    plans = plan_units(config, todo, scan)
    runnable = []
    for plan in plans:
        if plan.descriptors:
            runnable.append(plan)
        else:
            message = "; ".join(plan.skipped.values()) or "no marker requested"
            log.error("%s: nothing to run: %s", plan.inputs.unit_id, message)
            outcome.outcomes.append(UnitOutcome(plan.inputs.unit_id, "failed", message,
                                                ExitCode.NO_INPUT))
    runnable = check_unit_inputs(config, runnable, outcome)  # before any model is loaded
    predictors = make_predictors(config, runnable)
    if not runnable:
        return outcome
    shape = model_grid(predictors)
    provenance = {path: p.provenance for path, p in predictors.items()}
    progress = Progress(len(runnable))
    try:
        for chunk in chunks(runnable, chunk_size(config.mem_gb)):
            process_chunk(config, chunk, shape, predictors, provenance, outcome, progress)
    finally:
        progress.close()
    write_citation(config.output_dir, methods_markdown(
        sorted({m for p in runnable for m in p.descriptors}, key=list(MARKERS).index),
        demo=any(d.is_demo for p in runnable for d in p.descriptors.values())))
    return outcome


def preprocessing_workers(config: RunConfig, n_units: int) -> int:
    """ANTs worker processes per unit's preprocessing: --omp-nthreads, or more when fewer units
    than --nprocs run, so that a lone unit uses every process it was given (the bytes never
    depend on it: preprocessing/workers.py)."""
    return max(config.omp_nthreads, config.nprocs // max(1, n_units))


def process_chunk(config: RunConfig, chunk: Sequence[UnitPlan], shape: tuple[int, int, int],
                  predictors: dict[Path, EnsemblePredictor], provenance: dict[Path, dict],
                  outcome: RunOutcome, progress: Progress) -> None:
    """Preprocess, predict and finish the units of one chunk."""
    for plan in chunk:
        progress.stage(plan.inputs.unit_id, "preprocessing")
    unit_config = replace(config, omp_nthreads=preprocessing_workers(config, len(chunk)))
    results = parallel_map(preprocess_plan, [(p, unit_config, shape) for p in chunk],
                           config.nprocs)
    units_ready = {}
    for plan, result in zip(chunk, results):
        if isinstance(result, Exception):
            with unit_log(config, plan.inputs.unit_id):
                record_failure(config, plan.inputs, "preprocessing", outcome, result)
            progress.done(plan.inputs.unit_id, outcome.outcomes[-1].message)
        else:
            units_ready[plan.inputs.unit_id] = result
    progress.stage(f"{len(units_ready)} unit(s)", "inference")
    predictions = predict_chunk(chunk, units_ready, predictors)
    finishing, tasks = [], []
    for plan in chunk:
        unit = units_ready.pop(plan.inputs.unit_id, None)
        if unit is None:
            continue
        progress.stage(plan.inputs.unit_id, "post-processing and report")
        outputs = {m: predictions.pop((plan.inputs.unit_id, m)) for m in plan.descriptors}
        marker_provenance = {m: provenance[d.path] for m, d in plan.descriptors.items()}
        finishing.append(plan)
        tasks.append((config, plan, unit, outputs, marker_provenance))
    # Post-processing is single-threaded NumPy/SciPy/matplotlib work: units run side by side
    # in --nprocs worker processes (demo: 87 -> 61 s for 4 units on 2 cores).
    for plan, result in zip(finishing, parallel_map(finish_plan, tasks, config.nprocs)):
        if isinstance(result, Exception):
            with unit_log(config, plan.inputs.unit_id):
                record_failure(config, plan.inputs, "post-processing", outcome, result)
        else:
            outcome.outcomes.append(result)
        progress.done(plan.inputs.unit_id, outcome.outcomes[-1].message)


def finish_plan(task: tuple) -> UnitOutcome:
    """`finish_unit` for one (config, plan, unit, outputs, provenance) task, logged to the
    unit's log file (runs in a worker process)."""
    config, plan, unit, outputs, provenance = task
    with unit_log(config, plan.inputs.unit_id):
        return finish_unit(config, plan, unit, outputs, provenance)
