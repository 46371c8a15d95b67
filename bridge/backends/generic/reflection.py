"""A service's types asked of the service itself: gRPC server reflection,
``grpc.reflection.v1`` and, where a server has only that, ``v1alpha`` (the
same messages under another name; grpcio-reflection serves v1alpha).

The file that defines the service is asked for, then every import not yet
answered, by name, on one stream. What a backend may answer is bounded:
:data:`MAX_FILES` files and :data:`MAX_DESCRIPTOR_BYTES` bytes in all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2 as pb

from ...errors import BackendProtocolError
from ..interface import Metadata
from ..status import map_rpc_error
from .descriptors import MAX_DESCRIPTOR_BYTES

__all__ = ["MAX_FILES", "ask"]

#: Most files one service's types may span, its imports included.
MAX_FILES = 1000

_NOT_HERE = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL)
_PATHS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


async def ask(
    channel: grpc.aio.Channel, service: str, metadata: Metadata = ()
) -> descriptor_pb2.FileDescriptorSet:
    """On the gRPC loop: the files of *service* and all they import, from
    the server's reflection (v1, else v1alpha), asked with *metadata*.
    Raises :class:`PredictionError`: the server's answer, or that it has
    none."""
    for path in _PATHS:
        try:
            return await _ask(channel, path, service, metadata)
        except grpc.RpcError as exc:
            # A server without v1 answers UNIMPLEMENTED, or (when that answer
            # races the request, 10-20% of calls to grpcio's server) the
            # call fails INTERNAL before anything was answered.
            if exc.code() not in _NOT_HERE or path == _PATHS[-1]:
                raise map_rpc_error(exc, "gRPC server reflection") from None
    raise AssertionError("unreachable")


async def _ask(
    channel: grpc.aio.Channel, path: str, service: str, metadata: Metadata
) -> descriptor_pb2.FileDescriptorSet:
    stream = channel.stream_stream(
        path,
        request_serializer=pb.ServerReflectionRequest.SerializeToString,
        response_deserializer=pb.ServerReflectionResponse.FromString,
    )
    call = stream(metadata=metadata or None)
    try:
        await call.write(pb.ServerReflectionRequest(file_containing_symbol=service))
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        asked: set[str] = set()
        size = 0
        waiting = 1  # requests not answered yet
        async for answered in _answers(call):
            waiting -= 1
            for file, raw in answered:
                size += raw
                files.setdefault(file.name, file)
            if size > MAX_DESCRIPTOR_BYTES or len(files) > MAX_FILES:
                raise BackendProtocolError(
                    f"reflection answered more than {MAX_FILES} files or "
                    f"{MAX_DESCRIPTOR_BYTES >> 20} MiB for {service}"
                )
            missing = {name for f in files.values() for name in f.dependency} - set(files)
            if not missing:
                break
            for name in sorted(missing - asked):
                asked.add(name)
                waiting += 1
                await call.write(pb.ServerReflectionRequest(file_by_filename=name))
            if not waiting:  # every file asked for, and some never came
                raise BackendProtocolError(
                    f"reflection did not send {', '.join(sorted(missing))[:200]}"
                )
        else:
            raise BackendProtocolError(f"reflection ended before it described {service}")
    finally:
        call.cancel()
    return descriptor_pb2.FileDescriptorSet(file=_in_import_order(files))


async def _answers(
    call: grpc.aio.StreamStreamCall,
) -> AsyncIterator[list[tuple[descriptor_pb2.FileDescriptorProto, int]]]:
    """The files of each answer, and each one's size in bytes."""
    async for response in call:
        if response is None:
            raise BackendProtocolError("reflection sent a message that cannot be decoded")
        kind = response.WhichOneof("message_response")
        if kind == "error_response":
            error = response.error_response
            said = error.error_message[:200].replace("\n", " ") or error.error_code
            raise BackendProtocolError(f"reflection could not answer: {said}")
        if kind != "file_descriptor_response":
            raise BackendProtocolError(f"reflection answered {kind!r} to a file request")
        try:
            yield [
                (descriptor_pb2.FileDescriptorProto.FromString(raw), len(raw))
                for raw in response.file_descriptor_response.file_descriptor_proto
            ]
        except DecodeError:
            raise BackendProtocolError("reflection sent a file that is not a descriptor") from None


def _in_import_order(
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> list[descriptor_pb2.FileDescriptorProto]:
    """Each file after the files it imports (a pool is built in order); a
    loop of imports, which protoc refuses, is broken anywhere."""
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    placed: set[str] = set()
    for first in sorted(files):
        # Depth first, with a stack of (file, its imports not yet placed):
        # a chain of MAX_FILES imports is no recursion.
        stack = [(first, iter(files[first].dependency))] if first not in placed else []
        on_stack = {first}
        while stack:
            name, imports = stack[-1]
            step = next((d for d in imports if d in files and d not in placed), None)
            if step is not None and step not in on_stack:
                stack.append((step, iter(files[step].dependency)))
                on_stack.add(step)
                continue
            if step is not None:  # an import loop: go on without it
                continue
            stack.pop()
            on_stack.discard(name)
            placed.add(name)
            ordered.append(files[name])
    return ordered
