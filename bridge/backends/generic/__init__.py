"""Any gRPC service, from its own descriptors (issue 32, in progress): a
method of an existing service bridged as a model, with no adapter.

So far: :mod:`.schema`, a request message type as the JSON Schema of its
proto3 JSON (the model's input schema); :mod:`.descriptors`, the types
from a descriptor set and the method a model names."""
