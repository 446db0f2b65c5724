"""TensorFlow device and thread set-up for inference (`--device`, `--omp-nthreads`).

SHiVAi's `--use_cpu` hides GPUs and sets TF intra- and inter-op threads to `ai_threads`
(reference/SHIVA.md §4); we do the same with `--omp-nthreads`. On GPUs, memory growth is
enabled so TensorFlow does not reserve the whole card. Thread counts can only be set before
TensorFlow's runtime starts; later calls keep the running values (logged at debug level).
"""
from __future__ import annotations

import logging

from shiva_bids.errors import UsageError
from shiva_bids.log import native_output_to_log

log = logging.getLogger(__name__)
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")


def import_tensorflow():
    """TensorFlow, its native start-up lines (oneDNN notes, "failed call to cuInit" where no
    GPU is present) sent to the debug log rather than the console (shiva_bids.log)."""
    with native_output_to_log("tensorflow"):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA is initialised, or fails to be, here
    return tf


def configure_device(device: str = "auto", threads: int = 1) -> str:
    """Resolve `device` to "cpu" or "gpu" and configure TensorFlow for it.

    Raises UsageError (64) for an unknown device or `gpu` when TensorFlow sees no GPU.
    """
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: choose from {', '.join(DEVICES)}")
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise UsageError("--device gpu: TensorFlow sees no GPU (check the driver, "
                         "CUDA_VISIBLE_DEVICES, or `--nv`/`--gpus all` for containers)")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:  # runtime already started
            log.debug("memory growth not changed on %s: %s", gpu.name, exc)
    threads = max(1, int(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:
        log.debug("TensorFlow threads already fixed (%s); keeping them", exc)
    resolved = "gpu" if (device == "gpu" or (device == "auto" and gpus)) else "cpu"
    log.info("inference device: %s (%d thread(s)%s)", resolved, threads,
             f", {len(gpus)} GPU(s) visible" if gpus else "")
    return resolved


def tf_device_name(resolved: str) -> str:
    """TensorFlow device string for a resolved device ("cpu"/"gpu")."""
    return "/GPU:0" if resolved == "gpu" else "/CPU:0"
