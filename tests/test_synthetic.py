"""Synthetic phantom datasets (issue #3): determinism, BIDS validity, lesion contrast, truth
alignment in every native grid, model-space samples, CLI."""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from shiva_bids.markers import MARKER_NAMES
from shiva_bids.synthetic import generate_dataset, model_space_sample, read_lesion_table
from shiva_bids.synthetic.cli import main as synth_main
from shiva_bids.synthetic.grids import NativeGrid, Pose, SubjectShape, make_grid, sample
from shiva_bids.synthetic.phantom import make_warp

# Expected sign of (mean inside the truth mask - mean in the surrounding ring) per contrast
# (issue #3 item 4); 0 = not asserted (too weak by design, e.g. CMB on T1w).
EXPECTED_SIGN = {
    "PVS": {"T1w": -1, "FLAIR": -1, "T2w": +1, "T2starw": 0},
    "WMH": {"T1w": -1, "FLAIR": +1, "T2w": +1, "T2starw": 0},
    "CMB": {"T1w": 0, "FLAIR": 0, "T2w": -1, "T2starw": -1},
    "LAC": {"T1w": -1, "FLAIR": -1, "T2w": +1, "T2starw": +1},
}
# Ring around the mask, in mm: outside the CMB blooming halo (1.6 r + 0.8 <= 4.8 mm) and the
# lacune rim (1 voxel).
RING_MM = {"PVS": (1.5, 3.5), "WMH": (1.5, 4.0), "CMB": (5.5, 8.0), "LAC": (2.5, 5.0)}


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """Two participants (mild, severe), one session, figure on: generated once."""
    root = tmp_path_factory.mktemp("phantom") / "ds"
    return generate_dataset(root, n_participants=2, seed=0, loads=["mild", "severe"],
                            figure=True)


