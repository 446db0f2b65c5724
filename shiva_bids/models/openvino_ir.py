"""Folds as OpenVINO IR: converted once in a spawned worker, cached, compiled one at a time.

Conversion (issue #23):

| fold format | how it becomes IR |
|---|---|
| SavedModel folder | `openvino.convert_model(folder)`: OpenVINO's TensorFlow frontend reads the protobuf and the variables itself; TensorFlow is not imported (checked) |
| `.keras`, legacy `.h5` | loaded exactly as the TensorFlow engine loads it (shiva_bids.models.loaders: descriptor script, rebuilt Python-3.7 Lambdas, mixed_float16 rebuilt in float32), wrapped in a `tf.function` with the fold's input signature (n, X, Y, Z, C) float32, and converted from that in memory |

The IR keeps the weights in float32 (`compress_to_fp16=False`: OpenVINO's default would round
them to fp16). It is stored by `shiva_bids.cache.cached_folder` under a key of the fold's md5,
the OpenVINO version and `IR_LAYOUT` (the precision is a compile-time setting: one IR serves
fp32 and bf16), in the work directory and in the user cache, so a rerun or a cohort converts
each fold once. Every missing fold of a descriptor is converted in one spawned worker process
that exits afterwards: TensorFlow, needed for `.keras`/`.h5`, never enters the inference
process, and a later run with the IR cached starts no worker at all.

Inference compiles one fold at a time for a batch of one image and the image's grid
(`INFERENCE_NUM_THREADS` = the inference threads, one stream, latency hint); images of a batch
run one after the other, so the bytes do not depend on `--mem` batching. fp32 pins
`INFERENCE_PRECISION_HINT=f32` (OpenVINO would pick bf16 by itself on AMX CPUs).
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from shiva_bids.cache import cache_roots, cached_folder, is_cached
from shiva_bids.errors import BadInputError, TemporaryError
from shiva_bids.models.engines import openvino_version, tensorflow_version
from shiva_bids.models.loaders import LoadedModel, model_format

log = logging.getLogger(__name__)
IR_LAYOUT = 1  # bump when the conversion changes the IR it writes
XML = "model.xml"
INFO = "conversion.json"
PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}
_CORE = None


def ir_key(md5: str) -> str:
    """Cache folder name of one fold's IR."""
    return f"openvino-ir-{md5}-ov{openvino_version()}-layout{IR_LAYOUT}"


# --- conversion (in the worker) ----------------------------------------------------------

def _convert_fold(path: Path, script: Path | None, out: Path) -> None:
    import openvino as ov

    fmt = model_format(path)
    if fmt == "SavedModel":
        model = ov.convert_model(str(path))
    else:
        from shiva_bids.models.devices import import_tensorflow
        from shiva_bids.models.loaders import load_model

        tf = import_tensorflow()
        loaded = load_model(path, "cpu", script)
        keras_model = loaded.handle
        spec = tf.TensorSpec([None, *loaded.input_shape, loaded.channels], tf.float32,
                             name="image")
        model = ov.convert_model(tf.function(lambda x: keras_model(x, training=False),
                                             input_signature=[spec]))
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / XML), compress_to_fp16=False)
    (out / INFO).write_text(json.dumps({
        "source": path.name, "source_format": fmt, "openvino": openvino_version(),
        "tensorflow": None if fmt == "SavedModel" else tensorflow_version(),
        "ir_layout": IR_LAYOUT}, indent=1) + "\n", encoding="utf-8")


def convert_folds(jobs: Sequence[tuple[str, str | None, str]]) -> list[tuple[str, str] | None]:
    """Convert (fold, script, output folder) jobs; per job None, or (kind, message) where kind
    is "bad" (the loader's one-line error) or "convert" (the converter failed)."""
    results: list[tuple[str, str] | None] = []
    for source, script, out in jobs:
        try:
            _convert_fold(Path(source), Path(script) if script else None, Path(out))
            results.append(None)
        except BadInputError as exc:
            results.append(("bad", str(exc)))
        except Exception as exc:  # noqa: BLE001 - any converter failure: unusable model file
            text = str(exc).strip().splitlines()
            results.append(("convert", f"{type(exc).__name__}: {text[0][:300] if text else ''}"))
    return results


def _worker_main(jobs: list[tuple[str, str | None, str]], conn) -> None:
    """Entry of the conversion worker: send the results, then leave at once (an orderly
    interpreter exit after OpenVINO's TensorFlow frontend took 10-15 CPU-s here)."""
    from shiva_bids.orphans import exit_with_parent
    exit_with_parent()
    conn.send(convert_folds(jobs))
    conn.close()
    os._exit(0)


