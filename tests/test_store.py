"""The store's contract, run against every implementation of
:class:`~bridge.core.store.PredictionStore`: the store kept in memory, the
list-scanning fake of tests/fakes.py, and the store kept in a real Redis.

The bounds on what one process keeps differ by design: a store kept in this
process keeps ended predictions' data within ``max_retained_bytes``, while
the Redis store hands them to Redis (expiry and counts bound them there;
tests/test_redis_store.py checks that side)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import coredis
import pytest
import trio

from bridge.config import Settings
from bridge.core.predictions import Prediction
from bridge.core.store import MemoryStore, PredictionStore
from bridge.errors import NotFound, OutputTooLarge, Overloaded
from bridge.store_redis import RedisStore
from tests.fakes import ListStore

NewStore = Callable[..., PredictionStore]


@pytest.fixture(params=["memory", "list", "redis"])
async def new_store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[NewStore]:
    if request.param != "redis":
        kind = {"memory": MemoryStore, "list": ListStore}[request.param]

        def new(**settings: Any) -> PredictionStore:
            store: PredictionStore = kind(Settings(port=0, **settings))
            return store

        yield new
        return
    client, reader = coredis.Redis.from_url(redis_url), coredis.Redis.from_url(redis_url)
    async with client, reader, trio.open_nursery() as nursery:

        def new_redis(**settings: Any) -> PredictionStore:
            prefix = f"t{uuid.uuid4().hex[:12]}:"
            config = Settings(port=0, store_url=redis_url, store_key_prefix=prefix, **settings)
            store = RedisStore(config, client, reader)
            nursery.start_soon(store.run)  # its writes wait for its lease
            return store

        yield new_redis
        nursery.cancel_scope.cancel()


@pytest.fixture(params=[MemoryStore, ListStore], ids=["memory", "list"])
def new_local_store(request: pytest.FixtureRequest) -> NewStore:
    """A store kept in this process (what it keeps of ended predictions and
    when is its own; Redis' side of that is in tests/test_redis_store.py)."""

    def new(**settings: Any) -> PredictionStore:
        store: PredictionStore = request.param(Settings(port=0, **settings))
        return store

    return new


async def add(store: PredictionStore, owner: str | None = None, size: int = 0) -> Prediction:
    prediction = Prediction(
        model="o/m", version="", input={"x": "x" * size}, owner=owner, events=store.new_log()
    )
    await store.add(prediction)
    return prediction


async def end(store: PredictionStore, prediction: Prediction) -> None:
    prediction.succeed()
    store.ended(prediction)
    await store.flush()


async def ids(store: PredictionStore, cursor: str | None, owner: str | None = None) -> Any:
    async def encode(p: Prediction) -> bytes:
        return p.id.encode()

    page = await store.page(cursor, owner, encode)
    return [r.decode() for r in page.results], page.next, page.previous


async def test_a_prediction_is_found_by_its_id_and_only_by_its_owner(new_store: NewStore) -> None:
    store = new_store()
    mine, anyone = await add(store, owner="me"), await add(store)
    assert await store.get(mine.id) is mine and await store.get(mine.id, "me") is mine
    assert await store.get(anyone.id) is anyone
    for prediction_id, owner in [(mine.id, "you"), ("nope", None), (anyone.id, "me")]:
        with pytest.raises(NotFound, match="not found"):
            await store.get(prediction_id, owner)
    assert anyone.seq > mine.seq


async def test_pages_go_newest_first_and_cursors_walk_both_ways(new_store: NewStore) -> None:
    store = new_store(page_size=3)
    made = [await add(store, owner="me" if i % 2 else None) for i in range(7)]
    newest = [p.id for p in reversed(made)]
    first, older = newest[:3], newest[3:6]
    assert await ids(store, None) == (first, f"b{made[4].seq}", None)
    assert await ids(store, f"b{made[4].seq}") == (older, f"b{made[1].seq}", f"a{made[3].seq}")
    assert await ids(store, f"a{made[3].seq}") == (first, f"b{made[4].seq}", None)
    assert await ids(store, f"b{made[1].seq}") == ([made[0].id], None, f"a{made[0].seq}")
    # Newer than a cursor: the page next to it, not the newest.
    nearest = [made[3].id, made[2].id, made[1].id]
    assert await ids(store, f"a{made[0].seq}") == (nearest, f"b{made[1].seq}", f"a{made[3].seq}")
    mine = [p.id for p in reversed(made) if p.owner == "me"]
    assert await ids(store, None, "me") == (mine, None, None)
    assert await ids(store, None, "nobody") == ([], None, None)


async def test_a_page_holds_max_page_bytes_but_at_least_one(new_store: NewStore) -> None:
    store = new_store(max_page_bytes=100)
    made = [await add(store) for _ in range(3)]

    async def big(p: Prediction) -> bytes:
        return b"x" * 60

    page = await store.page(None, None, big)
    assert len(page.results) == 1 and page.next == f"b{made[2].seq}"

    async def huge(p: Prediction) -> bytes:
        return b"x" * 1000

    assert len((await store.page(None, None, huge)).results) == 1


@pytest.mark.parametrize("cursor", ["x", "b", "c1", "b-1", "b" + "9" * 19, "a1 "])
async def test_a_cursor_no_page_gave_out_is_refused(new_store: NewStore, cursor: str) -> None:
    store = new_store()
    await add(store)
    with pytest.raises(ValueError, match="not one this server gave out"):
        await ids(store, cursor)


async def test_ended_predictions_lose_their_data_then_their_metadata_by_count(
    new_store: NewStore,
) -> None:
    store = new_store(retention_count=1, metadata_retention_count=2)
    made = [await add(store, size=10) for _ in range(4)]
    for prediction in made[:3]:
        await end(store, prediction)
    with pytest.raises(NotFound):
        await store.get(made[0].id)  # past the metadata count
    assert (await store.get(made[1].id)).data_removed  # past the data count
    assert not (await store.get(made[2].id)).data_removed
    assert not made[3].data_removed  # running: kept whatever the counts
    if not isinstance(store, RedisStore):  # which keeps only what it runs
        assert store.kept_bytes == made[2].kept_bytes + made[3].kept_bytes


async def test_ended_predictions_lose_their_data_then_their_metadata_by_age(
    new_local_store: NewStore, autojump_clock: Any
) -> None:
    store = new_local_store(retention_seconds=10, metadata_retention_seconds=20)
    old, running = await add(store, size=10), await add(store, size=10)
    await end(store, old)
    await trio.sleep(9.9)
    assert not (await store.get(old.id)).data_removed
    await trio.sleep(0.2)
    assert (await store.get(old.id)).data_removed and not running.data_removed
    await trio.sleep(9.8)
    assert (await store.get(old.id)).data_removed
    await trio.sleep(0.2)
    with pytest.raises(NotFound):
        await store.get(old.id)
    assert await store.get(running.id) is running


async def test_room_is_made_from_the_earliest_ended_data_or_a_create_is_refused(
    new_local_store: NewStore,
) -> None:
    store = new_local_store(max_retained_bytes=1000)
    first, second = await add(store, size=400), await add(store, size=400)
    await end(store, first)
    await end(store, second)
    third = await add(store, size=400)
    assert first.data_removed and not second.data_removed  # the earliest went
    fourth = await add(store, size=400)
    assert second.data_removed
    with pytest.raises(Overloaded):
        await add(store, size=400)  # the running ones alone fill it
    assert store.kept_bytes == third.kept_bytes + fourth.kept_bytes <= 1000


async def test_output_is_charged_before_it_is_kept(new_local_store: NewStore) -> None:
    store = new_local_store(max_retained_bytes=1000)
    ended, running = await add(store, size=300), await add(store, size=300)
    await end(store, ended)
    store.charge(running, 100, cap=200)
    running.add_log("x" * 92)  # what 100 bytes were charged for
    with pytest.raises(OutputTooLarge):
        store.charge(running, 101, cap=200)  # over its own cap
    store.charge(running, 300, cap=10_000)  # fits once the ended data goes
    assert ended.data_removed
    with pytest.raises(OutputTooLarge):
        store.charge(running, 2000, cap=10_000)  # over what the store may keep
