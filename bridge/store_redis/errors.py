"""Where Redis' errors become the bridge's: the one boundary (as httpcore's
``map_exceptions``). A caller waiting on an answer gets
:class:`~bridge.errors.StoreUnavailable` (503, retry) from
:func:`unavailable`; work in the store's own tasks, tried again later, is
logged once per attempt by :func:`attempt`. No other module of the store
catches them (a test checks); the writer reads the answers of its scripts
(a refusal, a lost lease) call by call, as answers, not as Redis being
away."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import coredis.exceptions

from ..config import ConfigError
from ..errors import StoreUnavailable

__all__ = [
    "REDIS_ERRORS",
    "Attempt",
    "BadStoreUrl",
    "attempt",
    "brief",
    "check_reachable",
    "store_unavailable",
    "unavailable",
]

log = logging.getLogger("bridge.store_redis")

#: Errors that mean Redis could not be reached or answer.
REDIS_ERRORS = (coredis.exceptions.RedisError, OSError)


def brief(exc: BaseException, limit: int = 200) -> str:
    """What went wrong, in at most about *limit* characters: coredis puts a
    failing command's arguments (megabytes of output) in its message."""
    text = str(exc)
    kind = type(exc).__name__
    if "caused error: " in text:  # "Command # n (XADD <payload>) of pipeline caused error: ..."
        text = text.rsplit("caused error: ", 1)[1]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{kind}: {text}"


@contextmanager
def unavailable() -> Iterator[None]:
    """A Redis error in the block is raised as StoreUnavailable."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise store_unavailable(exc) from exc


def store_unavailable(exc: BaseException) -> StoreUnavailable:
    """What a caller waiting on Redis gets for the Redis error *exc*."""
    return StoreUnavailable(f"the prediction store (Redis) cannot be reached: {brief(exc)}; retry")


class Attempt:
    """How an :func:`attempt` went: :attr:`failed` holds the Redis error."""

    failed: BaseException | None = None


@contextmanager
def attempt(what: str) -> Iterator[Attempt]:
    """Try the block; a Redis error in it is logged as "cannot *what*" and
    kept on the attempt, not raised (its caller tries again later)."""
    tried = Attempt()
    try:
        yield tried
    except REDIS_ERRORS as exc:
        log.warning("cannot %s: %s", what, brief(exc))
        tried.failed = exc


class BadStoreUrl(ConfigError):
    """Redis does not answer at ``[store] url`` (wrong, or down for now): a
    configuration error at start, not :class:`~bridge.errors.StoreUnavailable`
    (503), Redis away while the bridge runs."""


async def check_reachable(url: str) -> None:
    """Raise :class:`BadStoreUrl` naming *url* unless Redis answers there."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    try:
        async with client:
            await client.ping()
    except* REDIS_ERRORS as group:
        reason = group.exceptions[0]
        raise BadStoreUrl(f"[store] url: cannot reach Redis at {url}: {reason}") from None
