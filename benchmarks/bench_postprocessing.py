"""Time the post-processing of one participant: four markers on a native 1 mm grid.

Usage: PYTHONPATH=. python benchmarks/bench_postprocessing.py [--repeats 1]

Builds a FreeSurfer-like aparc+aseg on a conformed 256^3 grid (tests/fs_phantom.py), a native
T1w grid of 176 x 240 x 256 voxels of 1 mm (shifted origin, so the segmentation is resampled),
and probability maps with many small PVS-like blobs, a few large WMH, CMB dots and lacunes.
Prints the time per stage, the total, the ratio to a baseline measured in the same run (one
plain `scipy.ndimage.label` call on the PVS map, 26-connectivity) and the peak RSS.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fs_phantom import make_aparc_aseg  # noqa: E402

from shiva_bids.bids import derivatives as deriv  # noqa: E402
from shiva_bids.bids.inputs import InputSet  # noqa: E402
from shiva_bids.markers import MARKERS  # noqa: E402
from shiva_bids.postprocessing import (build_regions, cluster_census, find_clusters,  # noqa: E402
                                       min_size_to_mm3, outside_brain_mask, region_stats,
                                       write_marker_outputs)
from shiva_bids.volume import Volume  # noqa: E402

NATIVE_SHAPE = (176, 240, 256)


def _probability(rng, brain: np.ndarray, n_blobs: int, sigma: float, size: tuple[int, int]):
    """Blobs of probability: random seeds in the brain, grown and smoothed."""
    seeds = np.zeros(brain.shape, np.float32)
    inside = np.argwhere(brain)
    chosen = inside[rng.choice(len(inside), n_blobs, replace=False)]
    seeds[tuple(chosen.T)] = rng.uniform(size[0], size[1], n_blobs)
    impulse = np.zeros((9, 9, 9), np.float32)
    impulse[4, 4, 4] = 1.0
    peak = ndimage.gaussian_filter(impulse, sigma).max()  # a seed of value v peaks at ~v
    return np.clip(ndimage.gaussian_filter(seeds, sigma) / peak, 0, 1).astype(np.float32)


def make_unit(seed: int = 0):
    rng = np.random.default_rng(seed)
    seg = make_aparc_aseg((256, 256, 256))
    affine = np.eye(4)
    affine[:3, 3] = [-87.5, -121.0, -125.5]
    native_brain = Volume(np.zeros(NATIVE_SHAPE, np.uint8), affine)
    from shiva_bids.postprocessing.grids import resample_nearest
    brain = resample_nearest(seg, native_brain).data > 0
    probs = {
        "PVS": _probability(rng, brain, 3000, 0.8, (1, 3)),
        "WMH": _probability(rng, brain, 40, 3.0, (1, 2)),
        "CMB": _probability(rng, brain, 30, 0.7, (1, 2)),
        "LAC": _probability(rng, brain, 10, 1.5, (1, 2)),
    }
    spread = {m: Volume((p * 0.1).astype(np.float32), affine) for m, p in probs.items()}
    return seg, native_brain.with_data(brain.astype(np.uint8)), \
        {m: Volume(p, affine) for m, p in probs.items()}, spread


class _Stage:
    """Adds the wall and CPU (process) time of a block to `times[name]` / `cpu[name]`. CPU time
    is what the stage costs on an idle machine when it runs on one core; wall time also counts
    waiting for cores that other processes hold."""

    def __init__(self, times, cpu, name):
        self.times, self.cpu, self.name = times, cpu, name

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.times[self.name] += time.perf_counter() - self.t
        self.cpu[self.name] += time.process_time() - self.c


def run_once(seg, brain, probs, spread, out: Path) -> tuple[dict, dict, dict]:
    times: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = {}
    inputs = InputSet("01", t1w=Path("/raw/sub-01/anat/sub-01_T1w.nii.gz"))
    deriv.write_dataset_description(deriv.DatasetInfo(Path("/raw"), out))
    for marker in ("PVS", "WMH", "CMB", "LAC"):
        spec = MARKERS[marker]
        with _Stage(times, cpu, "regions"):
            regions = build_regions(spec.region_scheme, brain, dseg=seg, brain=brain)
        with _Stage(times, cpu, "clusters"):
            clusters = find_clusters(probs[marker], spec.threshold,
                                     min_size_to_mm3(spec.min_cluster_size),
                                     outside_brain_mask(brain, regions))
        with _Stage(times, cpu, "census+stats"):
            census = cluster_census(clusters, probs[marker], spread[marker], regions, marker)
            brain_volume = float(np.count_nonzero(brain.data)) * brain.voxel_volume
            stats = region_stats(census, regions, marker, brain_volume)
        with _Stage(times, cpu, "write"):
            write_marker_outputs(out, inputs, marker, probs[marker], None, clusters, census,
                                 stats, brain, ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"],
                                 "bids:raw:sub-01/anat/sub-01_T1w.nii.gz", {"name": "bench"},
                                 {"min_cluster_size": spec.min_cluster_size})
        counts[marker] = clusters.count
    return dict(times), dict(cpu), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    seg, brain, probs, spread = make_unit()
    t, c = time.perf_counter(), time.process_time()
    ndimage.label(probs["PVS"].data > 0.5, structure=np.ones((3, 3, 3), bool))
    baseline, baseline_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"baseline (one scipy.ndimage.label, PVS map {NATIVE_SHAPE}): wall {baseline:.3f} s, "
          f"CPU {baseline_cpu:.3f} s; load average {os.getloadavg()[0]:.1f}")
    for repeat in range(args.repeats):
        from shiva_bids.postprocessing import regions as regions_module
        regions_module._DERIVED_CACHE.clear()
        with tempfile.TemporaryDirectory() as tmp:
            times, cpu, counts = run_once(seg, brain, probs, spread, Path(tmp))
        total, total_cpu = sum(times.values()), sum(cpu.values())
        print(f"run {repeat + 1}: clusters kept {counts}")
        for name in times:
            print(f"  {name:<13} wall {times[name]:6.2f} s   CPU {cpu[name]:6.2f} s")
        print(f"  {'total':<13} wall {total:6.2f} s   CPU {total_cpu:6.2f} s   "
              f"= {total / baseline:.1f} x baseline (wall), {total_cpu / baseline_cpu:.1f} x "
              "(CPU)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
