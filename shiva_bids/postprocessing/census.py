"""Cluster census: one row per cluster (the `seg-<M>_dseg.tsv` look-up table).

SHiVAi's census (reference/SHIVA.md §10) has the label, the size in voxels and the region;
shiva-bids adds the volume in mm^3, the centroid in world RAS mm, the maximum and mean ensemble
probability, the across-fold spread (standard deviation between ensemble members, averaged
over and maximal within the cluster) and the region label. Every one of these is measured on
the **census grid**, the grid the clusters were found on: in the pipeline the 1 mm model grid,
as SHiVAi measures (`CensusGrid` in the sidecars says which). When the clusters were carried
onto the native grid (`native.carry_to_native`), `native_voxel_count` and `native_volume_mm3`
say how many voxels each has in the native dseg image.
`index` and `name` are the BIDS SegmentationLookup columns (BIDS_APPS.md §2.4).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from shiva_bids.postprocessing.clusters import Clusters
from shiva_bids.postprocessing.native import NativeClusters
from shiva_bids.postprocessing.regions import RegionMap, assign_regions
from shiva_bids.postprocessing.table import Table, make_table
from shiva_bids.volume import Volume

_GRID = "census grid (see CensusGrid)"
CENSUS_COLUMNS: dict[str, dict[str, str]] = {
    "index": {"Description": "Cluster label in the dseg image (1..N)"},
    "name": {"Description": "Cluster name: marker and zero-padded index"},
    "voxel_count": {"Description": f"Number of voxels of the cluster on the {_GRID}"},
    "volume_mm3": {"Description": f"Cluster volume: voxel count x voxel volume of the {_GRID}",
                   "Units": "mm^3"},
    "native_voxel_count": {"Description": "Number of voxels with this label in the native-grid "
                                          "dseg image (see NativeLabelRule)"},
    "native_volume_mm3": {"Description": "native_voxel_count x native voxel volume",
                          "Units": "mm^3"},
    "centroid_x": {"Description": f"Centroid on the {_GRID}, world x (RAS, scanner)",
                   "Units": "mm"},
    "centroid_y": {"Description": f"Centroid on the {_GRID}, world y (RAS, scanner)",
                   "Units": "mm"},
    "centroid_z": {"Description": f"Centroid on the {_GRID}, world z (RAS, scanner)",
                   "Units": "mm"},
    "prob_max": {"Description": f"Maximum ensemble-mean probability in the cluster ({_GRID})"},
    "prob_mean": {"Description": f"Mean ensemble-mean probability in the cluster ({_GRID})"},
    "fold_std_mean": {"Description": "Across-fold standard deviation of the probability, "
                                     f"mean over the cluster ({_GRID}; n/a: single model)"},
    "fold_std_max": {"Description": "Across-fold standard deviation of the probability, "
                                    f"maximum in the cluster ({_GRID}; n/a: single model)"},
    "region": {"Description": f"Region of the cluster on the {_GRID} (winner-takes-all, ties "
                              "to the lowest label; n/a when no region map)"},
    "region_label": {"Description": "Label of that region in the marker's region scheme "
                                    "(0: none)"},
}
NATIVE_COLUMNS = ("native_voxel_count", "native_volume_mm3")
_DECIMALS = 4


def cluster_name(marker: str, index: int, count: int) -> str:
    """`PVS001`-style names, padded to at least 3 digits (unique within the table)."""
    return f"{marker}{index:0{max(3, len(str(count)))}d}"


def _per_cluster_mean_max(values: np.ndarray, labels: np.ndarray, count: int,
                          counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(1, count + 1)
    sums = np.bincount(labels, weights=values, minlength=count + 1)[1:]
    maxima = ndimage.maximum(values, labels, index) if count else np.zeros(0)
    return sums / np.maximum(counts, 1), np.asarray(maxima, dtype=float)


def grid_description(volume: Volume, name: str) -> dict[str, object]:
    """`CensusGrid` of the sidecars: which grid the census numbers were measured on."""
    return {"Name": name, "Shape": [int(n) for n in volume.shape[:3]],
            "VoxelSize": [round(float(z), 4) for z in volume.zooms],
            "VoxelVolume": round(volume.voxel_volume, 6), "Units": "mm"}


def cluster_census(clusters: Clusters, prob: Volume, spread: Volume | None,
                   regions: RegionMap | None, marker: str,
                   native: NativeClusters | None = None) -> Table:
    """One row per cluster of `clusters`, measured on their grid (that of `prob`, `spread` and
    `regions`); with `native`, also each cluster's size in the native dseg image (columns:
    CENSUS_COLUMNS, the native ones only with `native`)."""
    count = clusters.count
    labels = clusters.labels.data
    inside = labels > 0
    ids = labels[inside]
    counts = np.bincount(ids, minlength=count + 1)[1:]
    coords = np.nonzero(inside)
    voxel_centroid = np.stack([np.bincount(ids, weights=c, minlength=count + 1)[1:]
                               for c in coords]) / np.maximum(counts, 1)
    world = (prob.affine[:3, :3] @ voxel_centroid + prob.affine[:3, 3:4]).T
    prob_mean, prob_max = _per_cluster_mean_max(prob.data[inside].astype(float), ids, count,
                                                counts)
    if spread is not None:
        std_mean, std_max = _per_cluster_mean_max(spread.data[inside].astype(float), ids,
                                                  count, counts)
    if regions is not None and not regions.whole_brain_only:
        region_labels = assign_regions(labels, count, regions)
    else:
        region_labels = np.zeros(count, dtype=np.int32)
    voxel_volume = prob.voxel_volume
    rows = []
    for i in range(count):
        rows.append({
            "index": i + 1,
            "name": cluster_name(marker, i + 1, count),
            "voxel_count": int(counts[i]),
            "volume_mm3": round(float(counts[i]) * voxel_volume, _DECIMALS),
            "centroid_x": round(float(world[i, 0]), 2),
            "centroid_y": round(float(world[i, 1]), 2),
            "centroid_z": round(float(world[i, 2]), 2),
            "prob_max": round(float(prob_max[i]), _DECIMALS),
            "prob_mean": round(float(prob_mean[i]), _DECIMALS),
            "fold_std_mean": None if spread is None else round(float(std_mean[i]), _DECIMALS),
            "fold_std_max": None if spread is None else round(float(std_max[i]), _DECIMALS),
            "region": None if regions is None or regions.whole_brain_only
            else regions.name(int(region_labels[i])),
            "region_label": int(region_labels[i]),
        })
    if native is not None:
        native_voxel = native.clusters.labels.voxel_volume
        for row, n in zip(rows, native.voxel_counts.tolist()):
            row.update(native_voxel_count=int(n),
                       native_volume_mm3=round(n * native_voxel, _DECIMALS))
    columns = [c for c in CENSUS_COLUMNS if native is not None or c not in NATIVE_COLUMNS]
    return make_table(rows, CENSUS_COLUMNS, columns)
