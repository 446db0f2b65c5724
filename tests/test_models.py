"""Model layer (issue #4): descriptors, selection, md5, loaders, ensemble predictor.

Tiny U-nets (a few hundred parameters, 16x20x12 grid) are built once per module in the three
published formats with identical weights (shiva_bids.models.testing).
"""
from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from shiva_bids.errors import (BadInputError, ExitCode, MissingInputError, TemporaryError,
                               UsageError)
from shiva_bids.models import (EnsemblePredictor, ModelDescriptor, choose_models,
                               discover_descriptors, load_descriptor, md5_of_path,
                               resolve_model_file, scan_models_dir, select_descriptors,
                               warn_unused)

tf = pytest.importorskip("tensorflow")
from shiva_bids.models import testing as tiny  # noqa: E402  (needs TensorFlow)
from shiva_bids.models.ensemble import FOLD_ZERO_BELOW  # noqa: E402
from shiva_bids.models.loaders import LoadedModel, load_model  # noqa: E402

GRID = (16, 20, 12)
MODALITIES = ("t1", "flair")
BIAS = -6.0  # head bias: part of every fold's output falls below the 0.001 cut


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """{format: descriptor path}: the same two folds (seeds 0, 1) in each format."""
    root = tmp_path_factory.mktemp("models")
    return {fmt: tiny.write_tiny_model_folder(root / fmt, "WMH", MODALITIES, n_folds=2,
                                              shape=GRID, fmt=fmt, out_bias=BIAS)
            for fmt in ("savedmodel", "keras", "h5")}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(42)
    return [rng.random((*GRID, 2), dtype=np.float32) * 1.3 for _ in range(3)]


@pytest.fixture(scope="module")
def masks() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.random(GRID) > 0.3 for _ in range(3)]


def _copy_folder(descriptor: Path, dest: Path) -> Path:
    shutil.copytree(descriptor.parent, dest / descriptor.parent.name)
    return dest / descriptor.parent.name / descriptor.name


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --- formats -----------------------------------------------------------------------------

def test_three_formats_give_the_same_prediction(built, images):
    outputs = {}
    for fmt, descriptor in built.items():
        model = load_model(load_descriptor(descriptor).folds[0], "cpu",
                           load_descriptor(descriptor).script_path)
        assert model.input_shape == GRID and model.channels == 2
        outputs[fmt] = model.predict(np.stack(images[:1]))
    assert outputs["savedmodel"].shape == (1, *GRID)
    for other in ("keras", "h5"):
        assert np.abs(outputs["savedmodel"] - outputs[other]).max() <= 1e-5
        np.testing.assert_allclose(outputs[other], outputs["savedmodel"], rtol=1e-4, atol=1e-7)
    assert outputs["savedmodel"].max() > 10 * outputs["savedmodel"].min()  # not constant


def test_savedmodel_signature_facts(built):
    """Input name = first key of the structured input spec; dtype from the signature."""
    fold = load_descriptor(built["savedmodel"]).folds[0]
    loaded = tf.saved_model.load(str(fold))
    assert "serving_default" in loaded.signatures and hasattr(loaded, "serve")
    model = load_model(fold)
    assert (model.format, model.input_dtype) == ("SavedModel", "float32")


# --- ensemble ------------------------------------------------------------------------------

def _raw_folds(descriptor: ModelDescriptor, images) -> tuple[np.ndarray, np.ndarray]:
    """(fold, image, X, Y, Z) outputs computed independently with `serve`, no 0.001 rule:
    plain, and averaged with the left-right mirrored prediction (flip TTA)."""
    plain, flipped = [], []
    for path in descriptor.folds:
        loaded = tf.saved_model.load(str(path))  # kept referenced while `serve` runs
        outs = [loaded.serve(image[None]).numpy()[0, ..., 0] for image in images]
        mirrored = [loaded.serve(image[None, ::-1].copy()).numpy()[0, ::-1, ..., 0]
                    for image in images]
        plain.append(outs)
        flipped.append([0.5 * (a + b) for a, b in zip(outs, mirrored)])
    return np.array(plain), np.array(flipped)


