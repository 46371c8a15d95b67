"""Webhooks: the prediction, POSTed to the creator's URL as it changes.

Each prediction with a ``webhook`` gets one delivery task (in the bridge's
nursery) that follows the prediction's event log like a stream reader, so
a slow or failing receiver never slows the prediction:

* ``start``: once, when the prediction is created;
* ``output`` / ``logs``: the prediction as it is now, at most once per
  ``throttle`` (500 ms) however fast chunks come (changes in between are
  coalesced into the next delivery);
* ``completed``: once it has ended, retried with exponential backoff on a
  connection error, a timeout, 429 or 5xx, for about ``retry_for`` (60 s).

Each attempt renders the prediction as it is then, once it has a
connection slot to its host and its share of ``max_bytes`` (what the
prediction keeps stands for the body's size; a small one needs none): a
delivery that waits, for its turn or between retries, holds no body, and
the bodies held at once are bounded, however many receivers fail or hang.

Where they may go (:class:`WebhookPolicy`): only to public addresses, so a
webhook cannot reach the bridge itself, a loopback or private service, or a
cloud metadata endpoint. A URL is checked at create (every address its host
resolves to; 422 if one is not public) and again at connect time, against
the address actually connected to (so DNS rebinding gains nothing).
``[webhooks] allow_hosts`` names hosts exempt from this, ``allow_private``
lifts it (for development).

Deliveries have their own connection pool, at most ``host_connections``
at a time to one host and short timeouts, so receivers that hang hold up
only their own deliveries, and, once ``max_bytes`` of large bodies wait
on them, other large ones (each for at most the attempt's timeout).

Deliveries are signed as Standard Webhooks (what Replicate's clients
validate): ``webhook-id`` (the same for retries of one delivery),
``webhook-timestamp`` (unix seconds) and ``webhook-signature:
v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` where *key* is the
base64 text after ``whsec_`` in the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import trio

from ._compat.httpx import transport_with_backend
from .backoff import delays
from .core.predictions import Prediction
from .errors import InvalidWebhook
from .validation import EVENTS

__all__ = [
    "EVENTS",
    "WebhookPolicy",
    "WebhookRefused",
    "WebhookSender",
    "load_or_create_secret",
    "open_webhook_client",
    "sign",
    "tenant_secret",
]

log = logging.getLogger(__name__)


#: What is read of a receiver's answer at most; past it, the connection is
#: dropped. Small answers are read whole, so their connection is reused.
ANSWER_BYTES = 4096


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def load_or_create_secret(configured: str | None, path: Path) -> str:
    """The signing secret: *configured* if given, else the one stored at
    *path*, else a new one stored there (mode 0600) for the next start."""
    if configured:
        return configured
    try:
        stored = path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        return stored
    secret = new_secret()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    log.info("generated a webhook signing secret in %s", path)
    return secret


def tenant_secret(secret: str, token: str | None) -> str:
    """The signing secret of the predictions *token* (an auth token, not
    the owner a prediction records) creates: its own, derived from the
    bridge's *secret* (HMAC-SHA256 of the token under the secret's key),
    so stable across restarts and unknown to every other token. Without
    auth (*token* None), *secret* itself."""
    if token is None:
        return secret
    key = base64.b64decode(secret.split("_")[-1])
    derived = hmac.new(key, b"bridge webhook secret\0" + token.encode(), hashlib.sha256)
    return "whsec_" + base64.b64encode(derived.digest()).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    key = base64.b64decode(secret.split("_")[-1])
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookRefused(Exception):
    """A webhook's host is not one deliveries may go to; says why."""


