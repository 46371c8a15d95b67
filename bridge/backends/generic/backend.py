"""A method of any gRPC service as a model's backend: the bridge's
:class:`~bridge.backends.interface.Backend` for one configured model.

Its calls run on the gRPC loop (:class:`~bridge.backends.grpc_loop.GrpcLoop`)
as bridge.v1's ``Predict`` does, with the same stream, credits, deadline
and cancel: only how the call starts and how its messages read differ.

* Input: the prediction's JSON (checked against the request type's schema
  before anything runs), the model's fixed ``input`` fields over it,
  converted by protobuf's own JSON parser (off the event loop if large).
* Every RPC shape: server-streaming, each message as
  :class:`~.output.Output` says; unary, one output; client-streaming, the
  one request then a half-close; bidirectional, the one request, then its
  messages until the stream ends or ``done`` says so, then a cancel.
* The RPC's status ends the prediction as ``Predict``'s does.
* Health: ``grpc.health.v1`` for its service's name, else the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import trio
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.message import Message

from ...config import ConfigError, ModelSettings, Settings
from ...errors import BackendProtocolError, ModelError
from ...offload import INLINE_BYTES
from ..grpc_loop import GrpcLoop, Messages
from ..interface import Metadata, ModelInfo, PredictInput, Started
from ..status import UNDECODABLE, map_rpc_error
from . import reflection
from .descriptors import (
    Method,
    Types,
    find_method,
    types_from_files,
    types_from_protos,
    types_from_set,
)
from .output import Output
from .schema import message_schema, without

__all__ = ["Binding", "ServiceBackend", "bind", "bind_services"]


def bind_services(settings: Settings) -> dict[str, Binding | None]:
    """Every model that names a method, bound to its types from its protos
    or descriptor set (None: its types come by reflection, when its
    backend is first asked). At startup; a :class:`ConfigError` (one line)
    for the first that does not bind."""
    bound: dict[str, Binding | None] = {}
    for name, model in settings.models.items():
        if not model.generic:
            continue
        where = f'[models."{name}"]'
        try:
            if model.protos:
                types = types_from_protos(model.protos, model.proto_path)
            elif model.descriptor_set is not None:
                types = types_from_set(Path(model.descriptor_set))
            else:
                bound[name] = None
                continue
            bound[name] = bind(model, types, _where(model))
        except ConfigError as exc:
            raise ConfigError(f"{where} {exc}") from None
    return bound


@dataclass(frozen=True)
class Binding:
    """A model's method, made ready from its types and its config."""

    method: Method
    request: type[Message]
    response: type[Message]
    output: Output
    #: The model's fixed input fields, by both their names.
    fixed: dict[str, Any]
    info: ModelInfo


def bind(model: ModelSettings, types: Types, where: str) -> Binding:
    """*model*'s method in *types* with its schemas; a :class:`ConfigError`
    (one line) for a method, an ``[output]`` or an ``input`` that does
    not fit them."""
    try:
        return _bind(model, types, where)
    except RecursionError:  # hundreds of message types, each in the last
        raise ConfigError(f"the types in {where} nest too deep to map to JSON") from None


def _bind(model: ModelSettings, types: Types, where: str) -> Binding:
    assert model.method is not None
    method = find_method(types.pool, model.method, where)
    descriptor = method.descriptor
    request = message_factory.GetMessageClass(descriptor.input_type)
    response = message_factory.GetMessageClass(descriptor.output_type)
    output = Output(model.output, descriptor.output_type)
    try:
        json_format.ParseDict(model.input, request())
    except json_format.ParseError as exc:
        raise ConfigError(f'[models."{model.name}".input] {exc}') from None
    fixed = {}
    hidden: set[str] = set()
    for name in model.input:
        field = descriptor.input_type.fields_by_name.get(name) or next(
            f for f in descriptor.input_type.fields if f.json_name == name
        )
        fixed[field.name] = model.input[name]
        # Not the user's to set: the field, and the rest of its oneof.
        siblings = field.containing_oneof.fields if field.containing_oneof else [field]
        hidden |= {n for f in siblings for n in (f.name, f.json_name)}
    schema = without(message_schema(descriptor.input_type, types.notes), hidden)
    info = ModelInfo(
        name=model.name,
        version=types.digest,
        input_schema={**schema, "title": "Input"},
        output_schema=output.schema(method.server_streaming),
    )
    return Binding(method, request, response, output, fixed, info)