def _shiva_rule(raw: np.ndarray) -> np.ndarray:
    return np.where(raw < 0.001, 0.0, raw)


def test_ensemble_is_masked_mean_of_thresholded_folds(built, images, masks):
    descriptor = load_descriptor(built["savedmodel"])
    predictor = EnsemblePredictor(descriptor, device="cpu", mem_gb=8)  # batches of 3
    assert predictor.input_shape == GRID and predictor.channels == 2
    results = predictor.predict(images, masks)
    assert len(results) == 3
    raw = _raw_folds(descriptor, images)[0]
    assert 0.05 < (raw < FOLD_ZERO_BELOW).mean() < 0.95  # the 0.001 rule matters here
    folds = _shiva_rule(raw)
    for i, (mask, result) in enumerate(zip(masks, results)):
        np.testing.assert_allclose(result.mean, folds[:, i].mean(0) * mask, atol=1e-6)
        np.testing.assert_allclose(result.std, folds[:, i].std(0) * mask, atol=1e-6)
        assert result.mean.dtype == np.float32 and not result.mean[~mask].any()


def test_flip_tta_averages_mirrored_prediction(built, images):
    descriptor = load_descriptor(built["savedmodel"])
    flipped = EnsemblePredictor(descriptor, device="cpu", tta="flip").predict(images[:1],
                                                                              [None])[0]
    plain, mirrored = (_shiva_rule(r).mean(0)[0] for r in _raw_folds(descriptor, images[:1]))
    np.testing.assert_allclose(flipped.mean, mirrored, atol=1e-6)
    assert np.abs(flipped.mean - plain).max() > 1e-4


def test_provenance_is_json_and_complete(built):
    predictor = EnsemblePredictor(load_descriptor(built["keras"]), device="cpu")
    prov = json.loads(json.dumps(predictor.provenance))
    predictor.close()
    assert prov["target"] == "WMH" and prov["format"] == "keras" and prov["demo"] is False
    assert [f["name"] for f in prov["folds"]] == ["tiny_wmh_fold_0.keras",
                                                  "tiny_wmh_fold_1.keras"]
    assert prov["folds"][0]["md5"] == md5_of_path(predictor.descriptor.folds[0])
    assert prov["device"] == "cpu" and prov["tensorflow_version"] == tf.__version__
    assert prov["input_shape"] == list(GRID) and prov["checksums_verified"] is True
    assert prov["checksums"] == "verified" and "lambda_rebuilt" not in prov["folds"][0]


def test_mixed_float16_h5_is_rebuilt_in_float32_on_cpu(tmp_path, images):
    mixed = tiny.save_tiny_model(tmp_path / "mixed.h5", "h5", GRID, 2, seed=3,
                                 mixed_precision=True)
    plain = tiny.save_tiny_model(tmp_path / "plain.h5", "h5", GRID, 2, seed=3)
    rebuilt = load_model(mixed, "cpu")
    assert not any(layer.dtype_policy.name == "mixed_float16"
                   for layer in rebuilt.handle.layers)
    batch = np.stack(images[:1])
    assert np.abs(rebuilt.predict(batch) - load_model(plain, "cpu").predict(batch)).max() <= 1e-5


# --- errors --------------------------------------------------------------------------------

def test_unpublished_md5_runs_with_one_warning(built, tmp_path, images, caplog):
    """PVS v3 as published: folds without md5 run unverified, after one warning; the
    provenance says `md5: not published` and keeps the md5 as computed."""
    descriptor = _copy_folder(built["savedmodel"], tmp_path)
    _edit_json(descriptor, lambda d: [entry.pop("md5") for entry in d["files"]])
    with caplog.at_level(logging.WARNING):
        predictor = EnsemblePredictor(load_descriptor(descriptor), device="cpu")
        predictor.predict(images[:1], [None])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lists no md5 for 2 of its 2 model file(s)" in warnings[0]
    prov = predictor.provenance
    assert prov["checksums"] == "not published" and prov["checksums_verified"] is False
    assert [f["md5"] for f in prov["folds"]] == ["not published"] * 2
    assert prov["folds"][0]["md5_computed"] == md5_of_path(predictor.descriptor.folds[0])