#: IPv6 prefixes whose last 32 bits are an IPv4 address: NAT64's
#: well-known and local-use prefixes (RFC 6052, 8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
#: IPv4-compatible addresses (``::a.b.c.d``, RFC 4291 2.5.5.1): deprecated,
#: and ``::127.0.0.1`` reaches this machine on some stacks.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _public(ip: IPAddress) -> bool:
    """Whether *ip* is a public unicast address, looking through IPv6
    forms that carry an IPv4 address (mapped, 6to4, NAT64); IPv4-compatible
    and site-local (``fec0::/10``, deprecated) IPv6 addresses never are."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _IPV4_COMPATIBLE or ip.is_site_local:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in prefix for prefix in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not _public(embedded):
            return False
    return ip.is_global and not ip.is_multicast


class WebhookPolicy:
    """Where webhooks may be delivered: hosts whose every address is
    public, hosts in *allow_hosts*, and with *allow_private* anywhere."""

    def __init__(
        self,
        allow_hosts: Iterable[str] = (),
        *,
        allow_private: bool = False,
        resolve_timeout: float = 5.0,
    ) -> None:
        self.allow_hosts = frozenset(h.lower().strip("[]") for h in allow_hosts)
        self.allow_private = allow_private
        self.resolve_timeout = resolve_timeout

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for *host*, each one allowed; raises
        :class:`WebhookRefused` if any it resolves to is not (or it does not
        resolve)."""
        host = host.lower().strip("[]")
        try:
            with trio.fail_after(self.resolve_timeout):
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, trio.TooSlowError) as exc:
            raise WebhookRefused(f"webhook host {host} does not resolve ({exc})") from None
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not (self.allow_private or host in self.allow_hosts):
            for address in found:
                if not _public(ipaddress.ip_address(address.partition("%")[0])):
                    raise WebhookRefused(
                        f"webhook host {host} is at {address}, which is not a public "
                        "address (loopback, private, link-local and unspecified ones are "
                        "refused; [webhooks] allow_hosts or allow_private lift this)"
                    )
        return found

    async def check(self, url: str) -> None:
        """Raises :class:`InvalidWebhook` (422) unless webhooks may go to *url*."""
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            await self.addresses(parts.hostname or "", port)
        except (WebhookRefused, ValueError) as exc:
            detail = str(exc)
            raise InvalidWebhook(
                detail, [{"type": "format", "field": "webhook", "description": detail}]
            ) from None


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's Trio backend, connecting only to addresses the policy
    allows, checked when the connection is made."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self.policy = policy
        self.backend = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.policy.addresses(host, port)
        except WebhookRefused as exc:
            raise httpcore.ConnectError(str(exc)) from None
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                # TLS still checks the certificate against *host*: httpcore
                # takes the server name from the URL, not from here.
                return await self.backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are not delivered over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


