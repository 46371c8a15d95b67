"""httpx's transport with a connection pool of ours (a private attribute:
``httpx.AsyncHTTPTransport._pool``, pinned by tests/test_compat.py).

httpx takes no network backend, and the webhook client needs one (each
connection checked against the webhook policy as it is made), so the
transport's pool is made again with it: the transport goes on mapping
requests, responses and errors as httpx does.
"""

from __future__ import annotations

import httpcore
import httpx

__all__ = ["transport_with_backend"]


def transport_with_backend(
    network_backend: httpcore.AsyncNetworkBackend,
    *,
    max_connections: int,
    max_keepalive_connections: int,
    keepalive_expiry: float,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport (no proxy from the environment) whose connections
    are made by *network_backend*."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry,
        network_backend=network_backend,
    )
    return transport