def run_conversion_worker(jobs: list[tuple[str, str | None, str]]) -> list:
    """`convert_folds(jobs)` in a spawned process that exits afterwards."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_worker_main, args=(jobs, sender), daemon=True)
    worker.start()
    sender.close()
    try:
        return receiver.recv()
    except EOFError as exc:
        raise TemporaryError(f"the OpenVINO conversion worker stopped abruptly (killed, e.g. "
                             f"out of memory) converting {jobs[0][0]}; retry with more "
                             f"memory") from exc
    finally:
        receiver.close()
        worker.join()


# --- cache ---------------------------------------------------------------------------------

def ensure_ir(folds: Sequence[Path], md5s: Sequence[str], script: Path | None,
              work_cache: Path | None) -> tuple[list[Path], int]:
    """The IR folder of every fold (converted where no cache holds it) and how many were
    converted now. Raises BadInputError (65) naming the fold that cannot be converted."""
    roots = cache_roots(work_cache)
    if not roots:  # no work directory and no user cache: a private folder for this process
        roots = (Path(tempfile.mkdtemp(prefix="shiva-bids-ir-")),)
    names = [ir_key(md5) for md5 in md5s]
    missing = [i for i, name in enumerate(names) if not is_cached(name, roots)]
    if missing:
        staging = Path(roots[0])
        staging.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".convert-", dir=staging))
        try:
            jobs = [(str(folds[i]), str(script) if script else None, str(stage / names[i]))
                    for i in missing]
            log.info("converting %d fold(s) to OpenVINO IR (once; cached as %s)",
                     len(jobs), ", ".join(names[i][:24] + "..." for i in missing))
            for index, problem in zip(missing, run_conversion_worker(jobs)):
                if problem is not None:
                    kind, message = problem
                    raise BadInputError(message if kind == "bad" else
                                        f"{folds[index]}: cannot convert "
                                        f"{model_format(Path(folds[index]))} model to OpenVINO "
                                        f"IR ({message})")
            for index in missing:
                staged = stage / names[index]
                cached_folder(names[index], roots,
                              lambda tmp, src=staged: _move_files(src, tmp))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return [cached_folder(name, roots, _unreachable) for name in names], len(missing)


def _move_files(source: Path, target: Path) -> None:
    for item in source.iterdir():
        shutil.move(str(item), str(target / item.name))


def _unreachable(tmp: Path) -> None:
    raise RuntimeError(f"IR cache entry vanished while in use ({tmp})")


# --- inference (in the inference process) --------------------------------------------------

def _core():
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def compile_config(precision: str, threads: int) -> dict[str, str]:
    """CPU plugin settings of every compiled fold (module docstring)."""
    return {"INFERENCE_PRECISION_HINT": PRECISION_HINT[precision],
            "INFERENCE_NUM_THREADS": str(max(1, int(threads))),
            "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}


def load_ir_fold(folder: Path, source: Path, precision: str, threads: int) -> LoadedModel:
    """One fold's IR, compiled on first call for a batch of one at the image's grid."""
    core = _core()
    model = core.read_model(str(folder / XML))
    port = model.input(0)
    dims = [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
    if len(dims) != 5 or dims[-1] is None:
        raise BadInputError(f"{source}: expected a 3D channels-last input (n, X, Y, Z, C), "
                            f"model takes {tuple(dims)}")
    dtype = np.dtype(port.get_element_type().to_dtype())
    config = compile_config(precision, threads)
    compiled: dict[tuple[int, ...], object] = {}

    def call(batch: np.ndarray) -> np.ndarray:
        outs = []
        for image in batch:
            if image.shape not in compiled:
                model.reshape([1, *image.shape])
                compiled.clear()  # one compiled grid at a time
                net = core.compile_model(model, "CPU", config)
                compiled[image.shape] = (net.create_infer_request(), net.output(0))
            request, output = compiled[image.shape]
            result = request.infer({0: image[None]})
            outs.append(np.array(result[output], dtype=np.float32))
        return np.concatenate(outs)

    fmt = json.loads((folder / INFO).read_text(encoding="utf-8"))["source_format"]
    return LoadedModel(source, fmt, tuple(dims[1:4]), int(dims[-1]), dtype.name, call,
                       handle=compiled)

