"""HTTP headers, parsed by pure functions (each tested by a table in
tests/test_headers.py): what a request asks for and who sends it."""

from __future__ import annotations

import hmac
import re

from ..errors import BadRequest, Unauthorized

__all__ = [
    "CANCEL_AFTER_RANGE",
    "bearer_token",
    "cancel_after",
    "check_host",
    "cors_origin",
    "prefer_wait",
]

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?(?=$|[,;\s])", re.IGNORECASE)


def prefer_wait(header: str | None, longest: float) -> float | None:
    """Seconds asked for by ``Prefer: wait`` / ``wait=N``, at least 1 and at
    most *longest*; None if the header asks for no wait."""
    match = _PREFER_WAIT.search(header or "")
    if match is None:
        return None
    digits = match[1].lstrip("0") if match[1] else None
    # More digits than any wait needs is the longest (int() of thousands
    # of digits raises, and costs quadratic time).
    seconds = longest if digits is None or len(digits) > 9 else int(digits or 0)
    return float(min(max(seconds, 1), longest))


_DURATION = re.compile(
    r"(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9}(?:\.\d{1,6})?)s)?", re.IGNORECASE
)

#: What ``Cancel-After`` may ask for: at least a second, at most a day.
CANCEL_AFTER_RANGE = (1.0, 86400.0)


def cancel_after(header: str | None) -> float | None:
    """Seconds from ``Cancel-After`` (``30s``, ``5m``, ``1h30m``, ``90``:
    hours, minutes and seconds, or plain seconds); None if absent. Raises
    :class:`BadRequest` for anything else, or out of range."""
    if header is None:
        return None
    text = header.strip()
    plain = re.fullmatch(r"\d{1,9}(?:\.\d{1,6})?", text)
    parts = None if plain else _DURATION.fullmatch(text)
    if plain:
        seconds = float(text)
    elif parts is not None and text:
        hours, minutes, secs = (float(p) if p else 0.0 for p in parts.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise BadRequest(
            f"Cancel-After {header[:40]!r} is not a duration: write seconds (90) or "
            "hours, minutes and seconds (30s, 5m, 1h30m)"
        )
    low, high = CANCEL_AFTER_RANGE
    if not low <= seconds <= high:
        raise BadRequest(
            f"Cancel-After must be from {low:g} s to {high:g} s (24h); {header[:40]!r} "
            f"is {seconds:g} s"
        )
    return seconds


#: A Host header: a name, an IPv4 address or a bracketed IPv6 one, and an
#: optional port (RFC 9110 7.2, RFC 3986 3.2.2).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::([0-9]{1,5}))?")


def check_host(values: list[str], allowed: tuple[str, ...]) -> None:
    """Raise :class:`BadRequest` unless *values* (the request's Host
    headers) are none or empty, or one valid ``host[:port]`` that *allowed* (if any
    are) names: ``example.com`` exactly, ``.example.com`` it and any name
    under it (as Django's ``ALLOWED_HOSTS``)."""
    values = [v for v in values if v]  # an empty Host is none (RFC 9112 3.2)
    if not values:
        return
    match = _HOST.fullmatch(values[0]) if len(values) == 1 else None
    if match is None or (match[2] is not None and int(match[2]) > 65535):
        raise BadRequest(f"Host {values[0][:80]!r} is not a valid host[:port]")
    if not allowed:
        return
    name = match[1].lower().rstrip(".")
    for pattern in allowed:
        if name == pattern.lstrip(".") or (pattern.startswith(".") and name.endswith(pattern)):
            return
    raise BadRequest(f"Host {name!r} is not one this bridge serves ([server] allowed_hosts)")


def bearer_token(authorization: str | None, accepted: list[bytes]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` (or ``Token``)
    header, checked against *accepted*; None when there are none to check
    against. Raises :class:`Unauthorized` for any other header."""
    if not accepted:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    sent = token.strip().encode()
    # Compared in constant time with every configured token (no early
    # exit), so timing tells nothing of how much of a token matched.
    match = False
    for known in accepted:
        match |= hmac.compare_digest(sent, known)
    if scheme.lower() not in ("bearer", "token") or not match:
        raise Unauthorized("send Authorization: Bearer <token> with a valid token")
    return sent.decode()


def cors_origin(
    origin: str | None, allowed: tuple[str, ...], capability: bool
) -> tuple[str, bool] | None:
    """The ``Access-Control-Allow-Origin`` for a request from *origin*, and
    whether credentials are allowed with it; None: no CORS answer.

    A *capability* URL (a stream: 130 random bits, no token) answers any
    origin, reflected with credentials: the seed's ``new EventSource(url,
    {withCredentials: true})`` works from any page. Everything else follows
    *allowed* (``[cors] allow_origins``): a listed origin is reflected with
    credentials; ``"*"`` lets any other origin read answers, as ``*``
    without credentials, never reflected."""
    if not origin:
        return None
    if capability or origin.rstrip("/") in allowed:
        return origin, True
    if "*" in allowed:
        return "*", False
    return None
