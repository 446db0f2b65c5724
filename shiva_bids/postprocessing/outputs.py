"""BIDS-Derivatives of one marker for one unit (BIDS_APPS.md §2.8).

Files (S = the marker's space, T1w or SWI; M = the marker), on the native grid of the reference
image, or with `res-model` on the 1 mm model grid (`--keep-model-space`, SHiVAi's own outputs):

* `space-S[_res-model]_label-M_probseg.nii.gz`: float32 ensemble-mean probability in [0, 1];
* `space-S[_res-model]_label-M_mask.nii.gz`: uint8 binary mask of the kept clusters;
* `space-S_seg-M[_res-model]_dseg.nii.gz` + `_dseg.tsv`: clusters labelled 1..N and the census
  (the same labels on both grids: the census rows);
* `space-S[_res-model]_desc-brain_mask.nii.gz`: the brain mask of that grid;
* `space-S_seg-M_stats.tsv` + `.json`: statistics per region (not BIDS: `.bidsignore`), once.

Every image has a JSON sidecar (`derivatives.write_sidecar` adds the software version and
insists on `SpatialReference` for these non-standard spaces). Everything is written atomically
through `shiva_bids.io`.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from shiva_bids.bids import derivatives as deriv
from shiva_bids.bids.inputs import InputSet
from shiva_bids.io import atomic_save_nifti, atomic_write_json, atomic_write_text
from shiva_bids.markers import MARKERS
from shiva_bids.postprocessing.clusters import CONNECTIVITY, Clusters
from shiva_bids.postprocessing.table import Table
from shiva_bids.volume import Volume


def marker_paths(output_dir: Path, inputs: InputSet, marker: str,
                 space: str | None = None, res: str | None = None) -> dict[str, Path]:
    """Output paths of one marker (keys: probseg, mask, dseg, dseg_tsv (alias census),
    brain_mask, stats, stats_json); `res` (e.g. "model") names another grid of the space."""
    space = space or MARKERS[marker].space
    src = inputs.entities
    path = lambda suffix, ext=".nii.gz", **e: deriv.derivative_path(  # noqa: E731
        Path(output_dir), src, suffix, ext, space=space, res=res if suffix != "stats" else None,
        **e)
    return {
        "probseg": path("probseg", label=marker),
        "mask": path("mask", label=marker),
        "dseg": path("dseg", seg=marker),
        "dseg_tsv": path("dseg", ".tsv", seg=marker),
        "census": path("dseg", ".tsv", seg=marker),  # the same file: the census is the LUT
        "brain_mask": path("mask", desc="brain"),
        "stats": path("stats", ".tsv", seg=marker),
        "stats_json": path("stats", ".json", seg=marker),
    }


def _nifti(volume: Volume, dtype: type):
    """NIfTI image with spatial units set to mm (the validator warns otherwise)."""
    img = volume.to_nifti(dtype)
    img.header.set_xyzt_units(xyz="mm")
    return img


# gzip level of the output images: 1 is ~2.5x faster than 6 on these mostly-zero maps and the
# files are ~10 % larger (benchmarks/bench_postprocessing.py).
COMPRESS_LEVEL = 1
# path -> digest of the shared image (brain mask) last written there by this process.
_WRITTEN: dict[Path, str] = {}


def _save_one(img, path: Path, shared: bool) -> None:
    """Save `img`; a `shared` image (the brain mask of several markers) is skipped when this
    process already wrote the same bytes to `path` and the file is still there."""
    if not shared:
        atomic_save_nifti(img, path, COMPRESS_LEVEL)
        return
    digest = hashlib.blake2b(np.ascontiguousarray(img.dataobj).tobytes()
                             + img.affine.tobytes(), digest_size=16).hexdigest()
    if _WRITTEN.get(path) == digest and path.is_file():
        return
    atomic_save_nifti(img, path, COMPRESS_LEVEL)
    _WRITTEN[path] = digest


def _save_images(jobs, n_threads: int) -> None:
    """Save (image, path, shared) jobs, in threads when `n_threads` > 1 (same bytes)."""
    if n_threads <= 1:
        for job in jobs:
            _save_one(*job)
        return
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for future in [pool.submit(_save_one, *job) for job in jobs]:
            future.result()


def _label_dtype(count: int) -> type:
    return np.int16 if count <= np.iinfo(np.int16).max else np.int32


def _extra_columns(census: Table) -> dict[str, Any]:
    """Descriptions of the census columns beyond BIDS' own `index` and `name` (redefining
    those is a validator warning)."""
    return {k: v for k, v in census.data_dictionary().items() if k not in ("index", "name")}


def write_marker_outputs(output_dir: Path, inputs: InputSet, marker: str, prob: Volume,
                         mask: Volume | None, clusters: Clusters, census: Table, stats: Table,
                         brain_mask: Volume, sources: Sequence[str], spatial_reference: str,
                         provenance: Mapping[str, Any], params: Mapping[str, Any] | None = None,
                         n_threads: int = 2) -> dict[str, Path]:
    """Write every output of `marker` for the unit `inputs`; return their paths.

    `sources`: BIDS URIs of the input images the probability map was computed from.
    `provenance`: model name/version/checksums (stored under "Model"); a true `demo` key (or
    `params["demo_models"]`) marks demo models. `params` may hold `min_cluster_size` (voxels
    of the 1 mm model grid, as given by the user), `space`, `brain_mask_sources` (BIDS URIs),
    `description` (of the probability map), `census_grid` (`census.grid_description`),
    `native_carry` (`NativeClusters.sidecar()`: how the labels reached this native grid),
    and, for another grid of the same space, `res` (the `res-` entity) with `resolution`
    (the `Resolution` sidecar field BIDS requires with it), and `write_stats` (default True;
    False for the model-grid copies: the statistics are written once). The four images are
    compressed in `n_threads` threads (zlib releases the GIL); the brain mask is written once
    per process when several markers share it (same path, same content).
    """
    params = dict(params or {})
    output_dir = Path(output_dir)
    spec = MARKERS[marker]
    paths = marker_paths(output_dir, inputs, marker, params.get("space"), params.get("res"))
    uri = lambda key: deriv.bids_uri(paths[key], output_dir)  # noqa: E731
    mask = mask if mask is not None else clusters.mask
    demo = bool(params.get("demo_models", provenance.get("demo", False)))
    common = {"SpatialReference": spatial_reference, "Manual": False, "DemoModels": demo}
    if params.get("res"):
        common["Resolution"] = params["resolution"]
    filtering = {
        "Threshold": clusters.threshold,
        "ThresholdRule": "probability > Threshold (strict)",
        "MinimumClusterSizeVoxels1mm": params.get("min_cluster_size"),
        "MinimumClusterVolume": clusters.min_size_mm3,
        "MinimumClusterVolumeUnits": "mm^3",
        "Connectivity": CONNECTIVITY,
        "MaxOutsideBrainFraction": clusters.max_outside_fraction,
        "RemovedSmallClusters": clusters.removed_small,
        "RemovedOutsideBrainClusters": clusters.removed_outside,
    }
    if params.get("census_grid"):
        filtering["CensusGrid"] = dict(params["census_grid"])
    filtering.update(params.get("native_carry", {}))

    jobs = [(_nifti(brain_mask.with_data(brain_mask.data > 0), np.uint8), paths["brain_mask"],
             True)]
    deriv.write_sidecar(paths["brain_mask"], {
        "Type": "Brain", "Description": "Brain mask on the " + (
            "model grid (see Resolution)" if params.get("res") else
            "native grid of the reference image"),
        "Sources": list(params.get("brain_mask_sources", sources)), **common})

    probability = np.clip(prob.data, 0.0, 1.0).astype(np.float32, copy=False)
    probability[np.isnan(probability)] = 0.0
    jobs.append((_nifti(prob.with_data(probability), np.float32), paths["probseg"], False))
    deriv.write_sidecar(paths["probseg"], {
        "Description": params.get("description",
                                  f"{spec.description}: ensemble-mean probability"),
        "Sources": list(sources), "Model": dict(provenance), **common})

    jobs.append((_nifti(mask.with_data(mask.data > 0), np.uint8), paths["mask"], False))
    deriv.write_sidecar(paths["mask"], {
        "Type": spec.mask_type,
        "Description": f"{spec.description}: clusters of the probability map kept by the "
                       "size and outside-brain filters",
        "Sources": [uri("probseg"), uri("brain_mask")], **filtering, **common})

    jobs.append((_nifti(clusters.labels, _label_dtype(clusters.count)), paths["dseg"], False))
    _save_images(jobs, n_threads)
    atomic_write_text(paths["dseg_tsv"], census.to_tsv())
    region_source = stats.metadata.get("RegionSource", "none")
    region_uri = region_source.split(":", 1)[1] if region_source.startswith("dseg:bids:") \
        else None
    deriv.write_sidecar(paths["dseg"], {
        "Description": f"{spec.description}: clusters labelled 1..N (see the _dseg.tsv)",
        "Sources": [uri("probseg"), uri("brain_mask")] + ([region_uri] if region_uri else []),
        "ClusterCount": clusters.count, "RegionSource": region_source,
        **({"RegionAtlas": stats.metadata["RegionAtlas"]} if "RegionAtlas" in stats.metadata
           else {}),
        **filtering, **common, **_extra_columns(census)})

    if params.get("write_stats", True):
        atomic_write_text(paths["stats"], stats.to_tsv())
        atomic_write_json(paths["stats_json"], {**stats.data_dictionary(), "Marker": marker,
                                                "Sources": [uri("dseg")]})
    else:
        del paths["stats"], paths["stats_json"]
    deriv.ensure_bidsignore(output_dir, deriv.NON_BIDS_PATTERNS)
    return paths
