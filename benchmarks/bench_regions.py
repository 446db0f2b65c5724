"""Regions from the template atlas vs the true segmentation, on phantoms (issue #17 item 4).

Usage: PYTHONPATH=. python benchmarks/bench_regions.py [--participants 4] [--seed 3] [--out DIR]

For each phantom unit (loads alternate severe/mild; T1w + SWI):

1. the app's preprocessing (`preprocess_unit`, template brain mask: the brain-mask step's
   template registration that the atlas rides on; not counted in the regions' cost);
2. the unit's regions twice, as the participant level builds them
   (`postprocessing.sources.unit_parcellation`, then `build_regions` for PVS/WMH/LAC on the
   native T1w grid and for CMB on the native SWI grid through the inverse SWI->T1w rigid):
   from the template atlas (`--regions atlas`) and from the phantom's true segmentation given
   as `--derivatives` (`--regions derivatives`);
3. every true lesion, sampled on the marker's native grid exactly as the phantom's truth masks
   are (its own cluster: detection errors are left out), assigned to a region by the app's rule
   (`assign_regions`) and compared with its true region (`scheme_region` of the lesion table,
   assigned on the phantom's 1 mm canvas from the true segmentation).

Prints, per marker and scheme, the fraction of lesions in their true region, for all lesions
and for those more than 3 mm from a region boundary (`boundary_mm` > 3; target >= 90 %), with
the atlas and with the true segmentation; and the cost per unit of the atlas regions (atlas on
the model grid + derived parcellation + four region maps), against the cost of the same from
the true segmentation measured in the same run, plus the one-off atlas alignment. Timings are
noisy on a shared machine: `uptime` is printed with them.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from shiva_bids.markers import MARKERS
from shiva_bids.postprocessing.regions import assign_regions, build_regions
from shiva_bids.postprocessing.sources import atlas_grid, unit_parcellation
from shiva_bids.preprocessing import PreprocOptions, preprocess_unit
from shiva_bids.synthetic import generate_dataset
from shiva_bids.synthetic.grids import sample
from shiva_bids.synthetic.phantom import make_participant, session_geometry

DEPTH_MM = 3.0
GRID_OF = {"T1w": "T1w", "SWI": "T2starw"}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime n/a"


def _regions(mode, unit_data, processed, work, seed):
    """Parcellation + the four markers' region maps; (maps by marker, (wall s, CPU s))."""
    start, cpu = time.perf_counter(), time.process_time()
    grid = atlas_grid(processed.spaces["T1w"].conformed_mask)
    parcellation = unit_parcellation(mode, unit_data.unit_id, unit_data.segmentation,
                                     "truth", processed.template_transform, grid,
                                     work / "atlas", seed)
    maps = {}
    for marker, spec in MARKERS.items():
        reference = processed.native_brain_mask(spec.space)
        transforms, invert = ([str(processed.transforms["SWI->T1w"])], [True]) \
            if spec.space == "SWI" else ([], None)
        maps[marker] = build_regions(spec.region_scheme, reference, parcellation=parcellation,
                                     dseg_transforms=transforms, dseg_invert=invert)
    return maps, (time.perf_counter() - start, time.process_time() - cpu)


