"""Export trained demo folds in the published SHIVA formats, with their descriptor.

Format (reference/SHIVA.md §2.2, §3): one TensorFlow SavedModel *directory* per fold, the format
of SHIVA CMB v2 / PVS v2, with a `serve` endpoint (and the `serving_default` signature) that
takes a float32 (n, 160, 214, 176, C) tensor, channels last, and returns (n, 160, 214, 176, 1).
The descriptor `model_info_*.json` has the published keys in the published order (§2.1) and is
written like the published files (2-space indent, key order kept, trailing newline), plus
`"demo": true` and a description saying what these models are.

Checksums follow §2.3 (:func:`shiva_bids.models.checksums.md5_of_path`, the rule the model
layer verifies with).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from shiva_bids.io import atomic_write_text
from shiva_bids.markers import SHIVA_MODEL_SHAPE
from shiva_bids.models.checksums import md5_of_path
from shiva_bids.training.unet import UNetSpec, inference_twin, predict_padded

DEMO_AUTHOR = "shiva-bids developers"
DEMO_URL = "https://github.com/shiva-bids/shiva-bids/blob/main/docs/demo.md"
DEMO_DESCRIPTION = ("Demo model of shiva-bids, trained on synthetic phantoms only "
                    "(shiva_bids.synthetic). NOT for research or clinical use: it has never "
                    "seen a real MRI. Get the real SHIVA models from their authors.")
DEMO_VERSION = "v0"
TENSORFLOW_MIN_VERSION = "2.17"


@dataclass(frozen=True)
class ModelSetName:
    """How one marker's folds are named: the folder, the descriptor, the fold prefix."""

    marker: str
    modalities: tuple[str, ...]

    @property
    def folder(self) -> str:
        """Folder of the folds, in the style of the published ones (`T1.FLAIR-LAC`, `SWI-CMB`)."""
        return f"{'.'.join(m.upper() for m in self.modalities)}-{self.marker}.demo"

    @property
    def descriptor(self) -> str:
        """Descriptor file name, in the style of `model_info_t1-flair-lac-v0.json`."""
        return f"model_info_{'-'.join(self.modalities)}-{self.marker.lower()}-demo.json"

    def fold_name(self, spec: UNetSpec, fold: int) -> str:
        """Fold path relative to the descriptor's folder (`files[].name`, SHIVA.md §2.1)."""
        channels = "_".join(m.upper() for m in self.modalities)
        return (f"{self.folder}/{spec.architecture}-{channels}.{self.marker}"
                f"_demo_fold_{fold}.tf_inference")


def export_savedmodel(model: keras.Model, spec: UNetSpec, path: Path) -> Path:
    """Write `model` as a SavedModel directory at `path` with a fixed SHIVA `serve` signature
    (through its :func:`inference_twin`: the same weights, faster CPU convolutions).

    The directory is written under a temporary name next to `path` and renamed when complete.
    """
    path = Path(path)
    signature = tf.TensorSpec((None, *SHIVA_MODEL_SHAPE, spec.channels), tf.float32,
                              name="input")
    twin = inference_twin(model, spec)

    @tf.function(input_signature=[signature])
    def serve(x):
        return predict_padded(twin, x, spec.multiple)

    archive = keras.export.ExportArchive()
    archive.track(twin)
    archive.add_endpoint("serve", serve)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        archive.write_out(str(tmp), verbose=False)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def load_savedmodel_weights(model: keras.Model, path: Path) -> keras.Model:
    """Set `model`'s weights from an exported fold (variables matched by name), for fine-tuning."""
    saved = {v.name.removesuffix(":0"): v.numpy() for v in tf.saved_model.load(str(path)).variables}
    missing = [w.path for w in model.weights if w.path not in saved]
    if missing:
        raise ValueError(f"{path}: no saved variable for {missing[:3]}")
    model.set_weights([saved[w.path] for w in model.weights])
    return model


def descriptor_payload(name: ModelSetName, spec: UNetSpec, files: list[tuple[str, str]],
                       release_date: str) -> dict:
    """The descriptor content, keys in the order of the published SavedModel descriptors."""
    return {
        "version": DEMO_VERSION,
        "release date": release_date,
        "author": DEMO_AUTHOR,
        "url": DEMO_URL,
        "target": name.marker,
        "modalities": list(name.modalities),
        "architecture": spec.architecture,
        "model_format": "SavedModel",
        "tensorflow_min_version": TENSORFLOW_MIN_VERSION,
        "demo": True,
        "description": DEMO_DESCRIPTION,
        "files": [{"name": fold, "md5": md5} for fold, md5 in files],
    }


def write_descriptor(models_dir: Path, name: ModelSetName, spec: UNetSpec,
                     fold_names: list[str], release_date: str) -> Path:
    """Checksum the exported folds and write `models_dir/<descriptor>` (dd/mm/yyyy date)."""
    files = [(fold, md5_of_path(models_dir / fold)) for fold in fold_names]
    payload = descriptor_payload(name, spec, files, release_date)
    return atomic_write_text(models_dir / name.descriptor, json.dumps(payload, indent=2) + "\n")
