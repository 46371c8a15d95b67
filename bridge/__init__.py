"""A Trio bridge that streams gRPC model backends to the web as server-sent events."""
