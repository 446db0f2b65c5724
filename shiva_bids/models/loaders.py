"""Load one fold in any published SHIVA format and call it (reference/SHIVA.md §3).

| format | how |
|---|---|
| SavedModel folder (`.tf_inference`, or any folder with `saved_model.pb`) | `tf.saved_model.load`, signature `serving_default` (else `serve`); input = first key of the signature's structured input spec, cast to that signature's dtype; output = first key |
| Keras 3 `.keras` (+ optional descriptor `script`) | the script is imported as module `kmodel` and its names passed as custom objects, with `{"tf": tf}`; `keras.saving.load_model(compile=False)` |
| legacy Keras 2 `.h5` | `tf_keras.models.load_model(compile=False, custom_objects={"tf": tf})`; Lambda layers marshalled by another Python (the SHIVA v0/v1 files: Python 3.7) are rebuilt for this Python first (shiva_bids.models.legacy), then the model is built from the rebuilt config and the file's weights are loaded; what cannot be rebuilt fails with one line |

Models saved with the `mixed_float16` policy are rebuilt in float32 on CPU (config edited,
weights copied), as the SHIVA_CMB reference script does (§3). Keras models are called directly
rather than through `model.predict()` (MEASUREMENTS.md: `predict()` often runs on one core).
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shiva_bids.errors import BadInputError, MissingInputError
from shiva_bids.models import legacy

log = logging.getLogger(__name__)
FORMATS: tuple[str, ...] = ("SavedModel", "keras", "h5")
_SIGNATURES = ("serving_default", "serve")
SAVEDMODEL_RELEASES = "PVS v2-v4, WMH v2, CMB v2, LAC v0"


@dataclass
class LoadedModel:
    """One fold in memory: its grid, channel count, and a batch call."""

    path: Path
    format: str
    input_shape: tuple[int | None, ...]  # spatial grid (X, Y, Z); None where not fixed
    channels: int
    input_dtype: str
    call: Callable[[np.ndarray], Any]
    handle: Any = None  # the loaded object; kept alive as long as `call` is used
    rebuilt: tuple[legacy.RebuiltLambda, ...] = ()  # Lambda functions rebuilt (legacy .h5)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Forward (n, X, Y, Z, C) -> (n, X, Y, Z) float32 (single-channel output squeezed)."""
        out = self.call(np.ascontiguousarray(batch, dtype=self.input_dtype))
        out = np.array(out, dtype=np.float32)  # a writable copy
        if out.ndim == 5:
            if out.shape[-1] != 1:
                raise BadInputError(f"{self.path}: model output has {out.shape[-1]} channels; "
                                    f"SHIVA models have one")
            out = out[..., 0]
        return out


def model_format(path: Path) -> str:
    """"SavedModel", "keras" or "h5" from the path (a folder is a SavedModel)."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise BadInputError(f"{path}: folder without saved_model.pb is not a SavedModel")
        return "SavedModel"
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    raise BadInputError(f"{path}: unknown model format (expected a SavedModel folder, "
                        f".keras or .h5)")


def _spatial(shape: Any, path: Path) -> tuple[tuple[int | None, ...], int]:
    dims = tuple(None if d is None else int(d) for d in shape)
    if len(dims) != 5 or dims[-1] is None:
        raise BadInputError(f"{path}: expected a 3D channels-last input (n, X, Y, Z, C), "
                            f"model takes {dims}")
    return dims[1:4], dims[-1]


def _load_savedmodel(path: Path) -> LoadedModel:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = next((loaded.signatures[k] for k in _SIGNATURES if k in loaded.signatures),
                     None)
    if signature is None and hasattr(loaded, "serve"):
        signature = loaded.serve.get_concrete_function()
    if signature is None:
        raise BadInputError(f"{path}: SavedModel has no serving_default/serve signature")
    args, kwargs = signature.structured_input_signature
    if kwargs:
        name, spec = next(iter(kwargs.items()))  # first key (SHIVA.md §3)
    elif args:
        name, spec = None, args[0]
    else:
        raise BadInputError(f"{path}: SavedModel signature takes no input")
    grid, channels = _spatial(spec.shape, path)
    dtype = spec.dtype.as_numpy_dtype

    def call(batch: np.ndarray) -> np.ndarray:
        tensor = tf.constant(batch, dtype=spec.dtype)
        out = signature(**{name: tensor}) if name is not None else signature(tensor)
        if isinstance(out, dict):
            out = out[next(iter(out))]  # first key of the output dict
        return out.numpy()

    return LoadedModel(path, "SavedModel", grid, channels, np.dtype(dtype).name, call, loaded)


def _import_script(script: Path) -> dict[str, Any]:
    """Import the descriptor's `script` as module `kmodel` (SHIVA.md §3) -> its public names."""
    spec = importlib.util.spec_from_file_location("kmodel", script)
    if spec is None or spec.loader is None:
        raise BadInputError(f"{script}: cannot import the model's script")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kmodel"] = module
    spec.loader.exec_module(module)
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


_POLICY_CLASSES = ("Policy", "DTypePolicy", "FloatDTypePolicy")


