"""Per-participant statistics per marker and region (reference/SHIVA.md §10).

One row per region: "Whole brain" first (every kept cluster, region or not), then every region
of the marker's scheme in label order, empty ones included (count 0, total 0, other
statistics n/a), as SHiVAi's `{pred}_stats.csv`. Every number comes from the census, i.e.
from the grid the clusters were found on (`CensusGrid` in the metadata; in the pipeline the
1 mm model grid, as SHiVAi). Volumes are in mm^3 (SHiVAi: voxels of its 1 mm grid, the same
number). The brain volume (same grid) is repeated on each row so that tables of many
participants can be stacked. With no region source only the whole-brain row exists and the
metadata says `"WholeBrainOnly": true`. Regions from the template atlas add `"RegionAtlas"`
(name, space, licence, citation, and that such regions are approximate).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from shiva_bids.postprocessing.regions import WHOLE_BRAIN, RegionMap
from shiva_bids.postprocessing.table import Table, make_table

WHOLE_BRAIN_LABEL = -1  # SHiVAi's region dictionaries: "Whole brain": -1
_VOL = {"Units": "mm^3"}
STATS_COLUMNS: dict[str, dict[str, str]] = {
    "marker": {"Description": "Marker (PVS, WMH, CMB or LAC)"},
    "region": {"Description": "Region name; 'Whole brain' counts every cluster"},
    "region_label": {"Description": "Label of the region in the region scheme (-1: whole "
                                    "brain)"},
    "n_clusters": {"Description": "Number of clusters assigned to the region"},
    "total_volume_mm3": {"Description": "Sum of cluster volumes (census grid, see CensusGrid)",
                         **_VOL},
    "mean_volume_mm3": {"Description": "Mean cluster volume", **_VOL},
    "median_volume_mm3": {"Description": "Median cluster volume", **_VOL},
    "std_volume_mm3": {"Description": "Standard deviation of cluster volumes (n-1)", **_VOL},
    "min_volume_mm3": {"Description": "Smallest cluster volume", **_VOL},
    "max_volume_mm3": {"Description": "Largest cluster volume", **_VOL},
    "brain_volume_mm3": {"Description": "Volume of the brain mask on the census grid (see "
                                        "CensusGrid)", **_VOL},
}
_DECIMALS = 4


def _summary(volumes: np.ndarray) -> dict[str, float | int | None]:
    n = len(volumes)
    if n == 0:
        return {"n_clusters": 0, "total_volume_mm3": 0.0, "mean_volume_mm3": None,
                "median_volume_mm3": None, "std_volume_mm3": None, "min_volume_mm3": None,
                "max_volume_mm3": None}
    r = lambda value: round(float(value), _DECIMALS)  # noqa: E731
    return {"n_clusters": n, "total_volume_mm3": r(volumes.sum()),
            "mean_volume_mm3": r(volumes.mean()), "median_volume_mm3": r(np.median(volumes)),
            "std_volume_mm3": r(volumes.std(ddof=1)) if n > 1 else None,
            "min_volume_mm3": r(volumes.min()), "max_volume_mm3": r(volumes.max())}


def region_stats(census: Table, regions: RegionMap | None, marker: str,
                 brain_volume_mm3: float, grid: Mapping[str, Any] | None = None) -> Table:
    """Statistics of `census` per region of `regions` (see module doc); `grid` describes the
    census grid (`census.grid_description`, stored as `CensusGrid`)."""
    volumes = np.asarray(census.column("volume_mm3"), dtype=float)
    labels = np.asarray(census.column("region_label"), dtype=int)
    brain = round(float(brain_volume_mm3), 2)
    rows = [{"marker": marker, "region": WHOLE_BRAIN, "region_label": WHOLE_BRAIN_LABEL,
             **_summary(volumes), "brain_volume_mm3": brain}]
    whole_only = regions is None or regions.whole_brain_only
    if not whole_only:
        for label in sorted(regions.names):
            rows.append({"marker": marker, "region": regions.names[label], "region_label": label,
                         **_summary(volumes[labels == label]), "brain_volume_mm3": brain})
    metadata = {
        "RegionSource": "none" if regions is None else regions.source,
        "RegionScheme": None if regions is None else regions.scheme,
        "WholeBrainOnly": whole_only,
        "UnassignedClusters": int((labels == 0).sum()) if not whole_only else None,
    }
    if grid is not None:
        metadata["CensusGrid"] = dict(grid)
    if regions is not None and regions.provenance:
        metadata["RegionAtlas"] = dict(regions.provenance)
    return make_table(rows, STATS_COLUMNS, metadata=metadata)


def stats_by_region(stats: Table) -> dict[str, dict[str, float | int | None]]:
    """{region name: {statistic: value}} of a `region_stats` table (for unit summaries)."""
    keep = [c for c in stats.columns if c not in ("marker", "region")]
    return {row["region"]: {c: row[c] for c in keep} for row in stats.rows}
