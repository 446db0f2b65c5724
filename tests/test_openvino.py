"""The OpenVINO engine (issue #23): parity with TensorFlow on every fold format, the IR cache,
TensorFlow kept out of the inference process, bf16 and its fallback, determinism.

Tiny folds (16x20x12, shiva_bids.models.testing) for the formats and the cache; the demo models
at full size (160x214x176) over held-out phantoms for bf16; SHiVAi's own model-space inputs
(../shared fixture) for agreement with SHiVAi's maps.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.errors import BadInputError, ExitCode, UsageError
from shiva_bids.markers import MARKERS
from shiva_bids.models import EnsemblePredictor, discover_descriptors, load_descriptor
from shiva_bids.models import engines, openvino_ir
from shiva_bids.models.ensemble import FOLD_ZERO_BELOW

pytest.importorskip("openvino")
tf = pytest.importorskip("tensorflow")
from shiva_bids.models import testing as tiny  # noqa: E402  (needs TensorFlow)
from shiva_bids.models.loaders import load_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEGACY = FIXTURES / "legacy_py37_lambdas.h5"
DEMO = REPO / "shiva_bids" / "data" / "demo_models"
GRID = (16, 20, 12)
SHIVAI = "fixtures/shivai_0.5.9_phantom101"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """{format: descriptor}: two tiny folds per format (the `.keras` with its script), and
    the Python-3.7 legacy `.h5` fixture whose Lambdas are rebuilt."""
    root = tmp_path_factory.mktemp("ov_models")
    built = {fmt: tiny.write_tiny_model_folder(root / fmt, "WMH", ("t1", "flair"), n_folds=2,
                                               shape=GRID, fmt=fmt, out_bias=-2.0)
             for fmt in ("savedmodel", "keras", "h5")}
    if LEGACY.is_file():
        folder = root / "legacy" / "T1-FLAIR.WMH"
        folder.mkdir(parents=True)
        shutil.copy(LEGACY, folder / "fold_0_model.h5")
        built["h5-py37"] = tiny.write_descriptor(folder, [folder / "fold_0_model.h5"], "WMH",
                                                 ["t1", "flair"], version="v1")
    return built


def _images(shape, channels, n=2, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.random((*shape, channels), dtype=np.float32) * 1.3 for _ in range(n)]


@pytest.mark.parametrize("fmt", ["savedmodel", "keras", "h5", "h5-py37"])
def test_openvino_fp32_matches_tensorflow_on_every_format(folders, fmt, tmp_path):
    if fmt not in folders:
        pytest.skip(f"{LEGACY} is missing")
    descriptor = load_descriptor(folders[fmt])
    ov = EnsemblePredictor(descriptor, device="cpu", threads=2, ir_cache=tmp_path / "ir")
    images = _images(ov.input_shape, ov.channels)
    batch = np.stack(images)
    for index, path in enumerate(descriptor.folds):  # each fold's raw output
        reference = load_model(path, "cpu", descriptor.script_path).predict(batch)
        got = ov._load(index).predict(batch)
        assert reference.std() > 1e-3 and np.abs(got - reference).max() <= 1e-5
    tf_predictor = EnsemblePredictor(descriptor, device="cpu", engine="tensorflow")
    expected = tf_predictor.predict(images, [None, None])
    for got, want in zip(ov.predict(images, [None, None]), expected):
        assert np.array_equal(got.mean > 0.5, want.mean > 0.5)
        assert 0 < (want.mean > 0.5).sum() < want.mean.size  # the masks say something
    assert ov.provenance["engine"] == "openvino" and ov.provenance["precision"] == "fp32"
    assert tf_predictor.provenance["engine"] == "tensorflow"
    assert tf_predictor.provenance["engine_version"] == tf.__version__


def test_ir_is_converted_once_and_reused_from_the_caches(folders, tmp_path, monkeypatch):
    calls = []
    convert = openvino_ir.run_conversion_worker
    monkeypatch.setattr(openvino_ir, "run_conversion_worker",
                        lambda jobs: calls.append(len(jobs)) or convert(jobs))
    monkeypatch.setenv("SHIVA_BIDS_CACHE_DIR", str(tmp_path / "user"))
    descriptor = load_descriptor(folders["h5"])
    first = EnsemblePredictor(descriptor, device="cpu", ir_cache=tmp_path / "work1")
    assert first.input_shape == GRID and first.converted == 2 and calls == [2]
    xml = tmp_path / "work1" / openvino_ir.ir_key(first.provenance["folds"][0]["md5"])
    stamp = (xml / openvino_ir.XML).stat().st_mtime_ns
    again = EnsemblePredictor(descriptor, device="cpu", ir_cache=tmp_path / "work1")
    out = again.predict(_images(GRID, 2, n=1), [None])
    elsewhere = EnsemblePredictor(descriptor, device="cpu", ir_cache=tmp_path / "work2")
    assert elsewhere.channels == 2  # a new work folder: found in the user cache
    assert (again.converted, elsewhere.converted, calls) == (0, 0, [2])
    assert (xml / openvino_ir.XML).stat().st_mtime_ns == stamp and out[0].mean.std() > 0
    info = json.loads((xml / openvino_ir.INFO).read_text())
    assert info["source_format"] == "h5" and info["openvino"] == engines.openvino_version()


def test_cached_ir_runs_without_importing_tensorflow(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("SHIVA_BIDS_CACHE_DIR", "none")  # this test's work cache alone
    cache = tmp_path / "ir"
    descriptor = folders["savedmodel"]
    first = EnsemblePredictor(load_descriptor(descriptor), device="cpu", ir_cache=cache)
    assert first.input_shape and first.converted == 2  # the probe converts both folds
    first.close()
    code = ("import sys, json, numpy as np\n"
            "from pathlib import Path\n"
            "from shiva_bids.models import EnsemblePredictor, load_descriptor\n"
            f"p = EnsemblePredictor(load_descriptor(Path({str(descriptor)!r})), "
            f"ir_cache=Path({str(cache)!r}))\n"
            "out = p.predict([np.ones((*p.input_shape, 2), np.float32)], [None])[0]\n"
            "print(json.dumps([p.converted, 'tensorflow' in sys.modules, "
            "float(out.mean.max())]))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    converted, tf_loaded, peak = json.loads(run.stdout.strip().splitlines()[-1])
    assert (converted, tf_loaded) == (0, False) and peak > 0


def test_a_fold_openvino_cannot_convert_is_an_unusable_model_file(tmp_path):
    folder = tmp_path / "T1-PVS"
    fold = folder / "broken_fold_0.tf_inference"
    (fold / "variables").mkdir(parents=True)
    (fold / "saved_model.pb").write_bytes(b"\x08\x01not a protobuf at all")
    descriptor = tiny.write_descriptor(folder, [fold], "PVS", ["t1"])
    predictor = EnsemblePredictor(load_descriptor(descriptor), device="cpu",
                                  ir_cache=tmp_path / "ir")
    with pytest.raises(BadInputError, match="cannot convert SavedModel model to OpenVINO IR") \
            as err:
        _ = predictor.input_shape
    assert err.value.exit_code == ExitCode.BAD_INPUT and "\n" not in str(err.value)
    assert str(err.value).startswith(str(fold))


def test_engine_choice_and_bf16_fallback(monkeypatch, caplog):
    with pytest.raises(UsageError, match="--engine openvino runs on the CPU"):
        engines.choose_engine("openvino", "gpu")
    with pytest.raises(UsageError, match="--precision 'fp16'"):
        engines.choose_engine("auto", "cpu", "fp16")
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    assert engines.choose_engine("auto", "auto").engine == "openvino"
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="shiva_bids.models.engines"):
        choice = engines.choose_engine("auto", "cpu", "bf16", threads=2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no native bf16" in warnings[0].getMessage()
    assert (choice.engine, choice.precision, choice.requested_precision) == \
        ("openvino", "fp32", "bf16")
    assert choice.provenance()["precision_requested"] == "bf16"
    assert choice.label == f"openvino {engines.openvino_version()} fp32"


def test_make_predictors_warns_once_for_all_models(folders, tmp_path, monkeypatch, caplog):
    from shiva_bids.config import RunConfig
    from shiva_bids.pipelines.shiva import make_predictors

    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    plans = [type("Plan", (), {"descriptors": {"WMH": load_descriptor(folders[fmt])}})()
             for fmt in ("savedmodel", "h5")]
    config = RunConfig(tmp_path, tmp_path / "out", "participant", work_dir=tmp_path / "w",
                       device="cpu", precision="bf16")
    with caplog.at_level(logging.WARNING):
        predictors = make_predictors(config, plans)
    assert sum("no native bf16" in r.getMessage() for r in caplog.records) == 1
    assert {p.engine.precision for p in predictors.values()} == {"fp32"}
    assert {p.ir_cache for p in predictors.values()} == {tmp_path / "w" / "openvino"}


# --- full size: the demo models -------------------------------------------------------------

@pytest.fixture(scope="module")
def heldout():
    """The severe held-out model-space phantom (seed 9101; training uses 1000-8999): where bf16
    and fp32 differed most of the two measured (docs/models.md), at half the suite time."""
    from shiva_bids.training.data import HELDOUT_SEEDS_START, TRAIN_SEEDS, make_phantoms

    seeds = [9101]
    assert min(seeds) >= HELDOUT_SEEDS_START and not set(seeds) & set(TRAIN_SEEDS)
    return make_phantoms(seeds, ["severe"])


def _clusters(prob: np.ndarray, marker: str) -> tuple[np.ndarray, int]:
    from shiva_bids.postprocessing.clusters import find_clusters, min_size_to_mm3
    from shiva_bids.volume import Volume

    found = find_clusters(Volume(prob, np.eye(4)), MARKERS[marker].threshold,
                          min_size_to_mm3(MARKERS[marker].min_cluster_size), None)
    return found.labels.data > 0, found.count


@pytest.mark.slow
def test_bf16_agrees_with_fp32_on_the_demo_models(heldout, tmp_path):
    """bf16 vs fp32 masks at the marker's threshold (after the minimum cluster size): Dice >=
    0.99 on the severe held-out phantom and cluster counts within one (measured, docs/models.md:
    Dice 0.9972-1.0; on the severe phantom PVS 139 vs 140 and WMH 81 vs 80 clusters, every
    other count equal, so issue #23's "equal cluster counts" does not hold for bf16); fp32
    gives the same bytes with 1 or 2 threads."""
    if not engines.cpu_has_bf16():
        pytest.skip("this CPU has no native bf16")
    chosen = {d.target: d for d in discover_descriptors(DEMO)}
    rows = []
    for marker in ("PVS", "WMH", "CMB", "LAC"):
        descriptor = chosen[marker]
        images = [np.stack([p.images[m] for m in descriptor.modalities], -1) for p in heldout]
        masks = [p.brain_mask for p in heldout]
        fp32 = EnsemblePredictor(descriptor, device="cpu", threads=2).predict(images, masks)
        bf16 = EnsemblePredictor(descriptor, device="cpu", threads=2,
                                 precision="bf16").predict(images, masks)
        for a, b in zip(fp32, bf16):
            (mask_a, n_a), (mask_b, n_b) = _clusters(a.mean, marker), _clusters(b.mean, marker)
            dice = 2 * (mask_a & mask_b).sum() / max(mask_a.sum() + mask_b.sum(), 1)
            rows.append((marker, int(mask_a.sum()), round(float(dice), 4), n_a, n_b,
                         float(np.abs(a.mean - b.mean).max())))
        if marker == "PVS":
            one_thread = EnsemblePredictor(descriptor, device="cpu", threads=1)
            again = one_thread.predict(images[:1], masks[:1])[0]
            assert again.mean.tobytes() == fp32[0].mean.tobytes()
            assert again.std.tobytes() == fp32[0].std.tobytes()
    print("\nmarker, fp32 voxels, Dice, clusters fp32, clusters bf16, max |diff|:", *rows,
          sep="\n")
    for marker, voxels, dice, n_fp32, n_bf16, _ in rows:
        assert voxels > 0 and dice >= 0.99 and abs(n_fp32 - n_bf16) <= 1, marker


def test_shivai_model_space_maps_are_reproduced(shared_dir):
    """Our OpenVINO fp32 predictor on SHiVAi 0.5.9's own model-space inputs writes SHiVAi's
    maps (fixture README: SHiVAi ran TensorFlow 2.17) within 1e-5, except where a fold's
    output lies within 1e-5 of SHIVA's 0.001 cut (SHIVA.md §4): there the fold's value is kept
    by one engine and zeroed by the other, a step of 0.001 / folds (measured: 1 voxel of WMH).
    The masks at 0.5 are identical."""
    root = shared_dir / SHIVAI / "shivai"
    pre = root / "shiva_preproc"
    t1 = pre / "t1_preproc/sub-01/sub-01_T1w_corrected_defaced_cropped_intensity_normed.nii.gz"
    flair = pre / "flair_preproc/sub-01/flair_to_t1_defaced_cropped_intensity_normed.nii.gz"
    swi = pre / "swi_preproc/sub-01/sub-01_T2starw_corrected_defaced_cropped_intensity_normed.nii.gz"
    t1_mask = pre / "t1_preproc/sub-01/brainmask_cropped.nii.gz"
    swi_mask = pre / "swi_preproc/sub-01/brainmask_cropped_swi-space.nii.gz"
    inputs = {"PVS": ([t1], t1_mask, "pvs_segmentation"),
              "WMH": ([t1, flair], t1_mask, "wmh_segmentation"),
              "LAC": ([t1, flair], t1_mask, "lac_segmentation"),
              "CMB": ([swi], swi_mask, "cmb_segmentation_swi-space")}
    chosen = {d.target: d for d in discover_descriptors(shared_dir / SHIVAI / "demo_models")}
    for marker, (channels, mask, folder) in inputs.items():
        image = np.stack([np.asarray(nib.load(c).dataobj, np.float32) for c in channels], -1)
        brain = np.asarray(nib.load(mask).dataobj) > 0
        predictor = EnsemblePredictor(chosen[marker], device="cpu", threads=2)
        assert predictor.engine.engine == "openvino"
        ours = predictor.predict([image], [brain])[0].mean
        theirs = np.asarray(nib.load(root / "segmentations" / folder /
                                     f"sub-01_{marker.lower()}_map.nii.gz").dataobj, np.float32)
        folds = len(predictor.descriptor.folds)
        at_cut = np.zeros(ours.shape, bool)
        for index in range(folds):
            raw = predictor._load(index).predict(image[None])[0]
            at_cut |= np.abs(raw - FOLD_ZERO_BELOW) <= 1e-5
        diff = np.abs(ours - theirs)
        assert theirs.max() > 0.5 and diff[~at_cut].max() <= 1e-5, marker
        assert diff[at_cut].max() <= FOLD_ZERO_BELOW / folds + 1e-5 and (diff > 1e-5).sum() <= 5
        assert np.array_equal(ours > 0.5, theirs > 0.5), marker