def _float32_config(node: Any) -> Any:
    """Copy of a Keras config with every mixed_float16 dtype policy replaced by float32."""
    if isinstance(node, dict):
        config = node.get("config")
        if node.get("class_name") in _POLICY_CLASSES and isinstance(config, dict) \
                and config.get("name") == "mixed_float16":
            return "float32"
        return {k: _float32_config(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_float32_config(v) for v in node]
    return "float32" if node == "mixed_float16" else node


def is_mixed_precision(model: Any) -> bool:
    return any(getattr(getattr(layer, "dtype_policy", None), "name", "") == "mixed_float16"
               for layer in model.layers)


def rebuild_float32(model: Any, custom_objects: dict[str, Any]) -> Any:
    """Rebuild a mixed_float16 Keras model in float32 and copy its (float32) weights."""
    # from_config runs in safe mode, which refuses Lambda layers; the md5 was verified.
    if type(model).__module__.startswith("tf_keras"):
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    else:
        from keras.src.saving.serialization_lib import SafeModeScope
    with SafeModeScope(False):
        rebuilt = type(model).from_config(_float32_config(model.get_config()),
                                          custom_objects=custom_objects)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _keras_loaded(model: Any, path: Path, fmt: str, device: str,
                  custom_objects: dict[str, Any]) -> LoadedModel:
    if device == "cpu" and is_mixed_precision(model):
        log.info("%s: mixed_float16 model rebuilt in float32 for the CPU", path.name)
        model = rebuild_float32(model, custom_objects)
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    grid, channels = _spatial(shape, path)

    def call(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False))

    return LoadedModel(path, fmt, grid, channels, "float32", call, model)


def _load_keras(path: Path, device: str, script: Path | None) -> LoadedModel:
    import keras
    import tensorflow as tf

    custom = {"tf": tf, **(_import_script(script) if script else {})}
    # safe_mode=False: Lambda layers must load; the file's md5 was verified beforehand.
    model = keras.saving.load_model(path, compile=False, custom_objects=custom, safe_mode=False)
    return _keras_loaded(model, path, "keras", device, custom)


def _is_bytecode_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or "marshal" in text or "bytecode" in text \
        or "code() argument" in text or "unknown opcode" in text


def _bytecode_message(path: Path, detail: str) -> str:
    return (f"{path}: {detail}; Python {legacy.running_python()} cannot load it: use a "
            f"SavedModel release of this marker if there is one ({SAVEDMODEL_RELEASES}; "
            f"see docs/models.md)")


def _from_rebuilt_config(path: Path, config: dict, custom: dict[str, Any]) -> Any:
    """The tf_keras model of a rebuilt config, with the weights of the `.h5` file."""
    import tf_keras
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(False), warnings.catch_warnings():
        # the module that defined the Lambda at training time is not importable here
        warnings.filterwarnings("ignore", message=".*is not loaded, but a Lambda layer")
        model = tf_keras.models.model_from_config(config, custom_objects=custom)
    model.load_weights(path)
    return model


def _load_h5(path: Path, device: str) -> LoadedModel:
    import tensorflow as tf
    import tf_keras

    custom = {"tf": tf}
    try:
        config, rebuilt = legacy.rebuilt_h5_config(path)
    except legacy.LambdaRebuildError as exc:
        raise BadInputError(_bytecode_message(path, str(exc))) from exc
    if rebuilt:
        log.info("%s: %d Lambda function(s) written by Python %s rebuilt for Python %s",
                 path.name, len(rebuilt), ", ".join(sorted({r.python for r in rebuilt})),
                 legacy.running_python())
        model = _from_rebuilt_config(path, config, custom)
    else:
        try:
            model = tf_keras.models.load_model(path, compile=False, custom_objects=custom)
        except (EOFError, ValueError, SystemError, TypeError) as exc:
            if not _is_bytecode_error(exc):
                raise
            raise BadInputError(_bytecode_message(
                path, f"its Lambda layers hold unreadable bytecode ({type(exc).__name__}: "
                      f"{exc})")) from exc
    loaded = _keras_loaded(model, path, "h5", device, custom)
    loaded.rebuilt = rebuilt
    return loaded


def fold_provenance(path: Path) -> dict[str, Any]:
    """Provenance a fold adds to its md5 record: its rebuilt Lambda layers, if any."""
    if not path.is_file() or model_format(path) != "h5":
        return {}
    try:
        return legacy.provenance(legacy.rebuilt_h5_config(path)[1])
    except (legacy.LambdaRebuildError, OSError, ValueError):
        return {}


def load_model(path: Path, device: str = "cpu", script: Path | None = None) -> LoadedModel:
    """Load one fold (any format). Errors are one line: 66 missing, 65 unusable."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: model file not found")
    fmt = model_format(path)
    try:
        if fmt == "SavedModel":
            return _load_savedmodel(path)
        if fmt == "keras":
            return _load_keras(path, device, script)
        return _load_h5(path, device)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is an unusable model file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BadInputError(f"{path}: cannot load {fmt} model ({type(exc).__name__}: "
                            f"{first[:300]})") from exc
