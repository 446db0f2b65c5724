"""Legacy Keras-2 `.h5` folds whose `Lambda` layers hold another Python's bytecode.

Keras 2 (and tf_keras, `generic_utils.func_dump`) stores the function of a `Lambda` layer as
`[code, defaults, closure]`: `code` is `marshal.dumps(func.__code__)` in base64 (the
`codecs` "base64" codec: lines of 76 characters), `defaults` the function's `__defaults__`,
`closure` the contents of its closure cells, in `co_freevars` order. `func_load` runs
`marshal.loads`, which only reads the marshal format of the running Python: the SHIVA v0/v1
`.h5` files were written by Python 3.7 and fail on 3.11 with `EOFError` (SHIVA.md §3,
SHiVAi#17; MEASUREMENTS.md "TensorFlow model formats").

Here each such function is rebuilt: `xdis` reads the foreign marshal data into a code object,
`decompyle3` turns it back into Python source, the source is compiled on the running Python
as a function of the same name, arguments and free variables, and its code is marshalled back
into the model config. tf_keras then loads the config exactly as it loads a file saved on this
Python (`func_load` with `tf` among the custom objects) and the weights come from the same
file. Anything that cannot be rebuilt raises :class:`LambdaRebuildError` naming the layer.
"""
from __future__ import annotations

import codecs
import copy
import functools
import io
import json
import keyword
import marshal
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Bytecode versions decompyle3 decompiles; 3.7 first: the SHIVA `.h5` releases (SHIVA.md §3).
SOURCE_VERSIONS: tuple[tuple[int, int], ...] = ((3, 7), (3, 8))
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08
# (callable, its type) keys of the callables a Lambda layer config may hold.
_LAMBDA_ENTRIES = (("function", "function_type"), ("output_shape", "output_shape_type"),
                   ("mask", "mask_type"))


class LambdaRebuildError(Exception):
    """A Lambda function written by another Python that could not be rebuilt."""


@dataclass(frozen=True)
class RebuiltLambda:
    """One rebuilt callable: the layer, its config key, the Python that wrote it, its source."""

    layer: str
    entry: str
    python: str
    source: str

    def as_json(self) -> dict[str, str]:
        return {"layer": self.layer, "entry": self.entry,
                "rebuilt_from": f"Python {self.python} bytecode", "source": self.source}


def _decode(code: str) -> bytes:
    """The marshal bytes of a `func_dump` code string (as `func_load` decodes them)."""
    try:
        return codecs.decode(code.encode("ascii"), "base64")
    except (UnicodeEncodeError, ValueError):
        return code.encode("raw_unicode_escape")


def _encode(raw: bytes) -> str:
    return codecs.encode(raw, "base64").decode("ascii")


