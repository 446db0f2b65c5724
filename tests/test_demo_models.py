"""The bundled demo models: descriptors like the published ones, checksums, size, accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shiva_bids.demo import DEMO_MODELS_DIR
from shiva_bids.models.selection import NO_MODELS_MESSAGE
from shiva_bids.markers import MARKER_NAMES, MARKERS
from shiva_bids.models import discover_descriptors, load_descriptor, verify_model_files

# Targets of issue #8 at the default thresholds (reference/SHIVA.md §8), held-out phantoms.
TARGETS = {"WMH": ("voxel_dice", 0.70), "PVS": ("f1", 0.60), "CMB": ("f1", 0.70),
           "LAC": ("f1", 0.60)}
MAX_BUNDLE_BYTES = 15 * 2**20


def _descriptor_paths() -> list[Path]:
    return sorted(DEMO_MODELS_DIR.glob("model_info*.json"))


def _published_key_order(shared_dir: Path) -> list[str]:
    payload = json.loads((shared_dir / "fixtures/shiva_model_info/"
                          "model_info_t1-flair-lac-v0.json").read_text())
    return list(payload)


def test_one_demo_descriptor_per_marker():
    targets = sorted(load_descriptor(p).target for p in _descriptor_paths())
    assert targets == sorted(MARKER_NAMES)
    assert {d.target for d in discover_descriptors(DEMO_MODELS_DIR)} == set(MARKER_NAMES)


@pytest.mark.parametrize("path", _descriptor_paths(), ids=lambda p: p.name)
def test_descriptor_written_like_the_published_ones(path, shared_dir):
    text = path.read_text()
    payload = json.loads(text)
    published = sorted((shared_dir / "fixtures/shiva_model_info").glob("*.json"))
    # Same layout as every published file: 2-space indent, key order kept, final newline.
    for reference in published + [path]:
        ref_text = reference.read_text()
        assert ref_text == json.dumps(json.loads(ref_text), indent=2) + "\n"
    order = _published_key_order(shared_dir)
    common = [k for k in payload if k in order]
    assert common == [k for k in order if k in payload]
    assert set(order) - set(payload) == {"sha256_zip"}  # no zip to hash: bundled in the package
    assert payload["demo"] is True and "phantom" in payload["description"]
    assert "NOT for research" in payload["description"]
    descriptor = load_descriptor(path)
    assert descriptor.is_demo and descriptor.model_format == "SavedModel"
    assert tuple(descriptor.modalities) == MARKERS[descriptor.target].default_modalities
    assert len(descriptor.files) >= 2  # a real ensemble
    computed = verify_model_files(descriptor)  # raises on a missing fold or md5 mismatch
    assert computed == {f["name"]: f["md5"] for f in payload["files"]}
    for entry in payload["files"]:
        graph = (DEMO_MODELS_DIR / entry["name"] / "saved_model.pb").read_bytes()
        assert b"_XlaMustCompile" not in graph  # exported with a static channel axis


def test_bundle_is_small():
    total = sum(p.stat().st_size for p in DEMO_MODELS_DIR.rglob("*") if p.is_file())
    assert 0 < total <= MAX_BUNDLE_BYTES


def test_no_models_message_says_where_to_get_them():
    assert "--models-dir" in NO_MODELS_MESSAGE and "SHIVA_PVS" in NO_MODELS_MESSAGE
    assert "shiva-bids demo" in NO_MODELS_MESSAGE


@pytest.fixture(scope="module")
def heldout_rows():
    """Every bundled ensemble on two held-out model-space phantoms (seeds 9000, 9001)."""
    pytest.importorskip("tensorflow")
    from shiva_bids.training.heldout import heldout_scores

    return heldout_scores(DEMO_MODELS_DIR, [9000, 9001],
                          thresholds=tuple(sorted({m.threshold for m in MARKERS.values()})))


@pytest.mark.parametrize("marker", ["PVS", "WMH", "CMB", "LAC"])
def test_bundled_models_meet_targets_on_heldout_phantoms(heldout_rows, marker):
    metric, target = TARGETS[marker]
    row = next(r for r in heldout_rows if r.marker == marker
               and abs(r.threshold - MARKERS[marker].threshold) < 1e-9)
    assert getattr(row, metric) >= target, f"{marker} {metric} {getattr(row, metric):.3f}"


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    from shiva_bids.cli import main as cli_main
    from shiva_bids.errors import ExitCode

    (tmp_path / "precious.txt").write_text("user data")
    assert cli_main(["demo", str(tmp_path)]) == ExitCode.CANNOT_CREATE_OUTPUT
    assert "must be new, empty, or an earlier demo's" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
