"""Which inference engine runs the folds: OpenVINO on CPUs, TensorFlow on GPUs (issue #23).

`--engine auto` runs OpenVINO on the CPU and TensorFlow where a GPU is used; `--engine
tensorflow` is the GPU path and the tested fallback on CPUs. OpenVINO runs an IR converted from
the fold once and cached (shiva_bids.models.openvino_ir); the inference process then never
imports TensorFlow, which is what keeps its memory flat (issue #16: TensorFlow/oneDNN keeps each
pass's working memory, 3.1 GiB growing per fold; OpenVINO fp32 2.3 GiB flat, bf16 1.3 GiB).

`--precision bf16` runs OpenVINO's CPU plugin with `INFERENCE_PRECISION_HINT=bf16` (about 2x
faster per pass on AVX-512 BF16 / AMX CPUs). It runs only where the CPU computes bf16 natively
(OpenVINO lists "BF16" in the CPU's OPTIMIZATION_CAPABILITIES); elsewhere, and with TensorFlow,
the run says so in one warning and computes in fp32. Its measured agreement with fp32 is in
docs/models.md.

Deciding `auto` must not import TensorFlow (that alone costs ~0.65 GiB, #16): a GPU is looked
for as the NVIDIA driver exposes it (`/proc/driver/nvidia/gpus/*`), unless CUDA_VISIBLE_DEVICES
hides every device; TensorFlow then confirms it when it configures the device.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from shiva_bids.errors import UsageError
from shiva_bids.models.devices import DEVICES, configure_device

log = logging.getLogger(__name__)
ENGINES: tuple[str, ...] = ("auto", "openvino", "tensorflow")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def installed_version(*distributions: str) -> str:
    """The version of the first of `distributions` that is installed, else "?" (read from
    package metadata, so that nothing is imported just for its version)."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "?"


def tensorflow_version() -> str:
    return installed_version("tensorflow", "tensorflow-cpu", "tf-nightly")


def openvino_version() -> str:
    return installed_version("openvino", "openvino-nightly")


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is there for TensorFlow, without importing TensorFlow."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    try:
        return any(NVIDIA_GPUS.iterdir())
    except OSError:
        return False


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively on this CPU."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class EngineChoice:
    """The engine, device and precision that run, and what was asked for."""

    engine: str  # "openvino" or "tensorflow"
    device: str  # "cpu" or "gpu"
    precision: str  # what computes: "fp32" or "bf16"
    requested_precision: str
    threads: int

    @property
    def version(self) -> str:
        return openvino_version() if self.engine == "openvino" else tensorflow_version()

    @property
    def label(self) -> str:
        """One cell of the group table: "openvino 2026.4.1 bf16"."""
        return f"{self.engine} {self.version} {self.precision}"

    def provenance(self) -> dict[str, Any]:
        record = {"engine": self.engine, "engine_version": self.version,
                  "precision": self.precision, "device": self.device,
                  "threads": self.threads}
        if self.requested_precision != self.precision:
            record["precision_requested"] = self.requested_precision
        return record


def _check_choice(engine: str, device: str, precision: str) -> None:
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: choose from {', '.join(DEVICES)}")
    if engine == "openvino" and device == "gpu":
        raise UsageError("--engine openvino runs on the CPU; use --engine tensorflow (or "
                         "auto) with --device gpu")


def choose_engine(engine: str = "auto", device: str = "auto", precision: str = "fp32",
                  threads: int = 1) -> EngineChoice:
    """Resolve `--engine`, `--device` and `--precision` (64 for a combination that cannot run).

    TensorFlow is imported and configured only when it is the engine.
    """
    _check_choice(engine, device, precision)
    threads = max(1, int(threads))
    use_tf = engine == "tensorflow" or (engine == "auto" and (
        device == "gpu" or (device == "auto" and gpu_visible())))
    if use_tf:
        resolved = configure_device(device, threads)
        if engine == "auto" and resolved == "cpu":  # a GPU node TensorFlow cannot use
            use_tf = False
    if use_tf:
        effective = "fp32"
        if precision != "fp32":
            log.warning("--precision %s: TensorFlow runs in fp32 here (bf16 runs with "
                        "OpenVINO on CPUs with native bf16)", precision)
    else:
        resolved = "cpu"
        effective = precision
        if precision == "bf16" and not cpu_has_bf16():
            effective = "fp32"
            log.warning("--precision bf16: this CPU has no native bf16 (OpenVINO lists no "
                        "BF16 capability); running in fp32")
    choice = EngineChoice("tensorflow" if use_tf else "openvino", resolved, effective,
                          precision, threads)
    log.info("inference engine: %s on the %s (%s, %d thread(s))", choice.engine,
             choice.device.upper(), choice.precision, threads)
    return choice
