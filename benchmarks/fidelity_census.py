"""Measure what the model-grid census changes, on phantoms with the bundled demo models.

Usage: PYTHONPATH=. python benchmarks/fidelity_census.py [--participants 2] [--out DIR]

Writes a phantom dataset (T1w 0.94 mm, FLAIR, T2starw on their own native grids; truth masks
under derivatives/reference), runs the participant level with the demo models and
`--keep-model-space` (brain masks from the truth, as tests/test_end_to_end.py, to save the
template registration), then prints per marker, summed over participants:

* clusters and total volume of the census (SHIVA's rule on the 1 mm model grid: what the stats
  now report) and of the former native-grid census (the same rule applied to the native
  probability map, the minimum size as a volume), with the true lesions (26-connected clusters
  of the truth mask on the native grid) and their volume;
* voxel Dice and cluster F1 against the truth on the native grid of three native masks: the
  native mask written now (native shape, labels carried from the model grid), the model-grid
  clusters carried by nearest neighbour (SHiVAi's labels on the native grid) and the former
  native-grid clusters;
* what the carrying did: native voxels above threshold left out (their model-grid cluster was
  filtered), clusters kept by their peak voxel only, clusters without a native voxel.

Accuracy numbers need no baseline; run time is not measured here.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from shiva_bids.cli import main as cli_main
from shiva_bids.demo import DEMO_MODALITIES, DEMO_MODELS_DIR
from shiva_bids.evaluation.metrics import score_masks
from shiva_bids.markers import MARKERS
from shiva_bids.postprocessing import find_clusters, min_size_to_mm3
from shiva_bids.postprocessing.grids import resample_nearest
from shiva_bids.synthetic import generate_dataset
from shiva_bids.synthetic.dataset import REFERENCE_DIR
from shiva_bids.volume import Volume


def _load(path: Path) -> Volume:
    img = nib.load(str(path))
    return Volume(np.asarray(img.dataobj), img.affine)


def _rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]


def measure_unit(out: Path, reference: Path, anat: Path, unit: str, totals: dict) -> None:
    """Add one unit's numbers to `totals[marker]`."""
    for marker, spec in MARKERS.items():
        stem = anat / f"{unit}_space-{spec.space}"
        truth_path = next(reference.rglob(f"{unit}_space-{spec.space}_label-{marker}_mask.nii.gz"),
                          None)
        if truth_path is None or not Path(f"{stem}_seg-{marker}_dseg.tsv").is_file():
            continue
        truth = _load(truth_path).data > 0
        rows = _rows(Path(f"{stem}_seg-{marker}_dseg.tsv"))
        native_prob = _load(Path(f"{stem}_label-{marker}_probseg.nii.gz"))
        native_mask = _load(Path(f"{stem}_label-{marker}_mask.nii.gz")).data > 0
        brain = _load(Path(f"{stem}_desc-brain_mask.nii.gz"))
        model_dseg = _load(Path(f"{stem}_seg-{marker}_res-model_dseg.nii.gz"))
        carried_nn = resample_nearest(model_dseg, native_prob).data > 0
        former = find_clusters(native_prob, spec.threshold, min_size_to_mm3(spec.min_cluster_size),
                               brain)
        sidecar = json.loads(Path(f"{stem}_seg-{marker}_dseg.json").read_text())
        t = totals[marker]
        t["truth lesions"] += int(score_masks(truth, truth).n_reference)
        t["truth mm3"] += float(truth.sum() * native_prob.voxel_volume)
        t["census n"] += len(rows)
        t["census mm3"] += sum(float(r["volume_mm3"]) for r in rows)
        t["former n"] += former.count
        t["former mm3"] += float(former.voxel_counts.sum() * native_prob.voxel_volume)
        for name, mask in (("native", native_mask), ("nn", carried_nn),
                           ("former", former.labels.data > 0)):
            scores = score_masks(mask, truth)
            t[f"{name} dice"].append(scores.voxel_dice)
            t[f"{name} f1"].append(scores.f1)
        t["left out voxels"] += sidecar["NativeVoxelsNotInCensus"]
        t["peak only"] += len(sidecar["ClustersCarriedByPeakVoxel"])
        t["absent"] += len(sidecar["ClustersWithoutNativeVoxel"])


def _empty_totals() -> dict:
    counts = dict.fromkeys(("truth lesions", "truth mm3", "census n", "census mm3", "former n",
                            "former mm3", "left out voxels", "peak only", "absent"), 0)
    return counts | {f"{mask} {score}": [] for mask in ("native", "nn", "former")
                     for score in ("dice", "f1")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="fidelity-census-"))
    bids, reference = root / "bids", root / "bids" / REFERENCE_DIR
    if not (bids / "dataset_description.json").is_file():  # else reuse it (and the work dir)
        generate_dataset(bids, n_participants=args.participants, seed=5,
                         loads=(["severe", "mild"] * args.participants)[:args.participants],
                         modalities=DEMO_MODALITIES)
    out = root / "out"
    code = cli_main([str(bids), str(out), "participant", "--models-dir", str(DEMO_MODELS_DIR),
                     "--derivatives", f"truth={reference}", "-w", str(root / "work"),
                     "--skip-bids-validation", "--keep-model-space"])
    if code != 0:
        print(f"participant level failed with exit code {code}", file=sys.stderr)
        return code
    totals: dict[str, dict] = defaultdict(_empty_totals)
    for summary in sorted(out.rglob("sub-*_summary.json")):
        unit = summary.name.removesuffix("_summary.json")
        measure_unit(out, reference, summary.parent / "anat", unit, totals)
    print(f"{len(list(out.rglob('sub-*_summary.json')))} units, demo models, outputs in {out}")
    print("marker | truth n / mm3 | census n / mm3 (model grid) | former native n / mm3 | "
          "Dice native / NN-carried / former | F1 native / NN-carried / former | left-out "
          "voxels, peak-only, absent")
    for marker, t in totals.items():
        mean = {k: float(np.mean(v)) for k, v in t.items() if isinstance(v, list)}
        print(f"{marker} | {t['truth lesions']} / {t['truth mm3']:.0f} | {t['census n']} / "
              f"{t['census mm3']:.0f} | "
              f"{t['former n']} / {t['former mm3']:.0f} | {mean['native dice']:.3f} / "
              f"{mean['nn dice']:.3f} / {mean['former dice']:.3f} | {mean['native f1']:.3f} / "
              f"{mean['nn f1']:.3f} / {mean['former f1']:.3f} | {t['left out voxels']}, "
              f"{t['peak only']}, {t['absent']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
