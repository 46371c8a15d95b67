"""Serve a model file as a bridge.v1 backend: a Cog predictor, unchanged, or
a :mod:`bridge.sdk` function or class.

``python -m bridge serve-model predict.py:Predictor --name me/fox`` loads
the file and the name after the colon (a class or a function, as
``cog.yaml``'s ``predict:`` line). A file that uses Cog (``pip install
'.[cog]'``: ``cog`` 0.23 from PyPI) is read the way Cog reads it, by Cog's
own inspector (``cog._inspector``, pinned to 0.23 in ``pyproject.toml``):

* ``cog.Input(...)`` defaults, descriptions, ``ge``/``le``,
  ``min_length``/``max_length``, ``regex`` and ``choices`` become the input
  schema, and each value is normalized and checked by Cog's ``check_input``
  before ``predict`` (or ``run``) sees it;
* an ``Iterator``/``ConcatenateIterator`` (or async) return type makes the
  output a stream; any other type is one value;
* ``setup()`` runs once, before the server listens (with ``COG_WEIGHTS`` if
  it takes ``weights``).

Files (``cog.Path``, ``cog.File``): an input takes a ``data:`` URI, which
becomes a temporary file for the prediction (removed after it); ``http(s)``
URLs and local paths are refused (422 at the bridge: the schema says
``^data:``), so a request can neither make the model server fetch a URL nor
read its disk. An output file is sent as a ``data:`` URI of at most
:data:`MAX_FILE_BYTES`; a larger one fails the prediction, saying so.

Not carried over: ``print()`` in ``predict`` goes to the model server's
stdout, not the prediction's logs; ``record_metric`` is Cog's no-op outside
its own runtime (yield :class:`bridge.sdk.Metrics` instead).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib.util
import inspect
import mimetypes
import os
import pathlib
import sys
import types
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .model import Model, input_object, input_property

__all__ = ["MAX_FILE_BYTES", "ModelLoadError", "load_model"]

#: The largest file an output may carry as a data URI (it travels in one
#: gRPC message, whose default limit is 4 MiB, base64 taking 4/3 of it).
MAX_FILE_BYTES = 2 * 1024 * 1024


class ModelLoadError(Exception):
    """The model file, or the name in it, cannot be served; says why."""


def load_model(ref: str, name: str) -> Model:
    """The model at *ref* (``path/to/file.py:Name``), served as *name*."""
    path, colon, attr = ref.rpartition(":")
    if not colon or not path or not attr.isidentifier():
        raise ModelLoadError(f"{ref!r}: give FILE.py:NAME, e.g. predict.py:Predictor")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such file")
    module = _import_file(path)
    target = getattr(module, attr, None)
    if target is None:
        raise ModelLoadError(f"{path} has no {attr}")
    if not (inspect.isclass(target) or inspect.isfunction(target)):
        raise ModelLoadError(f"{path}:{attr} is not a class or a function")
    if _uses_cog(module):
        return _cog_model(module, attr, name)
    return Model(name, target)


def _import_file(path: str) -> types.ModuleType:
    """Import *path* as a module named after the file, with its directory
    first on ``sys.path`` (so it imports its neighbours, as under Cog).

    This changes the process's ``sys.path`` and ``sys.modules``, as Cog
    does in the process that serves a predictor: ``serve-model``'s process
    is the model's own. A file whose name is taken by a module already
    loaded (``bridge.py``, ``json.py``) is refused rather than shadow it."""
    module_name = pathlib.Path(path).stem
    if module_name in sys.modules:
        raise ModelLoadError(
            f"{path}: a module named {module_name!r} is already loaded here; rename the file"
        )
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # what Cog's inspector imports it by
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:  # one line, not a traceback through importlib
        del sys.modules[module_name]
        where = exc.filename or path
        if os.path.abspath(where) == os.path.abspath(path):
            where = path  # as it was given
        raise ModelLoadError(f"{where}:{exc.lineno}: {exc.msg}") from None
    return module


def _uses_cog(module: types.ModuleType) -> bool:
    """Whether the file imported anything from Cog."""
    for value in vars(module).values():
        origin = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", "")
        if isinstance(origin, str) and origin.split(".")[0] == "cog":
            return True
    return False


def _cog_model(module: types.ModuleType, attr: str, name: str) -> Model:
    try:
        from cog import _adt, _inspector
        from cog.predictor import extract_setup_weights, has_setup_weights
    except ImportError as exc:
        raise ModelLoadError(
            f"{module.__file__} uses Cog: install it with pip install '.[cog]' ({exc})"
        ) from None
    target = getattr(module, attr)
    with warnings.catch_warnings():
        # BasePredictor and predict() are deprecated in Cog 0.23 (for
        # BaseRunner and run()); the seed's model uses them, and they work.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            info = _inspector.create_predictor(module.__name__, attr)
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"{module.__file__}:{attr}: {exc}") from None
    if inspect.isclass(target):
        instance = target()
        method = getattr(instance, "run" if _defines(target, "run") else "predict")

        def setup() -> None:
            if has_setup_weights(instance):
                instance.setup(weights=extract_setup_weights(instance))
            else:
                instance.setup()
    else:
        method = target

        def setup() -> None:
            pass

    files = {
        field_name
        for field_name, field in info.inputs.items()
        if field.type.primitive in (_adt.PrimitiveType.PATH, _adt.PrimitiveType.FILE)
    }

    def prepare(raw: dict[str, Any]) -> tuple[dict[str, Any], list[pathlib.Path]]:
        """Cog's own normalizing and checks, then each file input as a
        temporary file; returns the keyword arguments and those files."""
        for field_name in files & raw.keys():
            _only_data_uris(field_name, raw[field_name])
        kwargs = _inspector.check_input(info.inputs, raw)
        made: list[pathlib.Path] = []
        for field_name in files & kwargs.keys():
            kwargs[field_name] = _local_files(kwargs[field_name], made)
        return kwargs, made

    streams = info.output.kind in (_adt.OutputKind.ITERATOR, _adt.OutputKind.CONCAT_ITERATOR)
    predict = _predict_function(method, prepare, streams)
    adapter = types.SimpleNamespace(setup=setup, predict=predict)
    return Model(
        name,
        adapter,
        input_schema=_input_schema(info, files),
        output_schema=info.output.json_type(),
        concurrency=_concurrency(module),
    )


def _concurrency(module: types.ModuleType) -> int:
    """How many predictions a Cog predictor runs at once: ``concurrency.max``
    of the ``cog.yaml`` beside its file, else 1, as under Cog."""
    assert module.__file__ is not None
    config = pathlib.Path(module.__file__).parent / "cog.yaml"
    if not config.is_file():
        return 1
    import yaml  # Cog's own dependency

    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{config}: not YAML ({exc})") from None
    value = (data.get("concurrency") or {}).get("max", 1) if isinstance(data, dict) else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelLoadError(f"{config}: concurrency.max must be a whole number from 1 up")
    return value


def _defines(cls: type, method: str) -> bool:
    """Whether the user's class (not Cog's bases) defines *method*."""
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] == "cog":
            return False
        if method in vars(klass):
            return True
    return False


def _predict_function(
    method: Callable[..., Any],
    prepare: Callable[[dict[str, Any]], tuple[dict[str, Any], list[pathlib.Path]]],
    streams: bool,
) -> Callable[..., Any]:
    """What the SDK calls: a generator (sync or async) for a streaming
    model, else a function (sync or async). Temporary input files are
    removed when the prediction ends, however it ends. (Four small
    wrappers side by side, one per kind of method, so each reads whole.)"""
    is_async = inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)
    if streams and is_async:

        async def predict_async_stream(**raw: Any) -> AsyncIterator[Any]:
            kwargs, made = await asyncio.to_thread(prepare, raw)
            try:
                result = method(**kwargs)
                if inspect.isawaitable(result):
                    result = await result
                try:
                    async for item in result:
                        yield _encode(item)
                finally:
                    if inspect.isasyncgen(result):
                        await result.aclose()
            finally:
                _remove(made)

        return predict_async_stream
    if streams:

        def predict_stream(**raw: Any) -> Iterator[Any]:
            kwargs, made = prepare(raw)
            try:
                result = method(**kwargs)
                try:
                    for item in result:
                        yield _encode(item)
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
            finally:
                _remove(made)

        return predict_stream
    if is_async:

        async def predict_async(**raw: Any) -> Any:
            kwargs, made = await asyncio.to_thread(prepare, raw)
            try:
                return await asyncio.to_thread(_encode, await method(**kwargs))
            finally:
                _remove(made)

        return predict_async

    def predict_one(**raw: Any) -> Any:
        kwargs, made = prepare(raw)
        try:
            return _encode(method(**kwargs))
        finally:
            _remove(made)

    return predict_one


def _input_schema(info: Any, files: set[str]) -> dict[str, Any]:
    """The JSON Schema of a Cog predictor's inputs, as Cog describes them."""
    from cog import _adt

    optional = (_adt.Repetition.OPTIONAL, _adt.Repetition.OPTIONAL_REPEATED)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field_name, field in sorted(info.inputs.items(), key=lambda item: item[1].order):
        prop = input_property(field_name, field.order) | field.type.json_type()
        if field_name in files:
            data_uri = {"type": "string", "format": "uri", "pattern": "^data:"}
            if prop.get("type") == "array":
                prop["items"] = data_uri
            else:
                prop |= data_uri
        if field.description is not None:
            prop["description"] = field.description
        integer = field.type.primitive is _adt.PrimitiveType.INTEGER
        for key, bound in (("minimum", field.ge), ("maximum", field.le)):
            if bound is not None:
                prop[key] = int(bound) if integer and float(bound).is_integer() else bound
        for key, value in (
            ("minLength", field.min_length),
            ("maxLength", field.max_length),
            ("pattern", field.regex),
            ("enum", field.choices),
        ):
            if value is not None:
                prop[key] = value
        if field.deprecated:
            prop["deprecated"] = True
        default = field.default
        if dataclasses.is_dataclass(default) or isinstance(default, dataclasses.Field):
            pass  # a default_factory: made per prediction, not a JSON value
        elif default is not None:
            if field.type.primitive is not _adt.PrimitiveType.SECRET:
                prop["default"] = _plain(field.type.json_encode(default))
        elif field.type.repetition not in optional:
            required.append(field_name)
        properties[field_name] = prop
    # Cog ignores unknown fields with a warning; the bridge answers 422 for
    # them, as for any model, before anything runs.
    return input_object(properties, required)


