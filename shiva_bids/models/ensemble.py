"""The fold-ensemble predictor for one marker (reference/SHIVA.md §4 and §17 item 8).

SHIVA rule: for each fold, in descriptor order, load the model once and run one forward call
on each whole volume; zero values < 0.001 in that fold's output; average the folds; multiply
by the brain mask. We also keep the across-fold standard deviation (population, ddof=0) as an
uncertainty map, masked the same way.

Loading is fold-major: each fold is loaded once for *all* queued images, then released
(`del`, Keras session cleared, garbage collected) before the next fold, so one model is in
memory at a time and a run over N participants loads each fold once instead of N times.
Images per forward call come from the `--mem` budget (:func:`batch_size_for`).

Optional test-time augmentation `flip`: each fold also predicts the left-right mirrored
volume (axis 0 of the RAS model grid) and the mirrored-back output is averaged with the plain
one *before* the 0.001 rule; this doubles inference time and makes the maps left-right
symmetric in expectation (the SHIVA models were not trained with a flip guarantee, so the
result differs slightly from SHiVAi's; off by default).

The folds run on the engine of shiva_bids.models.engines: OpenVINO (CPU default: IR converted
once and cached, shiva_bids.models.openvino_ir) or TensorFlow (GPUs, and `--engine
tensorflow`). Everything above is the same for both; only the forward call differs.
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shiva_bids.errors import BadInputError, TemporaryError, UsageError
from shiva_bids.models.checksums import (checksum_status, fold_records, md5_of_path,
                                         verify_model_files)
from shiva_bids.models.descriptors import ModelDescriptor
from shiva_bids.models.devices import tf_device_name
from shiva_bids.models.engines import EngineChoice, choose_engine, tensorflow_version
from shiva_bids.models.loaders import LoadedModel, fold_provenance, load_model

log = logging.getLogger(__name__)
FOLD_ZERO_BELOW = 0.001  # SHIVA.md §4: per-fold values < 0.001 are set to 0
TTA_MODES: tuple[str, ...] = ("none", "flip")
# Peak working memory of one forward pass, bytes per input voxel: the SHIVA network (40 M
# parameters, 160x214x176) peaks at 3.3 GiB RSS for one volume (MEASUREMENTS.md), ~2.5 GiB
# above the process with its model loaded, i.e. ~450 B/voxel; rounded up.
FORWARD_BYTES_PER_VOXEL = 512
_BASE_PROCESS_GB = 1.0  # TensorFlow runtime + one SHIVA fold


@dataclass(frozen=True)
class EnsembleOutput:
    """Ensemble maps of one image on the model grid (X, Y, Z), float32, masked."""

    mean: np.ndarray
    std: np.ndarray


def batch_size_for(mem_gb: float | None, grid: Sequence[int], n_images: int) -> int:
    """Images per forward call under a memory budget (1 without a budget)."""
    if not mem_gb or n_images <= 1:
        return 1
    per_image = float(np.prod(grid)) * FORWARD_BYTES_PER_VOXEL / 2**30
    return int(max(1, min(n_images, (mem_gb - _BASE_PROCESS_GB) // per_image)))


def images_per_call(mem_gb: float | None, grid: Sequence[int], channels: int) -> int | None:
    """How many images one `predict()` call may queue under `mem_gb` (None: no budget).

    Each queued image holds its input (float32 x channels), two float64 accumulators and two
    float32 results; one forward pass is reserved on top of the process itself.
    """
    if not mem_gb:
        return None
    voxels = float(np.prod(grid))
    per_image = voxels * (4 * channels + 2 * 8 + 2 * 4)
    spare = (mem_gb - _BASE_PROCESS_GB) * 2**30 - voxels * FORWARD_BYTES_PER_VOXEL
    return int(max(1, spare // per_image))


def release_memory(fmt: str | None) -> None:
    """Drop the Keras session of the library that loaded a `fmt` model, then collect garbage.

    SavedModels need only the collection (their objects hold reference cycles); clearing the
    Keras 3 session needlessly costs ~0.5 s. `fmt` None (an OpenVINO fold): no Keras session.
    """
    module = {"keras": "keras", "h5": "tf_keras"}.get(fmt or "")
    if module is not None:
        importlib.import_module(module).backend.clear_session()
    gc.collect()
    try:  # hand freed heap pages back to the OS so RSS does not ratchet up fold after fold
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _RunningStats:
    """Welford mean/variance over folds (float64), fold after fold in descriptor order."""

    def __init__(self, shape: tuple[int, ...]):
        self.n = 0
        self.mean = np.zeros(shape, np.float64)
        self.m2 = np.zeros(shape, np.float64)

    def add(self, value: np.ndarray) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.m2 / max(self.n, 1), 0.0))


class EnsemblePredictor:
    """Predict one marker's probability maps with its fold ensemble.

    Checks every fold's md5 at construction (unless `verify_checksums` is False, which warns).
    `input_shape`/`channels` come from the first fold without a prediction. `engine` is an
    `--engine` name (resolved with `device`, `precision` and `threads`) or an EngineChoice
    resolved once per run; `ir_cache` is the work directory's IR cache folder (OpenVINO).
    """

    def __init__(self, descriptor: ModelDescriptor, device: str = "auto", threads: int = 1,
                 mem_gb: float | None = None, tta: str = "none",
                 verify_checksums: bool = True, engine: str | EngineChoice = "auto",
                 precision: str = "fp32", ir_cache: Path | None = None):
        if tta not in TTA_MODES:
            raise UsageError(f"--tta {tta!r}: choose from {', '.join(TTA_MODES)}")
        self.descriptor = descriptor
        self.tta = tta
        self.mem_gb = mem_gb
        self.threads = threads
        self.md5 = verify_model_files(descriptor, skip=not verify_checksums)  # before TF loads
        self.engine = engine if isinstance(engine, EngineChoice) else \
            choose_engine(engine, device, precision, threads)
        self.device = self.engine.device
        self.checksums_verified = verify_checksums
        self.ir_cache = ir_cache
        self._ir: list[Path] | None = None  # IR folder per fold (OpenVINO)
        self.converted = 0  # folds converted to IR by this predictor (0: all were cached)
        self._first: LoadedModel | None = None  # fold 0 kept from the probe until predict
        self._meta: tuple[tuple[int | None, ...], int, str] | None = None

    # --- model facts -------------------------------------------------------------------
    @property
    def openvino(self) -> bool:
        return self.engine.engine == "openvino"

    def _fold_md5s(self) -> list[str]:
        """md5 of each fold as computed at construction (hashed now where it was not)."""
        return [self.md5.get(entry.name) if self.checksums_verified and entry.name in self.md5
                else md5_of_path(path)
                for entry, path in zip(self.descriptor.files, self.descriptor.folds)]

    def _ir_folders(self) -> list[Path]:
        from shiva_bids.models.openvino_ir import ensure_ir

        if self._ir is None:
            self._ir, self.converted = ensure_ir(self.descriptor.folds, self._fold_md5s(),
                                                 self.descriptor.script_path, self.ir_cache)
        return self._ir

    def _load(self, index: int) -> LoadedModel:
        path = self.descriptor.folds[index]
        started = time.perf_counter()
        if self.openvino:
            from shiva_bids.models.openvino_ir import load_ir_fold

            model = load_ir_fold(self._ir_folders()[index], path, self.engine.precision,
                                 self.engine.threads)
        else:
            model = load_model(path, self.device, self.descriptor.script_path)
        expected = len(self.descriptor.modalities)
        if model.channels != expected:
            raise BadInputError(f"{path}: model takes {model.channels} channel(s) but "
                                f"{self.descriptor.path.name} lists {expected} modalities "
                                f"({', '.join(self.descriptor.modalities)})")
        if self._meta is not None and model.input_shape != self._meta[0]:
            raise BadInputError(f"{path}: input grid {model.input_shape} differs from fold 0's "
                                f"{self._meta[0]}")
        log.debug("loaded %s (%s) in %.1f s", path.name, model.format,
                  time.perf_counter() - started)
        return model

    def _probe(self) -> tuple[tuple[int | None, ...], int, str]:
        if self._meta is None:
            first = self._load(0)
            self._meta = (first.input_shape, first.channels, first.format)
            if not self.openvino:  # a TensorFlow load is slow: keep it for predict(); an IR
                self._first = first  # is read again in ~0.1 s, so none waits in memory
        return self._meta

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Model grid (X, Y, Z) read from fold 0 (SHIVA: 160x214x176); None where free."""
        return self._probe()[0]

    @property
    def channels(self) -> int:
        return self._probe()[1]

    @property
    def format(self) -> str:
        return self._probe()[2]

    @property
    def queue_size(self) -> int | None:
        """Images to pass per `predict()` call under the `--mem` budget (None: no limit)."""
        return images_per_call(self.mem_gb, self.input_shape, self.channels)

    @property
    def provenance(self) -> dict[str, Any]:
        """What runs: descriptor, version, target, folds + md5s, format, engine, precision,
        TF version, device (JSON)."""
        d = self.descriptor
        return {
            "descriptor": str(d.path), "target": d.target, "version": d.version,
            "release_date": d.release_date, "modalities": list(d.modalities),
            "architecture": d.architecture, "url": d.url, "demo": d.is_demo,
            "format": self.format,
            "folds": [{**record, **fold_provenance(path)}
                      for record, path in zip(fold_records(d, self.md5), d.folds)],
            "checksums_verified": self.checksums_verified and not d.unpublished_md5,
            "checksums": checksum_status(d, self.checksums_verified),
            "input_shape": list(self.input_shape), "channels": self.channels,
            "tensorflow_version": tensorflow_version(), **self.engine.provenance(),
            "tta": self.tta,
            "fold_zero_below": FOLD_ZERO_BELOW, "aggregation": "mean",
        }

    def close(self) -> None:
        """Drop the fold kept in memory by `input_shape`/`channels` (predict() also does)."""
        if self._first is not None:
            fmt, self._first = self._release_format(self._first), None
            release_memory(fmt)

    # --- prediction ----------------------------------------------------------------------
    def _check_inputs(self, images: Sequence[np.ndarray],
                      masks: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        grid, channels, _ = self._probe()
        checked = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            image = np.asarray(image, dtype=np.float32)
            if image.ndim == 3 and channels == 1:
                image = image[..., None]
            if image.ndim != 4 or image.shape[-1] != channels:
                raise BadInputError(f"image {i} for {self.descriptor.label}: shape "
                                    f"{image.shape}, the model takes (X, Y, Z, {channels})")
            if any(g is not None and g != s for g, s in zip(grid, image.shape[:3])):
                raise BadInputError(f"image {i} for {self.descriptor.label}: grid "
                                    f"{image.shape[:3]}, the model takes {tuple(grid)}")
            if mask is not None and np.shape(mask) != image.shape[:3]:
                raise BadInputError(f"mask {i}: shape {np.shape(mask)} != image grid "
                                    f"{image.shape[:3]}")
            checked.append(image)
        return checked

    def _release_format(self, model: LoadedModel) -> str | None:
        return None if self.openvino else model.format

    def _forward(self, model: LoadedModel, batch: np.ndarray) -> np.ndarray:
        if self.openvino:
            return self._predict_tta(model, batch)
        import tensorflow as tf

        try:
            with tf.device(tf_device_name(self.device)):
                out = self._predict_tta(model, batch)
        except tf.errors.ResourceExhaustedError as exc:
            raise TemporaryError(
                f"{self.descriptor.target}: out of {self.device.upper()} memory running "
                f"{model.path.name} on {len(batch)} image(s); retry with a smaller --mem, "
                f"fewer --nprocs, or --device cpu") from exc
        return out

    def _predict_tta(self, model: LoadedModel, batch: np.ndarray) -> np.ndarray:
        out = model.predict(batch)
        if self.tta == "flip":
            mirrored = model.predict(np.ascontiguousarray(batch[:, ::-1]))
            out = 0.5 * (out + mirrored[:, ::-1])
        return out

    def predict(self, images: Sequence[np.ndarray],
                masks: Sequence[np.ndarray | None]) -> list[EnsembleOutput]:
        """Ensemble maps for each (X, Y, Z, C) image; a None mask means no masking."""
        images = self._check_inputs(images, masks)
        if not images:
            return []
        stats = [_RunningStats(im.shape[:3]) for im in images]
        batch = batch_size_for(self.mem_gb, images[0].shape[:3], len(images))
        for index in range(len(self.descriptor.folds)):
            started = time.perf_counter()
            if index == 0 and self._first is not None:
                model, self._first = self._first, None  # already loaded by the probe
            else:
                model = self._load(index)
            for start in range(0, len(images), batch):
                chunk = np.stack(images[start:start + batch])
                out = self._forward(model, chunk)
                out[out < FOLD_ZERO_BELOW] = 0.0  # SHIVA.md §4, per fold
                for offset, fold_map in enumerate(out):
                    stats[start + offset].add(fold_map)
            fmt = self._release_format(model)
            del model
            release_memory(fmt)
            log.info("%s fold %d/%d: %d image(s) in %.1f s", self.descriptor.target, index + 1,
                     len(self.descriptor.folds), len(images), time.perf_counter() - started)
        results = []
        for stat, mask in zip(stats, masks):
            keep = np.ones(stat.mean.shape, np.float32) if mask is None \
                else (np.asarray(mask) > 0).astype(np.float32)
            results.append(EnsembleOutput(mean=stat.mean.astype(np.float32) * keep,
                                          std=stat.std().astype(np.float32) * keep))
        return results