def _lesion_labels(participant, session_index: int, modality: str) -> np.ndarray:
    """Painted-lesion ids sampled on a native grid like the truth masks (nearest)."""
    from shiva_bids.synthetic.anatomy import load_anatomy
    ids = np.zeros(load_anatomy().shape, np.int32)
    ids.reshape(-1)[participant.lesions.voxels] = participant.lesions.voxel_ids
    warp, geometry = session_geometry(participant, session_index)
    return sample({}, ids, geometry[modality][0], warp)[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-regions-"))
    loads = [("severe", "mild")[i % 2] for i in range(args.participants)]
    print(f"# {_uptime()}")
    t0 = time.perf_counter()
    data = generate_dataset(out / "bids", args.participants, seed=args.seed, loads=loads,
                            modalities=("T1w", "T2starw"), segmentation=True)
    print(f"phantoms with true segmentation: {time.perf_counter() - t0:.0f} s")
    tally = defaultdict(lambda: np.zeros(4, int))  # (mode, marker) -> [ok, n, ok deep, n deep]
    costs = defaultdict(list)
    misses = []  # lesions > 3 mm inside their region that were assigned another one
    align_done = False
    for index, unit in enumerate(data.units):
        work = out / "work" / unit.unit_id
        t0 = time.perf_counter()
        processed = preprocess_unit(unit.input_set(), {"t1", "swi"}, PreprocOptions(), work)
        costs["preprocessing (not counted)"].append((time.perf_counter() - t0, np.nan))
        participant = make_participant(args.seed, index, loads[index])
        labels = {s: _lesion_labels(participant, 0, m) for s, m in GRID_OF.items()}
        painted = participant.lesions.lesions
        for mode in ("atlas", "derivatives"):
            if mode == "atlas" and not align_done:  # the once-per-run alignment, apart
                _, seconds = _regions(mode, unit, processed, out / "work", args.seed)
                costs["atlas alignment + first unit (once per run)"].append(seconds)
                align_done = True
            maps, seconds = _regions(mode, unit, processed, out / "work", args.seed)
            costs[f"regions per unit: {mode}"].append(seconds)
            for marker, regions in maps.items():
                native = labels[MARKERS[marker].space]
                chosen = [(les, truth) for les, truth in zip(painted, unit.lesions)
                          if les.marker == marker and truth.scheme_region != "n/a"]
                ids = np.zeros(int(native.max()) + 1, np.int32)
                for k, (les, _) in enumerate(chosen, start=1):
                    if les.id < len(ids):
                        ids[les.id] = k
                clusters = ids[native]
                assigned = assign_regions(clusters, len(chosen), regions)
                present = np.bincount(clusters.ravel(), minlength=len(chosen) + 1)[1:] > 0
                for (les, truth), label, seen in zip(chosen, assigned, present):
                    if not seen:
                        continue
                    ok = regions.name(int(label)) == truth.scheme_region
                    deep = truth.boundary_mm > DEPTH_MM
                    tally[(mode, marker)] += np.array([ok, 1, ok and deep, deep], int)
                    if deep and not ok:
                        misses.append(f"{unit.unit_id} {marker} {mode}: lesion {les.id} "
                                      f"{truth.boundary_mm:.1f} mm deep in "
                                      f"{truth.scheme_region}, assigned "
                                      f"{regions.name(int(label))}")
        print(f"{unit.unit_id} done ({time.perf_counter() - t0:.0f} s since preprocessing)")
    print(f"\n# {_uptime()}")
    print("agreement with the true region (lesions as clusters):")
    print(f"{'marker':7s}{'scheme':7s}{'source':13s}{'all':>16s}{'> 3 mm':>16s}")
    for (mode, marker), (ok, n, ok_deep, n_deep) in sorted(tally.items(),
                                                          key=lambda kv: (kv[0][1], kv[0][0])):
        scheme = MARKERS[marker].region_scheme
        all_ = f"{ok / n:6.1%} ({n})" if n else "n/a"
        deep = f"{ok_deep / n_deep:6.1%} ({n_deep})" if n_deep else "n/a"
        print(f"{marker:7s}{scheme:7s}{mode:13s}{all_:>16s}{deep:>16s}")
    print("\n".join(["lesions > 3 mm from a boundary assigned another region:", *misses])
          if misses else "every lesion > 3 mm from a boundary in its true region")
    print("cost (s, mean wall / mean CPU of this process; single-threaded work, so CPU is "
          "the wall time on a free core):")
    for key, values in costs.items():
        wall, cpu = np.mean(np.asarray(values, float), axis=0)
        print(f"  {key}: wall {wall:.1f} / CPU {cpu:.1f} (n={len(values)})")
    atlas, truth = (np.mean(np.asarray(costs[f"regions per unit: {m}"], float), axis=0)
                    for m in ("atlas", "derivatives"))
    print(f"  ratio atlas / true segmentation per unit: wall {atlas[0] / truth[0]:.2f}, "
          f"CPU {atlas[1] / truth[1]:.2f}")
    print(f"# peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB; "
          f"ITK threads {os.environ.get('ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS', 'default')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
