"""Ensemble predictor vs reload-per-participant baseline on a SHIVA-sized network (issue #4).

Network: 3D U-net on the 160x214x176 SHIVA grid, 8 base filters doubling per level, 7 levels
(the published Unet3Dv2-10.7.2 depth, reference/SHIVA.md §2.2; MEASUREMENTS.md), each block two
3x3x3 conv + BN + swish; random weights; one SavedModel folder per fold.

(a) baseline, the published `predict_one_file.py` pattern (SHIVA.md §3): the script runs once
    per participant, so each participant pays a fresh Python process, the TensorFlow import,
    and for each fold `tf.saved_model.load` + the first (tracing) `serve` call;
(b) `EnsemblePredictor` in one process: TensorFlow imported once, each fold loaded once for
    all participants.
`--in-process` adds (a'), the same reload-per-participant loop inside one process (no process
start or import per participant), to show how much of the gain is the model loads alone.

Wall time covers everything a user waits for (process starts included); CPU time sums the
processes (children included). Prints s/participant, the ratio (a)/(b), peak RSS (the largest
process), and the max abs difference of the two results.

    python benchmarks/bench_ensemble.py            # 5 folds, 8 participants (~12 minutes)
    python benchmarks/bench_ensemble.py --quick    # 2 folds, 3 participants
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SHAPE = (160, 214, 176)
BASE_FILTERS = 8
LEVELS = 7


def build_network(seed: int, channels: int = 1, filters: tuple[int, ...] | None = None,
                  name: str = "shiva_sized_unet"):
    """A 7-level U-net (Keras 3), conv-BN-swish twice per level, seeded weights; `filters`
    per level (default: BASE_FILTERS doubling); 'same' pooling + crop handles the odd 107 side.
    bench_fullsize builds the SHIVA U-net with it."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)

    def block(x, filters, name):
        for i in range(2):
            x = layers.Conv3D(filters, 3, padding="same", name=f"{name}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation("swish", name=f"{name}_swish{i}")(x)
        return x

    inp = layers.Input((*SHAPE, channels), name="image")
    filters = filters or tuple(BASE_FILTERS * 2**level for level in range(LEVELS))
    x, skips = inp, []
    for level in range(len(filters) - 1):
        x = block(x, filters[level], f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling3D(2, padding="same", name=f"pool{level}")(x)
    x = block(x, filters[-1], "bottom")
    for level in reversed(range(len(filters) - 1)):
        skip = skips[level]
        x = layers.UpSampling3D(2, name=f"up{level}")(x)
        extra = [int(u) - int(s) for u, s in zip(x.shape[1:4], skip.shape[1:4])]
        if any(extra):
            x = layers.Cropping3D(tuple((0, e) for e in extra), name=f"crop{level}")(x)
        x = layers.Concatenate(name=f"cat{level}")([skip, x])
        x = block(x, filters[level], f"dec{level}")
    out = layers.Conv3D(1, 1, activation="sigmoid", name="head")(x)
    return keras.Model(inp, out, name=name)


def build_models(root: Path, folds: int) -> Path:
    """Export `folds` SavedModels and write their descriptor; returns the descriptor path."""
    from shiva_bids.models.testing import write_descriptor

    folder = root / "T1-PVS"
    paths = []
    for fold in range(folds):
        path = folder / f"bench_fold_{fold}.tf_inference"
        model = build_network(seed=fold)
        if fold == 0:
            print(f"network: {model.count_params() / 1e6:.1f} M parameters", flush=True)
        model.export(str(path), format="tf_saved_model", verbose=False)
        paths.append(path)
    return write_descriptor(folder, paths, "PVS", ["t1"], architecture="bench-unet",
                            model_format="SavedModel")


def participant(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Participant `index`: a random image (X, Y, Z, 1) and an ellipsoid brain mask."""
    grid = np.indices(SHAPE).astype(np.float32)
    centre = (np.array(SHAPE, np.float32) / 2)[:, None, None, None]
    radii = (np.array(SHAPE, np.float32) * 0.4)[:, None, None, None]
    mask = (((grid - centre) / radii) ** 2).sum(0) <= 1
    return np.random.default_rng(index).random((*SHAPE, 1), dtype=np.float32), mask


def reload_every_fold(descriptor_path: Path, indices: list[int]) -> list[np.ndarray]:
    """For each participant, for each fold: `tf.saved_model.load`, `serve`, release
    (SHIVA_CMB `predict_one_file.py`, SHIVA.md §3)."""
    import gc

    import tensorflow as tf

    from shiva_bids.models import load_descriptor

    descriptor = load_descriptor(descriptor_path)
    results = []
    for index in indices:
        image, mask = participant(index)
        total = np.zeros(SHAPE, np.float64)
        for fold in descriptor.folds:
            model = tf.saved_model.load(str(fold))
            out = model.serve(image[None]).numpy()[0, ..., 0]
            total += np.where(out < 0.001, 0.0, out)
            del model
            gc.collect()
        results.append((total / len(descriptor.folds)).astype(np.float32) * mask)
    return results


def ensemble(descriptor_path: Path, indices: list[int]) -> list[np.ndarray]:
    from shiva_bids.models import EnsemblePredictor, load_descriptor

    images, masks = zip(*(participant(i) for i in indices))
    predictor = EnsemblePredictor(load_descriptor(descriptor_path), device="cpu",
                                  threads=os.cpu_count() or 1)
    return [r.mean for r in predictor.predict(list(images), list(masks))]


def child(mode: str, descriptor: Path, indices: list[int], out: Path) -> None:
    """One process of a mode: TensorFlow imported here (its cost is part of the mode), the maps
    and this process's peak RSS written next to `out`."""
    import tensorflow as tf

    threads = os.cpu_count() or 1
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    maps = (ensemble if mode == "ensemble" else reload_every_fold)(descriptor, indices)
    np.save(out.with_suffix(".npy"), np.stack(maps))
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    out.write_text(json.dumps({"peak_rss_gib": rss_gib}))


def run_mode(mode: str, descriptor: Path, n: int, tmp: Path) -> tuple[dict, np.ndarray]:
    """Time one mode from outside (wall and children's CPU); "script" is one process per
    participant, the other modes one process for all."""
    groups = [[i] for i in range(n)] if mode == "script" else [list(range(n))]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    peaks, maps = [], []
    for k, indices in enumerate(groups):
        out = tmp / f"{mode}_{k}.json"
        subprocess.run([sys.executable, __file__, "--child", mode, str(descriptor),
                        ",".join(map(str, indices)), str(out)], check=True,
                       env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        peaks.append(json.loads(out.read_text())["peak_rss_gib"])
        maps.append(np.load(out.with_suffix(".npy")))
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_gib": max(peaks)}, \
        np.concatenate(maps)


MODES = {"script": "(a) script per participant", "reload": "(a') reload in one process",
         "ensemble": "(b) EnsemblePredictor"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 folds, 3 participants")
    parser.add_argument("--folds", type=int)
    parser.add_argument("--participants", type=int)
    parser.add_argument("--in-process", action="store_true",
                        help="also time the reload-per-participant loop inside one process")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "DESCRIPTOR", "INDICES", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, descriptor, indices, out = args.child
        child(mode, Path(descriptor), [int(i) for i in indices.split(",")], Path(out))
        return 0
    folds = args.folds or (2 if args.quick else 5)
    n = args.participants or (3 if args.quick else 8)
    modes = ["script"] + (["reload"] if args.in_process else []) + ["ensemble"]
    with tempfile.TemporaryDirectory(prefix="bench_ensemble_") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        descriptor = build_models(tmp, folds)
        print(f"built {folds} SavedModel folds in {time.perf_counter() - started:.0f} s; "
              f"{n} participants", flush=True)
        stats, maps = {}, {}
        for mode in modes:
            stats[mode], maps[mode] = run_mode(mode, descriptor, n, tmp)
            print(f"{MODES[mode]:28s}: {stats[mode]['seconds'] / n:6.1f} s/participant wall, "
                  f"{stats[mode]['cpu_seconds'] / n:6.1f} CPU-s/participant, "
                  f"peak RSS {stats[mode]['peak_rss_gib']:.2f} GiB", flush=True)
    diff = max(float(np.abs(maps[m] - maps["ensemble"]).max()) for m in modes)
    for mode in modes[:-1]:
        ratio = stats[mode]["seconds"] / stats["ensemble"]["seconds"]
        cpu_ratio = stats[mode]["cpu_seconds"] / stats["ensemble"]["cpu_seconds"]
        print(f"speed-up (b) vs {MODES[mode].split()[0]}: {ratio:.2f}x wall, "
              f"{cpu_ratio:.2f}x CPU time")
    print(f"target: (b) >= 1.5x faster than (a) at 8 participants, peak RSS < 5 GiB; "
          f"max |difference| between modes = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