def native_error(raw: bytes) -> str | None:
    """Why this Python's `marshal` cannot read `raw` as a code object (None: it can)."""
    try:
        code = marshal.loads(raw)
    except (EOFError, ValueError, TypeError, SystemError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if isinstance(code, types.CodeType) else f"not a code object: {type(code)}"


def _foreign_code(raw: bytes, version: tuple[int, int]) -> Any:
    """`raw` read as the marshal data of Python `version` (an xdis code object)."""
    from xdis.magics import by_version, magic2int
    from xdis.unmarshal import load_code

    magic = magic2int(by_version[f"{version[0]}.{version[1]}"])
    return load_code(io.BytesIO(raw), magic, code_objects={})


def _body_source(code: Any, version: tuple[int, int]) -> str:
    """The decompiled body of a function code object (decompyle3)."""
    import decompyle3

    out = io.StringIO()
    decompyle3.code_deparse(code, out=out, version=version)
    return out.getvalue().strip() or "pass"


def _signature(code: Any) -> str:
    """The parameter list of a code object: positional, *args, keyword-only, **kwargs."""
    names = list(code.co_varnames)
    count = code.co_argcount
    positional_only = getattr(code, "co_posonlyargcount", 0)
    kwonly = code.co_kwonlyargcount
    params = names[:count]
    if positional_only:
        params.insert(positional_only, "/")
    index = count + kwonly
    if code.co_flags & _CO_VARARGS:
        params.append(f"*{names[index]}")
        index += 1
    elif kwonly:
        params.append("*")
    params += names[count:count + kwonly]
    if code.co_flags & _CO_VARKEYWORDS:
        params.append(f"**{names[index]}")
    return ", ".join(params)


def _compile_function(code: Any, body: str, where: str) -> types.CodeType:
    """Compile `body` as a function with `code`'s name, parameters and free variables."""
    name = code.co_name if code.co_name.isidentifier() and not keyword.iskeyword(code.co_name) \
        else "rebuilt_lambda"
    freevars = tuple(code.co_freevars)
    source = (f"def _outer({', '.join(freevars)}):\n"
              f"    def {name}({_signature(code)}):\n"
              f"{textwrap.indent(body, ' ' * 8)}\n"
              f"    return {name}\n")
    module = compile(source, f"<{where}, rebuilt from bytecode>", "exec")
    outer = next(c for c in module.co_consts if isinstance(c, types.CodeType))
    inner = next(c for c in outer.co_consts if isinstance(c, types.CodeType)
                 and c.co_name == name)
    if set(inner.co_freevars) != set(freevars) or inner.co_argcount != code.co_argcount:
        raise LambdaRebuildError(f"{where}: the decompiled function does not match its "
                                 f"bytecode (free variables {inner.co_freevars} vs {freevars})")
    return inner


def rebuild_function(dump: Any, where: str) -> tuple[list[Any], str, str] | None:
    """A `func_dump` triple re-marshalled for this Python, with the source Python version and
    the decompiled body; None when this Python reads it as it is."""
    if isinstance(dump, (list, tuple)):
        code_text, defaults, closure = (list(dump) + [None, None])[:3]
    else:
        code_text, defaults, closure = dump, None, None
    raw = _decode(code_text)
    native = native_error(raw)
    if native is None:
        return None
    failures = [f"Python {running_python()}: {native}"]
    for version in SOURCE_VERSIONS:
        try:
            foreign = _foreign_code(raw, version)
            body = _body_source(foreign, version)
            rebuilt = _compile_function(foreign, body, where)
        except Exception as exc:  # noqa: BLE001 - any failure means "not this version"
            failures.append(f"Python {version[0]}.{version[1]}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if closure is not None:  # closure values follow co_freevars order
            by_name = dict(zip(foreign.co_freevars, closure))
            closure = [by_name[n] for n in rebuilt.co_freevars]
        python = f"{version[0]}.{version[1]}"
        return [_encode(marshal.dumps(rebuilt)), defaults, closure], python, body
    raise LambdaRebuildError(f"{where} holds bytecode of another Python that could not be "
                             f"rebuilt ({'; '.join(failures)})")


def _lambda_layers(config: Any) -> Iterator[dict]:
    """Every Lambda layer config in a (nested) Keras model config."""
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda" and isinstance(config.get("config"), dict):
            yield config
        for value in config.values():
            yield from _lambda_layers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _lambda_layers(value)


def rebuild_config(config: dict) -> tuple[dict, tuple[RebuiltLambda, ...]]:
    """A copy of a Keras model config whose foreign-bytecode Lambda callables are rebuilt for
    this Python, and what was rebuilt (empty: the config loads as it is)."""
    config = copy.deepcopy(config)
    rebuilt = []
    for layer in _lambda_layers(config):
        settings = layer["config"]
        name = settings.get("name", "?")
        for key, type_key in _LAMBDA_ENTRIES:
            if settings.get(type_key) != "lambda" or settings.get(key) is None:
                continue
            result = rebuild_function(settings[key], f"Lambda layer {name!r} ({key})")
            if result is not None:
                settings[key], python, body = result
                rebuilt.append(RebuiltLambda(name, key, python, body))
    return config, tuple(rebuilt)


def read_model_config(path: Path) -> dict:
    """The `model_config` JSON stored in a Keras `.h5` file."""
    import h5py

    with h5py.File(path, "r") as handle:
        text = handle.attrs.get("model_config")
    if text is None:
        raise LambdaRebuildError(f"{path}: no model_config in this .h5 (weights only)")
    return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)


@functools.lru_cache(maxsize=64)
def _rebuilt_h5(path: str, size: int, mtime_ns: int) -> tuple[dict, tuple[RebuiltLambda, ...]]:
    return rebuild_config(read_model_config(Path(path)))


def rebuilt_h5_config(path: Path) -> tuple[dict, tuple[RebuiltLambda, ...]]:
    """:func:`rebuild_config` of an `.h5` file's model config (cached per file version)."""
    stat = Path(path).stat()
    config, rebuilt = _rebuilt_h5(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    return copy.deepcopy(config), rebuilt


def provenance(rebuilt: tuple[RebuiltLambda, ...]) -> dict[str, Any]:
    """What the provenance of a fold records about its rebuilt Lambda layers ({}: none)."""
    if not rebuilt:
        return {}
    from importlib.metadata import version

    return {"lambda_rebuilt": {
        "from": sorted({f"Python {r.python} bytecode" for r in rebuilt}),
        "on": f"Python {running_python()}",
        "tools": f"xdis {version('xdis')}, decompyle3 {version('decompyle3')}",
        "layers": sorted({r.layer for r in rebuilt}),
        "sources": sorted({r.source for r in rebuilt})}}


def running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"