class ServiceBackend:
    """The backend of one model that names a method of a gRPC service."""

    def __init__(self, loop: GrpcLoop, model: ModelSettings, binding: Binding | None) -> None:
        assert model.method is not None
        self._loop = loop
        self._model = model
        self._service = model.method.partition("/")[0]
        #: What the model is (:func:`bind_services`'); by reflection, asked
        #: again at each describe.
        self._binding = binding

    @property
    def active_calls(self) -> int:
        return self._loop.active_calls

    async def describe(self, target: str, metadata: Metadata = ()) -> ModelInfo:
        if self._model.reflection:
            ask = partial(reflection.ask, service=self._service, metadata=metadata)
            files = await self._loop.run_on(target, ask)
            # Up to 16 MiB of descriptors: a pool, schemas and a digest to
            # make, in a thread (the event loop serves every stream).
            self._binding = await trio.to_thread.run_sync(self._bind_answer, files)
        assert self._binding is not None
        return self._binding.info

    def _bind_answer(self, files: descriptor_pb2.FileDescriptorSet) -> Binding:
        try:
            types = types_from_files(files, "reflection")
            return bind(self._model, types, "the service's reflection")
        except ConfigError as exc:
            raise BackendProtocolError(f"the service's types do not fit: {exc}") from None

    async def check_health(self, target: str, metadata: Metadata = ()) -> str:
        return await self._loop.check_health(target, metadata, service=self._service)

    def lost_connections(self, target: str) -> int:
        return self._loop.lost_connections(target)

    @contextlib.asynccontextmanager
    async def predict(self, target: str, asked: PredictInput) -> AsyncIterator[Any]:
        binding = self._binding
        if binding is None:  # reflection not answered yet: ask now
            await self.describe(target, tuple(self._model.metadata.items()))
            binding = self._binding
            assert binding is not None
        request = await self._loop.offload(asked.size, _request, binding, asked)
        call = partial(_call, binding, request, asked.metadata)
        async with self._loop.open_stream(target, call) as stream:
            yield stream


def _where(model: ModelSettings) -> str:
    return "its protos" if model.protos else f"descriptor_set {model.descriptor_set}"


def _request(binding: Binding, asked: PredictInput) -> Message:
    document = json.loads(asked.input_json)
    document.update(binding.fixed)
    try:
        return json_format.ParseDict(document, binding.request())
    except json_format.ParseError as exc:  # what the schema let through
        raise ModelError(f"input: {exc}") from None


async def _call(
    binding: Binding,
    request: Message,
    metadata: tuple[tuple[str, str], ...],
    channel: grpc.aio.Channel,
    seconds: float | None,
) -> Messages:
    """On the loop: the call, as the stream's items."""
    method = binding.method
    serialize, deserialize = binding.request.SerializeToString, binding.response.FromString
    call: Any
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(method.path, serialize, deserialize)(
            timeout=seconds, metadata=metadata
        )
    elif method.client_streaming:
        call = channel.stream_unary(method.path, serialize, deserialize)(
            iter((request,)), timeout=seconds, metadata=metadata
        )
    elif method.server_streaming:
        call = channel.unary_stream(method.path, serialize, deserialize)(
            request, timeout=seconds, metadata=metadata
        )
    else:
        call = channel.unary_unary(method.path, serialize, deserialize)(
            request, timeout=seconds, metadata=metadata
        )
    output = binding.output
    try:
        if method.client_streaming and method.server_streaming:
            await call.write(request)  # and the stream stays open
        await call.initial_metadata()
        if not call.done() or await call.code() is grpc.StatusCode.OK:
            yield Started()
        if not method.server_streaming:
            response = await call
            if response is None:  # grpc.aio could not decode it (and logged why)
                raise BackendProtocolError(UNDECODABLE)
            items, _ = await _read(output, response)
            for item in items:
                yield item
            return
        async for response in call:
            if response is None:  # grpc.aio could not decode it (and logged why)
                raise BackendProtocolError(UNDECODABLE)
            items, last = await _read(output, response)
            for item in items:
                yield item
            if last:
                return  # and the call is cancelled: the service sees it
    except grpc.RpcError as exc:
        raise map_rpc_error(exc, method.path) from None
    finally:
        call.cancel()  # explicit; a no-op once the call has ended


async def _read(output: Output, response: Message) -> tuple[list[Any], bool]:
    """*response*'s items; made in a worker thread when its JSON is needed
    and the message is large (so the loop, Trio's too, never stalls)."""
    if output.needs_json and response.ByteSize() > INLINE_BYTES:
        return await asyncio.to_thread(output.items, response)
    return output.items(response)
