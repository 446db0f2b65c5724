"""Legacy Keras-2 `.h5` folds whose Lambda layers hold Python 3.7 bytecode (issue 15).

Fixture: `tests/fixtures/legacy_py37_lambdas.h5`, a tiny U-net with four Lambda layers
(slicing, a `tf.` call, a closure over a constant, a def with a default) whose bytecode was
marshalled by a real Python 3.7, written once by `tests/fixtures/make_legacy_h5.py`, which
also builds the same model with the same weights on the running Python.
"""
from __future__ import annotations

import codecs
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from shiva_bids.models import EnsemblePredictor, load_descriptor

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")
from shiva_bids.models import legacy, testing  # noqa: E402  (needs TensorFlow)
from shiva_bids.models.loaders import load_model  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEGACY = FIXTURES / "legacy_py37_lambdas.h5"


@pytest.fixture(scope="module")
def maker():
    """tests/fixtures/make_legacy_h5.py as a module; skip when the fixture is missing."""
    if not LEGACY.is_file():
        pytest.skip(f"{LEGACY} is missing (run tests/fixtures/make_legacy_h5.py)")
    spec = importlib.util.spec_from_file_location("make_legacy_h5",
                                                  FIXTURES / "make_legacy_h5.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixture_holds_python37_bytecode_that_plain_loading_refuses(maker):
    config = legacy.read_model_config(LEGACY)
    lambdas = {layer["config"]["name"]: layer["config"] for layer in config["config"]["layers"]
               if layer["class_name"] == "Lambda"}
    assert set(lambdas) == set(maker.LAMBDAS)
    for settings in lambdas.values():
        raw = codecs.decode(settings["function"][0].encode("ascii"), "base64")
        assert raw[:1] == b"\xe3" and legacy.native_error(raw) is not None
    assert lambdas["mid_scale"]["function"][2] == [maker.SCALE]  # the closure's constant
    assert lambdas["dec_clip"]["function"][1] == [1.3]  # the default argument
    assert LEGACY.stat().st_size < 200_000
    with pytest.raises(EOFError):
        tf_keras.models.load_model(LEGACY, compile=False, custom_objects={"tf": tf})


def test_rebuilt_model_predicts_as_the_python311_original(maker, tmp_path):
    original = tmp_path / "original.h5"
    maker.build_model().save(original)  # the same model saved by this Python
    reference = tf_keras.models.load_model(original, compile=False, custom_objects={"tf": tf})
    batch = np.random.default_rng(3).random((2, *maker.GRID, maker.CHANNELS),
                                            dtype=np.float32) * 1.3
    expected = np.asarray(reference(batch, training=False))[..., 0]
    loaded = load_model(LEGACY, "cpu")
    assert loaded.format == "h5" and loaded.channels == maker.CHANNELS
    assert {r.layer: r.python for r in loaded.rebuilt} == {n: "3.7" for n in maker.LAMBDAS}
    sources = {r.layer: r.source for r in loaded.rebuilt}
    assert sources["mid_scale"] == "return x * k"
    assert sources["first_channel"] == "return x[:, :, :, :, 0:1]"
    got = loaded.predict(batch)
    assert expected.std() > 1e-3  # the network does something
    assert np.abs(got - expected).max() <= 1e-6


def test_rebuild_is_recorded_in_the_provenance(maker, tmp_path):
    folder = tmp_path / "T1-FLAIR.WMH"
    folder.mkdir()
    (folder / "fold_0_model.h5").write_bytes(LEGACY.read_bytes())
    descriptor = testing.write_descriptor(folder, [folder / "fold_0_model.h5"], "WMH",
                                          ["t1", "flair"], version="v1")
    predictor = EnsemblePredictor(load_descriptor(descriptor), device="cpu")
    prov = json.loads(json.dumps(predictor.provenance))
    predictor.close()
    rebuilt = prov["folds"][0]["lambda_rebuilt"]
    assert rebuilt["from"] == ["Python 3.7 bytecode"] and rebuilt["on"].startswith("Python 3.")
    assert rebuilt["layers"] == sorted(maker.LAMBDAS) and "xdis" in rebuilt["tools"]
    assert prov["format"] == "h5" and prov["checksums"] == "verified"
