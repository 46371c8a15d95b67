"""Where a bridged service's types come from, and the method a model
names: so far a descriptor set file (``protoc --descriptor_set_out
--include_imports``, what Envoy's transcoder takes). Every problem is
one line naming the file or the method, at startup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from ...config import ConfigError

__all__ = ["MAX_DESCRIPTOR_BYTES", "Method", "find_method", "pool_from_set"]

#: The largest descriptor set read (a real service's, imports included, is
#: kilobytes to a few MiB).
MAX_DESCRIPTOR_BYTES = 16 << 20


@dataclass(frozen=True)
class Method:
    """A method of a service, as a model calls it."""

    descriptor: MethodDescriptor
    #: What gRPC calls it: ``/package.Service/Method``.
    path: str
    client_streaming: bool
    server_streaming: bool


def pool_from_set(path: Path) -> descriptor_pool.DescriptorPool:
    """The types of the descriptor set at *path* (its imports in it too)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DESCRIPTOR_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"descriptor_set {path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise ConfigError(
            f"descriptor_set {path}: larger than {MAX_DESCRIPTOR_BYTES >> 20} MiB; "
            "is it a descriptor set?"
        )
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError:
        raise ConfigError(
            f"descriptor_set {path}: not a descriptor set (make one with protoc "
            "--descriptor_set_out=FILE --include_imports)"
        ) from None
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        try:
            pool.Add(file)
        except (TypeError, ValueError) as exc:  # an import missing, a name twice
            raise ConfigError(
                f"descriptor_set {path}: {file.name}: {exc} (made with --include_imports?)"
            ) from None
    return pool


def find_method(pool: descriptor_pool.DescriptorPool, name: str, where: str) -> Method:
    """The method *name* (``package.Service/Method``) in *pool*; *where*
    says where the types came from, for the error."""
    service_name, slash, method_name = name.partition("/")
    if not slash or not service_name or not method_name or "/" in method_name:
        raise ConfigError(f"method {name!r}: give it as package.Service/Method")
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        raise ConfigError(f"method {name!r}: no service {service_name} in {where}") from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(sorted(service.methods_by_name)) or "none"
        raise ConfigError(
            f"method {name!r}: {service_name} has no method {method_name} (it has: {known})"
        )
    return Method(
        method,
        f"/{service.full_name}/{method.name}",
        method.client_streaming,
        method.server_streaming,
    )
