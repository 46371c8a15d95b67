"""Pages of predictions, newest first: walked by creation order along the
sorted set of every id (or of one owner's), each prediction read as any
other (:meth:`RedisStore.get`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import coredis

from ..core.predictions import Prediction
from ..core.store import Page, parse_cursor
from ..errors import NotFound
from . import codec
from .db import Db

__all__ = ["page"]


async def page(
    db: Db,
    get: Callable[[str], Awaitable[Prediction]],
    cursor: str | None,
    owner: str | None,
    encode: Callable[[Prediction], Awaitable[bytes]],
) -> Page:
    """The page :meth:`~bridge.core.store.PredictionStore.page` describes."""
    client, settings = db.client, db.settings
    index = db.keys.owned(owner) if owner is not None else db.keys.all
    direction, seq = parse_cursor(cursor) if cursor else ("b", None)
    taken: list[tuple[Prediction, bytes]] = []
    size = 0
    # Ids whose record expired are dropped from the index as they are met.
    bound: int | None = seq
    while len(taken) < settings.page_size:
        want = settings.page_size - len(taken)
        if direction == "b":
            upper = f"({bound}" if bound is not None else "+inf"
            found = await client.zrange(
                index, upper, "-inf", sortby=coredis.PureToken.BYSCORE, rev=True,
                offset=0, count=want, withscores=True,
            )  # fmt: skip
        else:
            found = await client.zrange(
                index, f"({bound}", "+inf", sortby=coredis.PureToken.BYSCORE,
                offset=0, count=want, withscores=True,
            )  # fmt: skip
        if not found:
            break
        bound = int(found[-1][1])
        full = False
        for member, _ in found:
            prediction_id = codec.text(member)
            try:
                prediction = await get(prediction_id)
            except NotFound:
                await client.zrem(index, [prediction_id])
                continue
            encoded = await encode(prediction)
            if taken and size + len(encoded) > settings.max_page_bytes:
                full = True
                break
            taken.append((prediction, encoded))
            size += len(encoded)
        if full:
            break
    if not taken:
        return Page([], None, None)
    if direction == "a":
        taken.reverse()
    first, last = taken[0][0].seq, taken[-1][0].seq
    older = await client.zcount(index, "-inf", f"({last}")
    newer = await client.zcount(index, f"({first}", "+inf")
    return Page(
        [encoded for _, encoded in taken],
        f"b{last}" if older else None,
        f"a{first}" if newer else None,
    )