@asynccontextmanager
async def open_webhook_client(
    policy: WebhookPolicy, *, max_connections: int = 256, request_seconds: float = 5.0
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP client webhooks are delivered with: its own pool, no
    redirects, no proxy from the environment (a proxy would connect for us,
    past the policy), and connections only where *policy* allows."""
    transport = transport_with_backend(
        _CheckedBackend(policy),
        max_connections=max_connections,
        max_keepalive_connections=max_connections // 4,
        keepalive_expiry=5.0,
    )
    async with httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(request_seconds, connect=min(request_seconds, 3.0)),
    ) as client:
        yield client


class _HostSlots:
    """At most *limit* deliveries at once to one host; the others wait."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._hosts: dict[str, tuple[trio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        semaphore, users = self._hosts.setdefault(host, (trio.Semaphore(self.limit), [0]))
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._hosts[host]


#: A body this small needs no share of ``max_bytes``: never held up
#: behind large ones, and bounded anyway by the client's connections
#: (256 of them: 16 MiB).
SMALL_BODY = 64 * 1024


class _ByteBudget:
    """At most *limit* bytes held at once, taken in turn (first come,
    first served); one share larger than the whole goes alone, and one
    of at most :data:`SMALL_BODY` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._turn = trio.Lock()  # fair: the waiters queue here in order
        self._freed = trio.lowlevel.ParkingLot()

    @asynccontextmanager
    async def share(self, size: int) -> AsyncIterator[None]:
        if size <= SMALL_BODY:
            yield
            return
        async with self._turn:
            while self.used and self.used + size > self.limit:
                await self._freed.park()
            self.used += size
        try:
            yield
        finally:
            self.used -= size
            self._freed.unpark_all()


#: How a delivery renders its prediction (as the API answers it).
Render = Callable[[Prediction], Awaitable[bytes]]


class WebhookSender:
    """Delivers webhooks through *client* (see :func:`open_webhook_client`),
    at most *host_connections* at a time to one host, holding at most about
    *max_bytes* of rendered bodies at once. Each prediction's deliveries
    are a task in *nursery* (:meth:`start`), until :meth:`close` gives the
    pending ones a last grace."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        secret: str,
        nursery: trio.Nursery,
        *,
        policy: WebhookPolicy | None = None,
        throttle: float = 0.5,
        retry_for: float = 60.0,
        timeout: float = 5.0,
        host_connections: int = 4,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.client = client
        self.secret = secret
        #: Where deliveries may go (checked at create and at connect).
        self.policy = policy or WebhookPolicy()
        self.throttle = throttle
        self.retry_for = retry_for
        self.timeout = timeout
        self._slots = _HostSlots(host_connections)
        self.budget = _ByteBudget(max_bytes)
        self._nursery = nursery
        self._scopes: set[trio.CancelScope] = set()
        #: Set by :meth:`close`: deliveries started later get only what is left.
        self._closed_by: float | None = None

    def start(
        self,
        prediction: Prediction,
        url: str,
        events_filter: frozenset[str],
        render: Render,
        secret: str,
    ) -> None:
        """Deliver *prediction*'s webhooks to *url* in a task of their own
        (see :meth:`follow`)."""
        follow = partial(self.follow, prediction, url, events_filter, render, secret)
        self._nursery.start_soon(self._delivering, follow)

    async def _delivering(self, follow: Callable[[], Awaitable[None]]) -> None:
        """*follow*, under a scope that :meth:`close` bounds."""
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            if self._closed_by is not None:
                scope.deadline = self._closed_by
            try:
                await follow()
            finally:
                self._scopes.discard(scope)

    def close(self, grace: float) -> None:
        """The bridge is stopping: pending deliveries have *grace* seconds
        more, then they are given up."""
        self._closed_by = trio.current_time() + grace
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._closed_by)

    async def follow(
        self,
        prediction: Prediction,
        url: str,
        events_filter: frozenset[str],
        render: Render,
        secret: str,
    ) -> None:
        """Deliver *prediction*'s webhooks until it has ended and ``completed``
        is delivered (or given up on), signed with *secret* (that of the
        token that created it: :func:`tenant_secret`). Never raises but
        ``Cancelled``."""
        deliver = partial(self._deliver, url, secret, prediction, render)
        try:
            if "start" in events_filter:
                await deliver(retry=False)
            cursor = 0
            last_sent = -float("inf")
            wanted = {"output", "logs"} & events_filter
            while not prediction.done:
                await prediction.events.wait_beyond(cursor)
                new = prediction.events.names(cursor)
                cursor = len(prediction.events)
                if prediction.done or not wanted & new:
                    continue
                # Coalesce: whatever comes during the throttle window goes
                # out with this delivery.
                with trio.move_on_at(last_sent + self.throttle):
                    await prediction.events.wait_closed()
                if prediction.done:
                    break
                cursor = len(prediction.events)
                last_sent = trio.current_time()
                await deliver(retry=False)
            if "completed" in events_filter:
                await deliver(retry=True)
        except Exception:
            log.exception(
                "prediction %s: webhook delivery failed",
                prediction.id,
                extra={"prediction_id": prediction.id},
            )

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST *body*; the answer's status. Of the answer's body at most
        :data:`ANSWER_BYTES` are read: a longer one drops the connection
        (a receiver cannot make the bridge hold what it sends)."""
        async with self.client.stream("POST", url, content=body, headers=headers) as response:
            read = 0
            async for piece in response.aiter_raw():
                read += len(piece)
                if read > ANSWER_BYTES:
                    break  # leaving unread: httpx closes the connection
            return response.status_code

    async def _deliver(
        self,
        url: str,
        secret: str,
        prediction: Prediction,
        render: Render,
        *,
        retry: bool,
    ) -> bool:
        """POST *prediction*; with *retry*, keep trying transient failures
        for ``retry_for`` seconds. True once the receiver answered 2xx."""
        msg_id = "msg_" + secrets.token_hex(16)
        host = urlsplit(url).hostname or ""
        give_up_at = trio.current_time() + self.retry_for
        waits = delays(0.5, 10.0)
        while True:
            async with self._slots.slot(host), self.budget.share(prediction.kept_bytes):
                status = await self._attempt(url, secret, msg_id, await render(prediction))
            if status is not None and 200 <= status < 300:
                return True
            transient = status is None or status == 429 or status >= 500
            wait = next(waits)
            if not (retry and transient) or trio.current_time() + wait > give_up_at:
                log.warning("webhook %s to %s: giving up (status %s)", msg_id, url, status)
                return False
            await trio.sleep(wait)

    async def _attempt(self, url: str, secret: str, msg_id: str, body: bytes) -> int | None:
        """POST *body* once: the receiver's status, or None if it could not
        be reached in ``timeout`` (the body is let go of on return)."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
        }
        with trio.move_on_after(self.timeout):
            try:
                return await self._post(url, body, headers)
            except httpx.HTTPError as exc:
                log.info("webhook %s to %s: %s", msg_id, url, exc)
        return None
