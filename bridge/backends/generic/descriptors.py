"""Where a bridged service's types come from, and the method a model
names: .proto files (compiled here by protoc), a descriptor set file
(``protoc --descriptor_set_out --include_imports``, what Envoy's
transcoder takes), or the service's reflection
(:mod:`.reflection`). Every problem is one line naming the file (and
line) or the method, at startup."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from ...config import ConfigError
from .schema import Comments, comments

__all__ = [
    "MAX_DESCRIPTOR_BYTES",
    "Method",
    "Types",
    "find_method",
    "types_from_files",
    "types_from_protos",
    "types_from_set",
]

#: The largest descriptor set read (a real service's, imports included, is
#: kilobytes to a few MiB).
MAX_DESCRIPTOR_BYTES = 16 << 20

#: How long protoc may take on a model's protos.
PROTOC_SECONDS = 60.0


@dataclass(frozen=True)
class Types:
    """A service's types: its files, and the pool built from them."""

    files: descriptor_pb2.FileDescriptorSet
    pool: descriptor_pool.DescriptorPool
    #: Comments of messages and fields, where the files carry source info.
    notes: Comments = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A short hash of the files: the model's version changes with them."""
        data = self.files.SerializeToString(deterministic=True)
        return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Method:
    """A method of a service, as a model calls it."""

    descriptor: MethodDescriptor
    #: What gRPC calls it: ``/package.Service/Method``.
    path: str
    client_streaming: bool
    server_streaming: bool


def types_from_files(files: descriptor_pb2.FileDescriptorSet, where: str) -> Types:
    """The types of *files* (each one's imports before it, or among them);
    *where* names their source, for the error."""
    pool = descriptor_pool.DescriptorPool()
    notes: Comments = {}
    for file in files.file:
        try:
            pool.Add(file)
        except (TypeError, ValueError) as exc:  # an import missing, a name twice
            raise ConfigError(f"{where}: {file.name}: {exc} (its imports included?)") from None
        notes |= comments(file)
    return Types(files, pool, notes)


def types_from_set(path: Path) -> Types:
    """The types of the descriptor set at *path* (its imports in it too)."""
    where = f"descriptor_set {path}"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DESCRIPTOR_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise ConfigError(
            f"{where}: larger than {MAX_DESCRIPTOR_BYTES >> 20} MiB; is it a descriptor set?"
        )
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError:
        raise ConfigError(
            f"{where}: not a descriptor set (make one with protoc "
            "--descriptor_set_out=FILE --include_imports)"
        ) from None
    return types_from_files(files, where)


def well_known_path() -> str:
    """Where grpcio-tools keeps ``google/protobuf/*.proto``: on every
    include path, so the well-known types need no copy."""
    import grpc_tools

    return os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")


def googleapis_path() -> str:
    """Where googleapis-common-protos keeps ``google/api/*.proto`` and
    ``google/rpc/*.proto``: on every include path too (a service's protos
    often import ``google/api/annotations.proto``)."""
    from google.api import field_behavior_pb2

    return str(Path(field_behavior_pb2.__file__).parent.parent.parent)


def types_from_protos(protos: tuple[str, ...], proto_path: tuple[str, ...]) -> Types:
    """*protos* compiled by protoc (grpcio-tools', in a child process)
    with *proto_path* as include paths (none: each file's directory),
    their imports and their comments kept."""
    for proto in protos:
        if not os.access(proto, os.R_OK):
            raise ConfigError(f"protos: cannot read {proto}")
    includes = list(proto_path) or sorted({os.path.dirname(p) or "." for p in protos})
    with tempfile.TemporaryDirectory(prefix="bridge-protos-") as scratch:
        out = Path(scratch) / "types.binpb"
        command = [
            sys.executable, "-m", "grpc_tools.protoc",
            *(f"--proto_path={p}" for p in includes), f"--proto_path={well_known_path()}",
            f"--proto_path={googleapis_path()}",
            "--include_imports", "--include_source_info", f"--descriptor_set_out={out}",
            *protos,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=PROTOC_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(f"protos: protoc took longer than {PROTOC_SECONDS:g} s") from None
        if done.returncode != 0:
            raise ConfigError(f"protos: {_first_error(done.stderr)}")
        return types_from_set(out)


def _first_error(stderr: str) -> str:
    """protoc's first complaint (``file.proto:3:5: Expected ";".``): the
    one that names the file and line; the rest follow from it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[0] if lines else "protoc failed and said nothing"


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
