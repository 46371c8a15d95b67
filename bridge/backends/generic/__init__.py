"""Any gRPC service, from its own descriptors: a method of an existing
service bridged as a model, with no adapter (docs/grpc-services.md).

* :mod:`.descriptors`: its types, from .proto files (compiled by protoc),
  a descriptor set, or (:mod:`.reflection`) the service itself; the
  method a model names.
* :mod:`.schema`: a request message type as the JSON Schema of its proto3
  JSON (the model's input schema).
* :mod:`.output`: a response message as the prediction's events (JMESPath
  over its JSON, plain paths read from the message).
* :mod:`.backend`: the :class:`~bridge.backends.interface.Backend` of one
  such model, every RPC shape, on the gRPC loop.
"""