def test_md5_mismatch_is_bad_input(built, tmp_path):
    descriptor = _copy_folder(built["h5"], tmp_path)
    _edit_json(descriptor, lambda d: d["files"][1].update(md5="0" * 32))
    with pytest.raises(BadInputError, match="md5 mismatch for tiny_wmh_fold_1.h5") as err:
        EnsemblePredictor(load_descriptor(descriptor), device="cpu")
    assert err.value.exit_code == ExitCode.BAD_INPUT


def test_skip_checksum_warns_and_runs(built, tmp_path, images, caplog):
    descriptor = _copy_folder(built["h5"], tmp_path)
    _edit_json(descriptor, lambda d: d["files"][1].update(md5="0" * 32))
    with caplog.at_level(logging.WARNING):
        predictor = EnsemblePredictor(load_descriptor(descriptor), device="cpu",
                                      verify_checksums=False)
    assert "NOT verified" in caplog.text
    assert predictor.provenance["checksums_verified"] is False


def test_script_md5_is_checked(built, tmp_path):
    descriptor = _copy_folder(built["keras"], tmp_path)
    (descriptor.parent / "tiny_layers.py").write_text("import tensorflow as tf\n# edited\n")
    with pytest.raises(BadInputError, match="tiny_layers.py"):
        EnsemblePredictor(load_descriptor(descriptor), device="cpu")


def test_missing_fold_is_missing_input(built, tmp_path):
    descriptor = _copy_folder(built["savedmodel"], tmp_path)
    shutil.rmtree(descriptor.parent / "tiny_wmh_fold_0.tf_inference")
    with pytest.raises(MissingInputError, match="tiny_wmh_fold_0.tf_inference") as err:
        EnsemblePredictor(load_descriptor(descriptor), device="cpu")
    assert err.value.exit_code == ExitCode.NO_INPUT


def test_wrong_channel_count(built, tmp_path, images):
    descriptor = _copy_folder(built["h5"], tmp_path)
    _edit_json(descriptor, lambda d: d.update(modalities=["flair"]))
    with pytest.raises(BadInputError, match="takes 2 channel.*lists 1 modalities") as err:
        _ = EnsemblePredictor(load_descriptor(descriptor), device="cpu").input_shape
    assert err.value.exit_code == ExitCode.BAD_INPUT
    predictor = EnsemblePredictor(load_descriptor(built["h5"]), device="cpu")
    with pytest.raises(BadInputError, match=r"the model takes \(X, Y, Z, 2\)"):
        predictor.predict([images[0][..., :1]], [None])


def test_unreadable_model_file(tmp_path):
    folder = tmp_path / "FLAIR-WMH"
    folder.mkdir()
    (folder / "fold_0.h5").write_bytes(b"this is not HDF5")
    descriptor = tiny.write_descriptor(folder, [folder / "fold_0.h5"], "WMH", ["flair"])
    with pytest.raises(BadInputError, match="fold_0.h5: cannot load h5 model") as err:
        _ = EnsemblePredictor(load_descriptor(descriptor), device="cpu").channels
    assert err.value.exit_code == ExitCode.BAD_INPUT and "\n" not in str(err.value)