@functools.lru_cache(maxsize=64)
def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Data and affine of a NIfTI (cached: the session's files are read by several tests)."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    data.flags.writeable = False
    return data, img.affine


def _component_contrasts(image: np.ndarray, mask: np.ndarray, brain: np.ndarray,
                         others: np.ndarray, zooms, ring_mm: tuple[float, float],
                         min_voxels: int = 10) -> np.ndarray:
    """Per connected component of `mask` with at least `min_voxels` voxels (tiny fragments
    are mostly partial-volume slivers): (mean inside - mean of the brain voxels at ring_mm
    from it, other lesions excluded) / ring mean. Computed in local boxes."""
    labels, n = ndi.label(mask > 0, structure=np.ones((3, 3, 3)))
    margin = [int(np.ceil(ring_mm[1] / z)) + 1 for z in zooms]
    out = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        box = tuple(slice(max(b.start - m, 0), b.stop + m) for b, m in zip(box, margin))
        component = labels[box] == index
        if component.sum() < min_voxels:
            continue
        dist = ndi.distance_transform_edt(~component, sampling=zooms)
        ring = (dist > ring_mm[0]) & (dist <= ring_mm[1]) & (brain[box] > 0) \
            & (others[box] == 0) & (mask[box] == 0)
        if ring.sum() < 5:
            continue
        inside = image[box][component].astype(float).mean()
        outside = image[box][ring].astype(float).mean()
        out.append((inside - outside) / outside)
    return np.array(out)


def test_dataset_layout_and_metadata(phantom):
    root = phantom.root
    assert [u.unit_id for u in phantom.units] == ["sub-01", "sub-02"]
    lines = (root / "participants.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["participant_id", "age", "sex", "load"]
    assert [line.split("\t")[3] for line in lines[1:]] == ["mild", "severe"]
    assert "phantom" in (root / "README.md").read_text().lower()
    unit = phantom.unit("02")
    for modality, path in unit.images.items():
        assert path.name == f"sub-02_{modality}.nii.gz"
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Synthetic"] is True
    assert unit.truth["CMB"].name == "sub-02_space-SWI_label-CMB_mask.nii.gz"
    assert unit.truth["PVS"].name == "sub-02_space-T1w_label-PVS_mask.nii.gz"
    assert unit.brain_masks["T1w"].name == "sub-02_space-T1w_desc-brain_mask.nii.gz"
    sidecar = json.loads(unit.truth["CMB"].with_suffix("").with_suffix(".json").read_text())
    assert sidecar["SpatialReference"] == "bids:raw:sub-02/anat/sub-02_T2starw.nii.gz"
    description = json.loads((phantom.reference_root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"]
    png = phantom.reference_root / "figures" / "sub-01_phantom.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_native_grids_are_realistic(phantom):
    """Anisotropic FLAIR/SWI, a T1w field of view larger than the 160x214x176 crop box,
    truth masks on the exact grid of their image."""
    unit = phantom.unit("01")
    t1, t1_affine = _load(unit.images["T1w"])
    assert t1.dtype == np.int16
    fov = np.array(t1.shape) * np.sqrt((t1_affine[:3, :3] ** 2).sum(0))
    assert sorted(fov) >= sorted((160, 176, 214))
    for modality in ("FLAIR", "T2starw"):
        zooms = nib.load(unit.images[modality]).header.get_zooms()
        assert max(zooms) / min(zooms) >= 1.5
    for modality, path in unit.images.items():
        image = nib.load(path)
        space = {"T2starw": "SWI"}.get(modality, modality)
        for marker, mask_path in unit.truth_by_space[space].items():
            mask = nib.load(mask_path)
            assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    # The head is not skull-stripped: intensity outside the true brain mask, inside the FOV.
    brain, _ = _load(unit.brain_masks["T1w"])
    shell = ndi.binary_dilation(brain > 0, iterations=8) & (brain == 0)
    assert np.median(t1[shell]) > 0.2 * np.median(t1[brain > 0])


def test_same_seed_gives_identical_bytes(phantom, tmp_path):
    """Rebuilding participant 1 alone, with one modality, gives the same bytes (the random
    streams do not depend on the number of participants or on the modality subset)."""
    again = generate_dataset(tmp_path / "again", n_participants=1, seed=0, loads=["mild"],
                             modalities=("T2starw",))
    first, second = phantom.unit("01"), again.unit("01")
    assert second.images["T2starw"].read_bytes() == first.images["T2starw"].read_bytes()
    for marker in MARKER_NAMES:
        assert (second.truth_by_space["SWI"][marker].read_bytes()
                == first.truth_by_space["SWI"][marker].read_bytes())
    assert second.lesion_table.read_bytes() == first.lesion_table.read_bytes()
    other = generate_dataset(tmp_path / "other", n_participants=1, seed=1, loads=["mild"],
                             modalities=("T2starw",))
    assert other.unit("01").images["T2starw"].read_bytes() != first.images["T2starw"].read_bytes()


def _validator() -> str:
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent
                                                     / "bids-validator-deno")
    if not Path(exe).exists():
        pytest.skip("bids-validator-deno is not installed")
    return exe


@pytest.mark.parametrize("which", ["raw", "reference"])
def test_official_bids_validator(phantom, which):
    root = phantom.root if which == "raw" else phantom.reference_root
    run = subprocess.run([_validator(), str(root), "--format", "json"], capture_output=True,
                         text=True, timeout=120)
    issues = json.loads(run.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []


@pytest.mark.parametrize("marker", MARKER_NAMES)
def test_lesions_change_contrast_in_every_native_grid(phantom, marker):
    """Inside each truth mask, each image differs from the surrounding tissue in the intended
    direction, on every modality's own grid: the masks align with the lesions."""
    unit = phantom.unit("02")
    checked = 0
    for modality, path in unit.images.items():
        sign = EXPECTED_SIGN[marker][modality]
        if sign == 0:
            continue
        space = {"T2starw": "SWI"}.get(modality, modality)
        image, _ = _load(path)
        zooms = nib.load(path).header.get_zooms()
        mask, _ = _load(unit.truth_by_space[space][marker])
        brain, _ = _load(unit.brain_masks[modality])
        others = sum(_load(unit.truth_by_space[space][m])[0] for m in MARKER_NAMES if m != marker)
        assert mask.sum() > 0, f"no {marker} voxels on the {modality} grid"
        small = 1 if marker in ("PVS", "CMB") else 10  # thin/small lesions: every component
        contrast = np.median(_component_contrasts(image, mask, brain, others, zooms,
                                                  RING_MM[marker], small))
        assert sign * contrast > 0.05, f"{marker} on {modality}: relative contrast {contrast:.3f}"
        # The same masks shifted in-plane past the ring's inner edge lose the contrast.
        shift = int(np.ceil(RING_MM[marker][0] / min(zooms))) + 1
        shifted = np.roll(mask, shift, axis=int(np.argmin(zooms))) & (mask == 0)
        moved = np.median(_component_contrasts(image, shifted, brain, others + mask, zooms,
                                               RING_MM[marker], small))
        assert abs(moved) < 0.5 * abs(contrast), f"{marker} on {modality}: shifted {moved:.3f}"
        checked += 1
    assert checked >= 2


def test_lesion_list_matches_masks(phantom):
    """Lesion centroids (world mm) fall on their mask; volumes agree with the T1w masks."""
    unit = phantom.unit("02")
    assert {les.marker for les in unit.lesions} == set(MARKER_NAMES)
    assert {les.region for les in unit.lesions} <= {"lobar", "deep WM", "basal ganglia",
                                                   "infratentorial", "periventricular", "CSF"}
    assert len(unit.lesions_of("PVS")) > len(phantom.unit("01").lesions_of("PVS"))
    for marker in ("LAC", "CMB"):
        mask, affine = _load(unit.truth_by_space["T1w"][marker])
        for les in unit.lesions_of(marker):
            if les.voxels < 30:
                continue
            ijk = np.rint(np.linalg.inv(affine) @ [*les.centroid_mm, 1.0])[:3].astype(int)
            near = mask[tuple(slice(max(i - 1, 0), i + 2) for i in ijk)]
            assert near.any(), f"{marker} centroid {les.centroid_mm} is not on its mask"
    for marker in ("WMH", "LAC"):
        mask, affine = _load(unit.truth_by_space["T1w"][marker])
        volume = mask.sum() * abs(np.linalg.det(affine[:3, :3]))
        listed = sum(les.volume_mm3 for les in unit.lesions_of(marker))
        assert volume == pytest.approx(listed, rel=0.2)


def test_no_lesions_for_load_none(tmp_path):
    sample_none = model_space_sample(seed=5, load="none", shape=(96, 112, 96))
    assert all(mask.sum() == 0 for mask in sample_none.masks.values())


def test_model_space_sample():
    sample_a = model_space_sample(seed=3, load="severe")
    assert set(sample_a.images) == {"t1", "flair", "swi", "t2"}
    assert set(sample_a.masks) == set(MARKER_NAMES)
    brain = sample_a.brain_mask
    assert brain.dtype == np.uint8 and brain.shape == (160, 214, 176)
    assert set(np.unique(brain)) == {0, 1}
    for name, image in sample_a.images.items():
        assert image.dtype == np.float32 and image.shape == (160, 214, 176)
        assert image.min() >= 0.0 and image.max() <= 1.0
        # SHIVA normalisation (reference/SHIVA.md §5.7): p99 in the brain maps to 1/1.3.
        assert np.percentile(image[brain > 0], 99) == pytest.approx(1 / 1.3, abs=0.01)
    for marker, mask in sample_a.masks.items():
        assert mask.dtype == np.uint8 and mask.sum() > 0
        assert (mask & brain).sum() >= 0.95 * mask.sum()
    wmh = sample_a.masks["WMH"] > 0
    normal_wm = (brain > 0) & ~wmh & (sample_a.images["t1"] > 0.6)
    assert sample_a.images["flair"][wmh].mean() > sample_a.images["flair"][normal_wm].mean()



def test_model_space_sample_is_deterministic():
    first = model_space_sample(seed=4, load="mild", shape=(64, 80, 64))
    again = model_space_sample(seed=4, load="mild", shape=(64, 80, 64))
    for name in first.images:
        assert np.array_equal(again.images[name], first.images[name])
    for marker in first.masks:
        assert np.array_equal(again.masks[marker], first.masks[marker])
    other = model_space_sample(seed=5, load="mild", shape=(64, 80, 64))
    assert not np.array_equal(other.images["t1"], first.images["t1"])


def test_sampling_is_independent_of_voxel_order():
    """The same world lattice in RAS and in sagittal ASL order samples the same values."""
    rng = np.random.default_rng(0)
    warp = make_warp(SubjectShape.random(rng), Pose.random(rng))
    center = warp.pose.translation
    ras = make_grid("RAS", (2.0, 2.0, 2.0), (60.0, 80.0, 70.0), center)
    asl = make_grid("ASL", (2.0, 2.0, 2.0), (80.0, 70.0, 60.0), center)
    canvas = {"v": np.random.default_rng(1).random((177, 213, 237), dtype=np.float32)}
    a, _ = sample(canvas, None, ras, warp)
    b, _ = sample(canvas, None, asl, warp)
    # ASL voxel (i, j, k) is RAS voxel (n_x - 1 - k, i, j).
    reoriented = np.transpose(b["v"], (2, 0, 1))[::-1]
    assert np.allclose(reoriented, a["v"], atol=1e-5)
    assert isinstance(ras, NativeGrid)


def test_cli_usage_errors(tmp_path):
    assert synth_main([str(tmp_path / "x"), "--participants", "2", "--loads", "mild"]) == 64
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    assert synth_main([str(tmp_path / "full")]) == 73
    assert synth_main([str(tmp_path / "y"), "--loads", "heavy"]) == 64


def test_sessions_share_lesions_not_pose(tmp_path):
    """Two sessions: `ses-` level, same lesions (count, size), different head position; the
    command line writes the same unit (its session 1, without a `ses-` level)."""
    out = tmp_path / "cli"
    assert synth_main([str(out), "--participants", "1", "--seed", "7", "--loads", "severe",
                       "--modalities", "T2starw"]) == 0
    ds = generate_dataset(tmp_path / "api", n_participants=1, n_sessions=2, seed=7,
                          loads=["severe"], modalities=("T2starw",))
    first, second = ds.unit("01", "01"), ds.unit("01", "02")
    assert first.images["T2starw"].name == "sub-01_ses-01_T2starw.nii.gz"
    assert first.truth["CMB"].name == "sub-01_ses-01_space-SWI_label-CMB_mask.nii.gz"
    assert "PVS" not in first.truth  # T1w space was not written
    assert [les.voxels for les in first.lesions] == [les.voxels for les in second.lesions]
    shift = np.array(first.lesions[0].centroid_mm) - np.array(second.lesions[0].centroid_mm)
    assert np.linalg.norm(shift) > 0.5
    assert read_lesion_table(second.lesion_table) == second.lesions
    cli_image = out / "sub-01" / "anat" / "sub-01_T2starw.nii.gz"
    assert cli_image.read_bytes() == first.images["T2starw"].read_bytes()


def test_sessions_per_participant(tmp_path):
    """(2, 1): sub-01 has ses-01 and ses-02, sub-02 only ses-01 (the `shiva-bids demo`
    layout); the README says so; a count per participant is required."""
    ds = generate_dataset(tmp_path / "ds", n_participants=2, n_sessions=(2, 1), seed=3,
                          loads=["mild", "none"], modalities=("T2starw",))
    assert [u.unit_id for u in ds.units] == ["sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01"]
    assert sorted(p.name for p in (ds.root / "sub-02").iterdir()) == ["ses-01"]
    assert (ds.reference_root / "sub-01" / "ses-02").is_dir()
    assert not (ds.reference_root / "sub-02" / "ses-02").exists()
    assert "sessions per participant: 2, 1" in (ds.root / "README.md").read_text()
    with pytest.raises(ValueError, match="2 session counts given for 3 participants"):
        generate_dataset(tmp_path / "bad", n_participants=3, n_sessions=(2, 1))
