"""Speed and memory of the fetal DeepMedic inference on the CPU.

Times one model over a slab of a 200^3 volume (every tile of the slab, DeepMedic's tiling) with
one segment per batch (baseline, measured in this run) and with the batch the app picks from
the free memory (DeepMedic's 5 unless memory is short), then extrapolates to the 343 tiles of
the whole 200^3 volume and to the two-stage run of a typical fetal volume (BDN on every tile,
CGM on the tiles its ROI touches; tile counts are exact, times are per-segment times from this
run). The reference estimate (reference/FETAL_DEEPMEDIC.md §5.7) is 2.7 s per batch of 5 on
2 cores: ~3 min for 200^3. Wall and CPU seconds are both printed: on a shared machine the CPU
time divided by the thread count estimates the wall time on idle cores. `--full` runs the whole
200^3 volume.

    python benchmarks/bench_fetal.py [--threads 2] [--full] [--slab 30]
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REFERENCE_SECONDS_PER_SEGMENT = 2.7 / 5


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def ellipsoid(shape, radii) -> np.ndarray:
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grid, radii)) < 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the whole 200^3 volume")
    parser.add_argument("--slab", type=int, default=30, help="slab thickness along c")
    args = parser.parse_args()

    from shiva_bids.pipelines.fetal.inference import (batch_size_for_memory, segment_volume,
                                            segments_count, set_threads, tiles, pad_widths,
                                            zscore)
    set_threads(args.threads)
    from shiva_bids.pipelines.fetal.network import DeepMedicNet
    from shiva_bids.pipelines.fetal.synthetic import random_weights, write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        net = DeepMedicNet().load(write_checkpoint(Path(tmp) / "bdn.model.ckpt",
                                                   random_weights(0)))
    full = (200, 200, 200)
    shape = full if args.full else (200, args.slab, 29)
    rng = np.random.default_rng(0)
    volume = zscore(ellipsoid(shape, (0.8, 0.9, 0.7)) * 300.0 + rng.normal(0, 5, shape))
    print(f"volume {shape}: {segments_count(shape)} segments "
          f"(200^3: {segments_count(full)}), {args.threads} threads", flush=True)
    net(*(np.zeros((1, s, s, s, 1), np.float32) for s in (45, 26, 22)))  # trace once

    auto = batch_size_for_memory(None)
    wall, cpu = {}, {}
    for label, batch in (("baseline batch 1", 1), (f"memory-sized batch {auto}", auto)):
        start, start_cpu = time.perf_counter(), time.process_time()
        seg = segment_volume(volume, net, None, batch, label)
        wall[label] = (time.perf_counter() - start) / seg.tiles_run
        cpu[label] = (time.process_time() - start_cpu) / seg.tiles_run
        print(f"{label}: {wall[label]:.2f} s/segment wall, {cpu[label]:.2f} CPU s/segment "
              f"({seg.tiles_run} segments); peak RSS so far {peak_rss_gib():.2f} GiB", flush=True)
    base, ours = wall["baseline batch 1"], wall[f"memory-sized batch {auto}"]
    idle = cpu[f"memory-sized batch {auto}"] / args.threads
    print(f"200^3 one model: baseline {base * 343 / 60:.1f} min, ours {ours * 343 / 60:.1f} min "
          f"wall (ratio ours/baseline {ours / base:.2f}); on {args.threads} idle cores "
          f"~{idle * 343 / 60:.1f} min (CPU time / threads); reference estimate "
          f"{REFERENCE_SECONDS_PER_SEGMENT * 343 / 60:.1f} min (ratio ours-idle/reference "
          f"{idle / REFERENCE_SECONDS_PER_SEGMENT:.2f})")
    best = idle

    # Two-stage run on a typical dHCP-like fetal volume: 0.5 mm grid, brain ~ 110 x 130 x 100
    typical = (180, 200, 170)
    brain = ellipsoid(typical, (0.6, 0.65, 0.6))
    padded_roi = np.pad(brain, pad_widths(typical), mode="reflect")
    cgm_tiles, bdn_tiles = tiles(padded_roi.shape, padded_roi)
    seconds = best * (bdn_tiles + len(cgm_tiles))
    print(f"two-stage, typical volume {typical}: BDN {bdn_tiles} + CGM {len(cgm_tiles)} "
          f"segments -> {seconds / 60:.1f} min extrapolated at {best:.2f} s/segment "
          "(idle-core estimate)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
