"""Evaluation metrics (voxel Dice, cluster detection, sweeps) and `shiva-bids evaluate`."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.cli import main as cli_main
from shiva_bids.errors import ExitCode
from shiva_bids.evaluation.metrics import (
    label_clusters,
    score_masks,
    threshold_sweep,
    voxel_dice,
)


def _reference() -> np.ndarray:
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:5, 2:5, 2:5] = 1  # cluster A, 27 voxels
    ref[10, 10, 10] = 1  # cluster B, 1 voxel
    ref[15:18, 15:17, 15] = 1  # cluster C, 6 voxels
    return ref


def test_voxel_dice_values():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    assert voxel_dice(a, b) == 1.0  # nothing to find, nothing found
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert voxel_dice(a, b) == pytest.approx(2 * 1 / 4)
    assert voxel_dice(a, np.zeros_like(a)) == 0.0


def test_clusters_are_26_connected_and_size_filtered():
    mask = np.zeros((5, 5, 5), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner neighbours: one cluster under 26-connectivity
    mask[3, 3, 3] = True
    assert label_clusters(mask)[1] == 2
    labels, n = label_clusters(mask, min_size=2)
    assert n == 1 and labels[3, 3, 3] == 0 and labels[0, 0, 0] == 1


def test_cluster_detection_counts():
    ref = _reference()
    pred = np.zeros_like(ref)
    pred[4:6, 4:6, 4:6] = 1  # touches A by one voxel: A found, prediction correct
    pred[12:14, 0:2, 0:2] = 1  # false positive, 8 voxels
    pred[15, 15, 15] = 1  # hits C with a single voxel
    scores = score_masks(pred, ref)
    assert (scores.n_reference, scores.n_predicted, scores.found, scores.correct) == (3, 3, 2, 2)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 / 3)
    # Dropping predicted clusters under 2 voxels loses the hit on C.
    filtered = score_masks(pred, ref, min_size=2)
    assert (filtered.n_predicted, filtered.found, filtered.correct) == (2, 1, 1)


def test_threshold_sweep_is_strict_and_monotonic():
    ref = _reference()
    prob = ref * 0.5 + (np.arange(ref.size).reshape(ref.shape) % 97 == 0) * 0.3
    rows = threshold_sweep(prob.astype(np.float32), ref)
    assert [t for t, _, _ in rows] == pytest.approx([0.1 * i for i in range(1, 10)])
    by_t = {round(t, 1): s for t, _, s in rows}
    assert by_t[0.4].voxel_dice == 1.0 and by_t[0.4].f1 == 1.0
    assert by_t[0.5].n_predicted == 0  # 0.5 > 0.5 is false (SHIVA.md §8)
    assert by_t[0.2].precision < 1.0  # the 0.3 noise voxels count as false clusters


def _save(path, data, affine=np.eye(4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def test_threshold_sweep_on_its_box_equals_whole_volume_scores():
    rng = np.random.default_rng(5)
    prob = np.zeros((40, 36, 30), np.float32)
    prob[2:6, 3:7, 1:4] = rng.uniform(0.05, 1.0, (4, 4, 3))  # near a corner
    prob[30:38, 25:33, 20:28] = rng.uniform(0.05, 1.0, (8, 8, 8))  # near the opposite one
    ref = np.zeros(prob.shape, np.uint8)
    ref[3:5, 4:6, 2:3] = 1
    ref[31:36, 26:30, 22:26] = 1
    ref[20, 18, 1] = 1  # a missed lesion off the predicted clusters
    for t, size, scores in threshold_sweep(prob, ref, min_sizes=(1, 3)):
        assert scores == score_masks(prob > t, ref, size)


def test_evaluate_cli_writes_table(tmp_path):
    ref = _reference()
    reference_dir, pred_dir = tmp_path / "reference", tmp_path / "out"
    name = "sub-01_ses-02_space-T1w_label-WMH"
    _save(reference_dir / "sub-01/ses-02/anat" / f"{name}_mask.nii.gz", ref)
    _save(pred_dir / "sub-01/ses-02/anat" / f"{name}_probseg.nii.gz",
          (ref * 0.7).astype(np.float32))
    _save(reference_dir / "sub-01/ses-02/anat" / "sub-01_ses-02_space-SWI_label-CMB_mask.nii.gz",
          ref)
    _save(pred_dir / "sub-01/ses-02/anat" / "sub-01_ses-02_space-SWI_label-CMB_mask.nii.gz",
          np.zeros_like(ref))
    assert cli_main(["evaluate", "--pred-dir", str(pred_dir),
                     "--reference-dir", str(reference_dir)]) == 0
    table = pred_dir / "group" / "evaluation.tsv"
    rows = list(csv.DictReader(table.open(), delimiter="\t"))
    wmh = [r for r in rows if r["marker"] == "WMH"]
    cmb = [r for r in rows if r["marker"] == "CMB"]
    assert len(wmh) == 9 and len(cmb) == 1
    assert wmh[0]["participant_id"] == "sub-01" and wmh[0]["session_id"] == "ses-02"
    assert wmh[0]["min_size"] == "1"  # WMH default minimum size (SHIVA.md §8)
    by_t = {r["threshold"]: r for r in wmh}
    assert float(by_t["0.6000"]["voxel_dice"]) == 1.0
    assert float(by_t["0.7000"]["voxel_dice"]) == 0.0
    assert cmb[0]["threshold"] == "n/a" and float(cmb[0]["recall"]) == 0.0
    assert "group/" in (pred_dir / ".bidsignore").read_text()


def test_evaluate_cli_errors(tmp_path, capsys):
    ref_dir, pred_dir = tmp_path / "reference", tmp_path / "out"
    _save(ref_dir / "sub-01_space-T1w_label-PVS_mask.nii.gz", _reference())
    pred_dir.mkdir()
    assert cli_main(["evaluate", "--pred-dir", str(pred_dir), "--reference-dir",
                     str(ref_dir)]) == ExitCode.NO_INPUT
    assert "no reference mask of" in capsys.readouterr().err
    _save(pred_dir / "sub-01_space-T1w_label-PVS_probseg.nii.gz",
          np.zeros((20, 20, 21), np.float32))
    assert cli_main(["evaluate", "--pred-dir", str(pred_dir), "--reference-dir",
                     str(ref_dir)]) == ExitCode.BAD_INPUT
    assert "not on the grid" in capsys.readouterr().err
    assert cli_main(["evaluate", "--pred-dir", str(pred_dir)]) == ExitCode.USAGE
