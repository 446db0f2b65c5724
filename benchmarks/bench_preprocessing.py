"""Benchmark: whole preprocessing of one phantom participant (T1w + FLAIR + SWI, template brain
mask, two rigid registrations) with the reference registration schedule (SHiVAi's, the default)
and the capped `fast` schedule, each in its own process (time and peak RSS), on the same inputs.

Accuracy per run: brain-mask Dice against the phantom's true mask, and the registration error
against a known misalignment (the FLAIR and SWI headers are moved by a known rigid transform,
the error is the mean distance between true and recovered positions of the truth lesion
centroids). Prints ratios fast / reference.

    PYTHONPATH=. python benchmarks/bench_preprocessing.py [--threads 2] [--keep DIR]
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

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

MISALIGN_DEG = (4.0, -3.0, 5.0)
MISALIGN_MM = (3.0, -4.0, 2.5)


def misalignment() -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", MISALIGN_DEG, degrees=True).as_matrix()
    t[:3, 3] = MISALIGN_MM
    return t


def misalign(path: Path, out: Path, transform: np.ndarray) -> Path:
    """Copy an image with its header moved by `transform` (content moves with it in world)."""
    img = nib.load(path)
    moved = nib.Nifti1Image(np.asarray(img.dataobj), transform @ img.affine)
    nib.save(moved, out)
    return out


def prepare(folder: Path) -> dict:
    from shiva_bids.synthetic import generate_dataset
    ds = generate_dataset(folder / "raw", n_participants=1, seed=3, loads=["severe"],
                          modalities=["T1w", "FLAIR", "T2starw"])
    unit = ds.units[0]
    t = misalignment()
    flair = misalign(unit.images["FLAIR"], folder / "sub-01_FLAIR.nii.gz", t)
    swi = misalign(unit.images["T2starw"], folder / "sub-01_T2starw.nii.gz", t)
    centroids = [les.centroid_mm for les in unit.lesions]
    return {"t1w": str(unit.images["T1w"]), "flair": str(flair), "swi": str(swi),
            "truth_mask": str(unit.brain_masks["T1w"]), "centroids": centroids,
            "misalignment": t.tolist()}


def child(spec_path: Path, schedule: str, threads: int, work: Path) -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    from shiva_bids.bids.inputs import InputSet
    from shiva_bids.preprocessing import PreprocOptions, preprocess_unit
    from shiva_bids.preprocessing.registration import map_points
    spec = json.loads(spec_path.read_text())
    inputs = InputSet("01", t1w=Path(spec["t1w"]), flair=Path(spec["flair"]),
                      swi=Path(spec["swi"]))
    start = time.perf_counter()
    unit = preprocess_unit(inputs, {"t1", "flair", "swi"},
                           PreprocOptions(registration=schedule, threads=threads), work)
    seconds = time.perf_counter() - start
    truth = np.asarray(nib.load(spec["truth_mask"]).dataobj) > 0
    mask = unit.native_brain_mask("T1w").data > 0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    t = np.asarray(spec["misalignment"])
    points = np.asarray(spec["centroids"], dtype=float)
    want = points @ t[:3, :3].T + t[:3, 3]
    errors = {key: float(np.linalg.norm(map_points(path, points) - want, axis=1).mean())
              for key, path in unit.transforms.items()}
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps({"seconds": seconds, "peak_gib": peak_gib, "dice": float(dice),
                      "errors_mm": errors}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="folder for data and work dirs (kept)")
    parser.add_argument("--child", nargs=3, metavar=("SPEC", "SCHEDULE", "WORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), args.child[1], args.threads, Path(args.child[2]))
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_preproc_"))
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    if not spec_path.exists():
        spec_path.write_text(json.dumps(prepare(folder)))
    results = {}
    for schedule in ("reference", "fast"):
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                              "--child", str(spec_path), schedule, str(folder / schedule)],
                             check=True, capture_output=True, text=True)
        results[schedule] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[schedule]
        print(f"{schedule:9s} {r['seconds']:7.1f} s  peak {r['peak_gib']:.2f} GiB  "
              f"mask Dice {r['dice']:.4f}  registration error (mm) "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["errors_mm"].items()))
    ref, fast = results["reference"], results["fast"]
    print(f"fast / reference: time {fast['seconds'] / ref['seconds']:.2f}, peak RSS "
          f"{fast['peak_gib'] / ref['peak_gib']:.2f}")
    print("targets: <= 90 s and <= 3 GiB on 2 cores (reference, the default):",
          "met" if ref["seconds"] <= 90 and ref["peak_gib"] <= 3 else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