def test_unrebuildable_lambda_bytecode_is_one_line(built, tmp_path):
    """Lambda bytecode that no supported Python reads (SHIVA.md §3, SHiVAi#17) -> one line."""
    import h5py

    path = tmp_path / "old.h5"
    shutil.copy(load_descriptor(built["h5"]).folds[0], path)
    with h5py.File(path, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                code = base64.b64decode(layer["config"]["function"][0])
                layer["config"]["function"][0] = base64.b64encode(code[:20]).decode()
        handle.attrs["model_config"] = json.dumps(config)
    with pytest.raises(BadInputError, match="could not be rebuilt") as err:
        load_model(path, "cpu")
    message = str(err.value)
    assert "\n" not in message and "EOFError" in message and "SavedModel release" in message
    assert "Lambda layer 'enc_swish'" in message and message.startswith(str(path))


def test_out_of_memory_is_temporary(built):
    predictor = EnsemblePredictor(load_descriptor(built["h5"]), device="cpu",
                                  engine="tensorflow")

    def exhausted(batch):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    fake = LoadedModel(Path("fold.h5"), "h5", GRID, 2, "float32", exhausted)
    with pytest.raises(TemporaryError, match="out of CPU memory") as err:
        predictor._forward(fake, np.zeros((1, *GRID, 2), np.float32))
    assert err.value.exit_code == ExitCode.TEMPORARY


def test_gpu_requested_without_gpu_is_usage_error(built):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    with pytest.raises(UsageError, match="--device gpu"):
        EnsemblePredictor(load_descriptor(built["h5"]), device="gpu")


def test_empty_models_dir(tmp_path):
    with pytest.raises(MissingInputError, match="no model_info") as err:
        discover_descriptors(tmp_path)
    assert err.value.exit_code == ExitCode.NO_INPUT
    with pytest.raises(MissingInputError, match="not a folder"):
        discover_descriptors(tmp_path / "absent")


def test_unknown_target(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_info.json").write_text(json.dumps(
        {"version": "v0", "target": "EPVS", "modalities": ["t1"],
         "files": [{"name": "a.h5", "md5": "0" * 32}]}))
    with pytest.raises(BadInputError, match="no usable model descriptor.*unknown target 'EPVS'"
                       ) as err:
        discover_descriptors(tmp_path)
    assert err.value.exit_code == ExitCode.BAD_INPUT