def _plain(value: Any) -> Any:
    """A default as JSON: paths as their text, enums as their value."""
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)


def _only_data_uris(field_name: str, value: Any) -> None:
    for item in value if isinstance(value, list) else [value]:
        if item is not None and not (isinstance(item, str) and item.startswith("data:")):
            raise ValueError(f"{field_name}: file inputs take data: URIs here (no URLs, no paths)")


def _local_files(value: Any, made: list[pathlib.Path]) -> Any:
    """Cog's URLPath (a data URI not yet written) as a temporary file."""
    if isinstance(value, list):
        return [_local_files(v, made) for v in value]
    convert = getattr(value, "convert", None)
    if convert is None:
        return value  # cog.File: already a file object in memory
    path = convert()
    made.append(path)
    return path


def _remove(paths: list[pathlib.Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _encode(value: Any) -> Any:
    """An output value as JSON the bridge can send: files as data URIs."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, pathlib.Path):
        return _data_uri(value)
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    secret = getattr(value, "get_secret_value", None)
    if secret is not None:
        return secret()
    raise TypeError(f"an output of type {type(value).__name__} cannot be sent as JSON")


def _data_uri(path: pathlib.Path) -> str:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(
            f"output file {path.name} is {size} bytes; files go out as data: URIs "
            f"of at most {MAX_FILE_BYTES} bytes"
        )
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
