"""The model backends, from the bridge's side: the interface the core uses
(``interface``), the gRPC implementation of it (``grpc_loop``: every call
on one asyncio loop), and the wire codec both sides of the wire share
(``protocol``: protobuf to plain Python and back)."""