def test_bad_json_descriptor(tmp_path):
    (tmp_path / "model_info.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        discover_descriptors(tmp_path)


# --- descriptors, checksums, selection --------------------------------------------------------

FIXTURES = {  # file: (target, modalities, version, format, fold numbers in descriptor order)
    "model_info_t1-pvs-v0.json": ("PVS", ("t1",), "v0", "h5", [0, 1, 2, 3, 4]),
    "model_info_t1-pvs-v1.json": ("PVS", ("t1",), "v1", "h5", [0, 1, 2, 3, 4, 5]),
    "model_info_t1-flair-pvs.json": ("PVS", ("t1", "flair"), "v1", "h5", [0, 1, 2, 3, 4]),
    "model_info_t1-pvs-v2.json": ("PVS", ("t1",), "v2", "SavedModel", [1, 3, 0, 2, 4]),
    "model_info_t1-pvs-v3.json": ("PVS", ("t1",), "v3", "SavedModel", [0, 1, 2, 3, 4]),
    "model_info_t1-flair-pvs-v3.json": ("PVS", ("t1", "flair"), "v3", "SavedModel",
                                        [0, 1, 2, 3, 4]),
    "model_info_t1-pvs-v4.json": ("PVS", ("t1",), "v4", "SavedModel", [0, 1, 2, 3, 4]),
    "model_info_t1-flair-pvs-v4.json": ("PVS", ("t1", "flair"), "v4", "SavedModel",
                                        [0, 1, 2, 3, 4]),
    "model_info_flair-wmh.json": ("WMH", ("flair",), "v0", "h5", [4, 3, 2, 1, 0]),
    "model_info_t1-flair-wmh-v0.json": ("WMH", ("t1", "flair"), "v0", "h5", [0, 1, 2, 3, 4]),
    "model_info_t1-flair-wmh-v1.json": ("WMH", ("t1", "flair"), "v1", "h5", [0, 1, 2, 3, 4]),
    "model_info_t1-flair-wmh-v2.json": ("WMH", ("t1", "flair"), "v2", "SavedModel",
                                        [0, 1, 2, 3, 4]),
    "model_info_swi-cmb-v1.json": ("CMB", ("swi",), "v1", "h5", [0, 2, 1]),
    "model_info_swi-cmb-v2.json": ("CMB", ("swi",), "v2", "SavedModel", [0, 1, 2]),
    "model_info_t1-flair-lac-v0.json": ("LAC", ("t1", "flair"), "v0", "SavedModel", [0, 1, 2]),
}
UNPUBLISHED_MD5 = {"model_info_t1-pvs-v3.json", "model_info_t1-flair-pvs-v3.json"}


def _fold_number(name: str) -> int:
    return int(name.split("_fold_")[-1].split("_")[0])


def test_every_published_descriptor_parses(shared_dir):
    """All 15 releases of SHIVA.md §2.2, PVS v3 (no md5 listed) included."""
    folder = shared_dir / "fixtures" / "shiva_model_info"
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(FIXTURES)
    for name, (target, modalities, version, fmt, order) in FIXTURES.items():
        d = load_descriptor(folder / name)
        assert (d.target, d.modalities, d.version, d.format) == (target, modalities, version,
                                                                  fmt), name
        assert [_fold_number(f.name) for f in d.files] == order, name
        assert [p.name for p in d.folds] == [Path(f.name).name for f in d.files]
        assert d.release is not None and d.author == "Philippe Boutinaud" and not d.is_demo
        unpublished = name in UNPUBLISHED_MD5
        assert d.unpublished_md5 == (tuple(f.name for f in d.files) if unpublished else ()), name
        assert all((f.md5 is None) == unpublished for f in d.files), name
    lac = load_descriptor(folder / "model_info_t1-flair-lac-v0.json")
    assert lac.sha256_zip.startswith("ADB14247") and lac.model_format == "SavedModel"
    assert (lac.architecture, lac.tensorflow_min_version) == ("ResUnet3D-8.9.2-1.5", "2.17")
    assert lac.release_date == "24/02/2026" and lac.script is None
    assert lac.roles == ("t1w", "flair")


def test_demo_marker_and_description(tmp_path):
    path = tmp_path / "model_info.json"
    path.write_text(json.dumps({"version": "v1", "target": "pvs", "modalities": ["T1"],
                                "demo": True, "description": "synthetic",
                                "files": [{"name": "a", "md5": "A" * 32}]}))
    d = load_descriptor(path)
    assert d.is_demo and d.description == "synthetic" and d.target == "PVS"
    assert d.modalities == ("t1",) and d.files[0].md5 == "a" * 32


def test_fold_lookup_parent_fallback(tmp_path):
    """SHIVA.md §2.3: `T1.PVS/x` found from the folder itself or from its parent."""
    model_dir = tmp_path / "T1.PVS"
    model_dir.mkdir()
    (model_dir / "x.h5").write_bytes(b"1")
    assert resolve_model_file(model_dir, "T1.PVS/x.h5") == model_dir / "x.h5"
    (model_dir / "T1.PVS").mkdir()
    (model_dir / "T1.PVS" / "x.h5").write_bytes(b"2")
    assert resolve_model_file(model_dir, "T1.PVS/x.h5") == model_dir / "T1.PVS" / "x.h5"
    (tmp_path / "Other").mkdir()
    (tmp_path / "Other" / "y.h5").write_bytes(b"3")  # first component != folder name
    assert resolve_model_file(model_dir, "Other/y.h5") == model_dir / "Other" / "y.h5"


def test_savedmodel_md5_rule(tmp_path):
    """Contents of every file, sorted by pathlib order (component-wise), concatenated."""
    import hashlib

    folder = tmp_path / "m.tf_inference"
    (folder / "a").mkdir(parents=True)
    (folder / "a.b").write_bytes(b"second")
    (folder / "a" / "b").write_bytes(b"first")  # "a/b" sorts before "a.b" component-wise
    (folder / "z").write_bytes(b"third")
    assert md5_of_path(folder) == hashlib.md5(b"firstsecondthird").hexdigest()
    assert md5_of_path(folder / "z") == hashlib.md5(b"third").hexdigest()


@pytest.fixture()
def published_dir(shared_dir, tmp_path) -> Path:
    for path in (shared_dir / "fixtures" / "shiva_model_info").glob("*.json"):
        folder = tmp_path / path.stem
        folder.mkdir()
        shutil.copy(path, folder / path.name)
    return tmp_path


# The documented choice (docs/models.md "Which model is used") over all 15 releases, for each
# marker and set of images: (version, modalities) or None (skipped).
DOCUMENTED_CHOICE = {
    ("t1",): {"PVS": ("v4", ("t1",)), "WMH": None, "CMB": None, "LAC": None},
    ("flair",): {"PVS": None, "WMH": ("v0", ("flair",)), "CMB": None, "LAC": None},
    ("swi",): {"PVS": None, "WMH": None, "CMB": ("v2", ("swi",)), "LAC": None},
    ("t1", "swi"): {"PVS": ("v4", ("t1",)), "WMH": None, "CMB": ("v2", ("swi",)), "LAC": None},
    ("flair", "swi"): {"PVS": None, "WMH": ("v0", ("flair",)), "CMB": ("v2", ("swi",)),
                       "LAC": None},
    ("t1", "flair"): {"PVS": ("v4", ("t1", "flair")), "WMH": ("v2", ("t1", "flair")),
                      "CMB": None, "LAC": ("v0", ("t1", "flair"))},
    ("t1", "flair", "swi"): {"PVS": ("v4", ("t1", "flair")), "WMH": ("v2", ("t1", "flair")),
                             "CMB": ("v2", ("swi",)), "LAC": ("v0", ("t1", "flair"))},
}


@pytest.mark.parametrize("images", list(DOCUMENTED_CHOICE), ids="+".join)
def test_selection_over_all_releases_is_the_documented_one(published_dir, images):
    descriptors = discover_descriptors(published_dir)
    assert len(descriptors) == 15
    choices = choose_models(descriptors, ["PVS", "WMH", "CMB", "LAC"], images)
    for marker, expected in DOCUMENTED_CHOICE[images].items():
        chosen = choices[marker].descriptor
        assert (chosen and (chosen.version, chosen.modalities)) == (expected or None), marker
        if chosen is None:
            continue
        others = {label: why for label, _, why in choices[marker].others}
        assert len(others) == sum(d.target == marker for d in descriptors) - 1
        if marker == "PVS" and "flair" in images:
            assert others["PVS v3 (t1+flair)"] == "older release (v3 < v4)"
            assert others["PVS v4 (t1)"].startswith("same version, uses fewer")
        if marker == "PVS" and "flair" not in images:
            assert others["PVS v4 (t1+flair)"].startswith("needs t1+flair; the unit has")


def test_selection_legacy_choices_without_newer_releases(published_dir):
    """Without the 2026 releases: PVS v2 (T1), WMH v1, CMB v2 (the milestone-1 table)."""
    for name in ("model_info_t1-pvs-v3", "model_info_t1-pvs-v4", "model_info_t1-flair-pvs-v3",
                 "model_info_t1-flair-pvs-v4", "model_info_t1-flair-wmh-v2"):
        shutil.rmtree(published_dir / name)
    chosen, skipped = select_descriptors(discover_descriptors(published_dir),
                                         ["PVS", "WMH", "CMB", "LAC"], {"t1w", "swi"}, {})
    assert (chosen["PVS"].version, chosen["PVS"].modalities) == ("v2", ("t1",))
    assert chosen["CMB"].version == "v2"
    assert set(skipped) == {"WMH", "LAC"} and "t1+flair" in skipped["LAC"]
    chosen, _ = select_descriptors(discover_descriptors(published_dir), ["WMH", "PVS"],
                                   {"t1", "flair"}, {})
    assert chosen["WMH"].version == "v1" and chosen["PVS"].version == "v2"


def test_broken_descriptors_are_ignored_unless_selected(published_dir, caplog):
    """A broken descriptor is warned about once and ignored, unless it ranks first for a
    requested marker: then the run stops with its one-line error."""
    (published_dir / "junk").mkdir()
    (published_dir / "junk" / "model_info_junk.json").write_text("{not json")
    v4_dir = published_dir / "model_info_t1-pvs-v4"
    data = json.loads((v4_dir / "model_info_t1-pvs-v4.json").read_text())
    v4_folds = [entry["name"] for entry in data["files"]]
    data.update(version="v5", files=[{"name": "T1-PVS/new_fold_0", "md5": "xyz"}])
    (v4_dir / "model_info_t1-pvs-v5.json").write_text(json.dumps(data))
    scan = scan_models_dir(published_dir)
    assert len(scan.descriptors) == 15 and len(scan.broken) == 2
    junk, broken_v5 = sorted(scan.broken, key=lambda b: b.target or "")
    assert junk.target is None and "not valid JSON" in junk.problem
    assert (broken_v5.target, broken_v5.version) == ("PVS", "v5")
    with pytest.raises(BadInputError, match=r"model_info_t1-pvs-v5.json.*malformed md5.*"
                       r"selected for PVS") as err:
        choose_models(scan.descriptors, ["PVS"], {"t1"}, broken=scan.broken)
    assert "\n" not in str(err.value)
    choices = choose_models(scan.descriptors, ["WMH", "CMB"], {"t1", "flair", "swi"},
                            broken=scan.broken)  # PVS not requested: v5 does not matter
    assert choices["WMH"].descriptor.version == "v2"
    for name in v4_folds:
        (v4_dir / name).mkdir(parents=True)
    choices = choose_models(scan.descriptors, ["PVS"], {"t1"}, broken=scan.broken)
    assert choices["PVS"].descriptor.version == "v4"  # present folds rank above v5's missing
    assert ("PVS v5 (t1, broken)", str(broken_v5.path),
            f"broken descriptor: {broken_v5.problem}") in choices["PVS"].others
    with caplog.at_level(logging.WARNING):
        warn_unused(scan, [choices["PVS"].descriptor.path])
    warned = [r.getMessage() for r in caplog.records]
    assert sum("model_info_junk.json: ignored: not valid JSON" in m for m in warned) == 1
    assert sum("model_info_t1-pvs-v5.json: ignored" in m for m in warned) == 1
    assert not any("model_info_t1-pvs-v4.json" in m for m in warned)  # used
    assert any("model_info_t1-pvs-v3.json: ignored: 5 of 5 fold file(s) missing" in m
               for m in warned)


def test_selection_prefers_present_files_then_real_over_demo(published_dir):
    demo = tiny.write_descriptor(published_dir / "model_info_swi-cmb-v1",
                                 [], "CMB", ["swi"], version="v9", demo=True,
                                 name="model_info_demo.json")
    _edit_json(demo, lambda d: d.update(files=[{"name": "absent", "md5": "0" * 32}]))
    chosen, _ = select_descriptors(discover_descriptors(published_dir), ["CMB"], {"swi"}, {})
    assert chosen["CMB"].version == "v2"  # real before demo (no files present anywhere)
    assert not chosen["CMB"].files_present
    present = published_dir / "model_info_swi-cmb-v1" / "absent"
    present.write_bytes(b"")
    chosen, _ = select_descriptors(discover_descriptors(published_dir), ["CMB"], {"swi"}, {})
    assert chosen["CMB"].is_demo  # the only one whose files are all there


def test_model_override(published_dir, monkeypatch):
    descriptors = discover_descriptors(published_dir)
    forced = published_dir / "model_info_t1-pvs-v0" / "model_info_t1-pvs-v0.json"
    chosen, _ = select_descriptors(descriptors, ["PVS"], {"t1"}, {"PVS": forced})
    assert chosen["PVS"].version == "v0"
    monkeypatch.chdir(published_dir.parent)  # a relative path is joined onto --models-dir
    relative = Path("model_info_t1-pvs-v1")
    chosen, _ = select_descriptors(descriptors, ["PVS"], {"t1"}, {"PVS": relative.absolute()},
                                   models_dir=published_dir)
    assert chosen["PVS"].version == "v1"
    with pytest.raises(UsageError, match="is for WMH, not PVS"):
        select_descriptors(descriptors, ["PVS"], {"t1"},
                           {"PVS": published_dir / "model_info_flair-wmh"})


def test_tiny_factory_odd_grid_and_demo_flag(tmp_path):
    descriptor = tiny.write_tiny_model_folder(tmp_path, "CMB", ["swi"], n_folds=1,
                                              shape=(9, 10, 8), fmt="h5", demo=True,
                                              description="tiny demo")
    predictor = EnsemblePredictor(load_descriptor(descriptor), device="cpu")
    assert (predictor.input_shape, predictor.channels) == ((9, 10, 8), 1)
    out = predictor.predict([np.ones((9, 10, 8), np.float32)], [None])[0]
    assert out.mean.shape == (9, 10, 8) and predictor.provenance["demo"] is True


# --- `shiva-bids models list` ------------------------------------------------------------------

def _unzipped_releases(published: Path, root: Path) -> Path:
    """The published descriptors side by side in `root`, each fold a small dummy folder at
    its published name and the md5s rewritten to match (none where none is published)."""
    for source in sorted(published.glob("*.json")):
        data = json.loads(source.read_text())
        for entry in data["files"]:
            fold = root / entry["name"]
            fold.mkdir(parents=True)
            (fold / "saved_model.pb").write_text(entry["name"])
            if "md5" in entry:
                entry["md5"] = md5_of_path(fold)
        (root / source.name).write_text(json.dumps(data))
    return root


def test_models_list_shows_every_release_and_the_choice(shared_dir, tmp_path, capsys):
    from shiva_bids.cli import main

    root = _unzipped_releases(shared_dir / "fixtures" / "shiva_model_info", tmp_path / "m")
    cmb_v2 = json.loads((root / "model_info_swi-cmb-v2.json").read_text())["files"]
    (root / cmb_v2[1]["name"] / "saved_model.pb").write_text("corrupt")
    wmh_v1 = json.loads((root / "model_info_t1-flair-wmh-v1.json").read_text())["files"]
    shutil.rmtree(root / wmh_v1[0]["name"])
    (root / "model_info_broken.json").write_text("{not json")
    assert main(["models", "list", "--models-dir", str(root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[-1]: line.split() for line in out.splitlines()
            if line.endswith(".json") and line.startswith(("PVS", "WMH", "CMB", "LAC"))}
    assert len(rows) == 15 and out.startswith(f"16 model descriptor(s) under {root}")
    assert rows["model_info_t1-pvs-v3.json"][:8] == ["PVS", "t1", "v3", "16/02/2026",
                                                     "SavedModel", "5", "5/5", "not"]
    assert rows["model_info_t1-pvs-v0.json"][4:8] == ["h5", "5", "5/5", "verified"]
    assert rows["model_info_t1-flair-wmh-v1.json"][5:8] == ["5", "4/5", "-"]
    assert rows["model_info_swi-cmb-v2.json"][7:9] == ["MISMATCH:", cmb_v2[1]["name"]]
    assert "model_info_broken.json: not valid JSON" in out
    choice = {line.split()[0]: line for line in out.splitlines()
              if line.startswith(("T1 ", "T1+FLAIR"))}
    assert choice["T1"].split()[1:] == ["PVS", "v4", "(t1)", "-", "-", "-"]
    assert choice["T1+FLAIR+SWI"].split()[1:] == [
        "PVS", "v4", "(t1+flair)", "WMH", "v2", "(t1+flair)", "CMB", "v2", "(swi)", "(stops:",
        "md5", "mismatch)", "LAC", "v0", "(t1+flair)"]
    assert main(["models", "list", "--models-dir", str(root), "--no-verify"]) == 0
    assert "not checked" in capsys.readouterr().out
    assert main(["models", "list", "--models-dir", str(tmp_path / "absent")]) == 66
    assert main(["models", "list"]) == 64
