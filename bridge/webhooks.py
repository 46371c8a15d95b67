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
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from .predictions import Prediction

__all__ = ["EVENTS", "WebhookSender", "load_or_create_secret", "sign"]

log = logging.getLogger(__name__)

EVENTS = ("start", "output", "logs", "completed")


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


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    key = base64.b64decode(secret.split("_")[-1])
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSender:
    """Delivers webhooks through one shared HTTP client."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        secret: str,
        *,
        throttle: float = 0.5,
        retry_for: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.secret = secret
        self.throttle = throttle
        self.retry_for = retry_for
        self.timeout = timeout

    async def follow(
        self,
        prediction: Prediction,
        url: str,
        events: frozenset[str],
        render: Callable[[Prediction], bytes],
    ) -> None:
        """Deliver *prediction*'s webhooks until it has ended and ``completed``
        is delivered (or given up on). Never raises but ``Cancelled``."""
        try:
            if "start" in events:
                await self._deliver(url, render(prediction), retry=False)
            cursor = 0
            last_sent = -float("inf")
            wanted = {"output", "logs"} & events
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
                await self._deliver(url, render(prediction), retry=False)
            if "completed" in events:
                await self._deliver(url, render(prediction), retry=True)
        except Exception:
            log.exception(
                "prediction %s: webhook delivery failed",
                prediction.id,
                extra={"prediction_id": prediction.id},
            )

    async def _deliver(self, url: str, body: bytes, *, retry: bool) -> bool:
        """POST *body*; with *retry*, keep trying transient failures for
        ``retry_for`` seconds. True once the receiver answered 2xx."""
        msg_id = "msg_" + secrets.token_hex(16)
        give_up_at = trio.current_time() + self.retry_for
        backoff = 0.5
        while True:
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self.secret, msg_id, timestamp, body),
            }
            status = None
            with trio.move_on_after(self.timeout):
                try:
                    response = await self.client.post(url, content=body, headers=headers)
                    status = response.status_code
                except httpx.HTTPError as exc:
                    log.info("webhook %s to %s: %s", msg_id, url, exc)
            if status is not None and 200 <= status < 300:
                return True
            transient = status is None or status == 429 or status >= 500
            if not (retry and transient) or trio.current_time() + backoff > give_up_at:
                log.warning("webhook %s to %s: giving up (status %s)", msg_id, url, status)
                return False
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
