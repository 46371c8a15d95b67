"""The catalog on the fake backend under Trio's autojump clock: one
Describe per model in flight, answers kept for describe_ttl_seconds and
refreshed in the background, every model described at once."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.testing

from bridge.config import ModelSettings, Settings
from bridge.core.catalog import Catalog
from bridge.errors import BackendUnavailable
from tests.backends import SCRIPTED_INFO
from tests.fakes import FakeBackend, open_fake_backend

NEW = dataclasses.replace(SCRIPTED_INFO, version="v2")


@contextlib.asynccontextmanager
async def open_catalog(**settings: Any) -> AsyncIterator[tuple[Catalog, FakeBackend]]:
    models = {
        name: ModelSettings(name, (target,))
        for name, target in [("test/a", "fake:a"), ("test/b", "fake:b")]
    }
    infos = {"fake:a": SCRIPTED_INFO, "fake:b": SCRIPTED_INFO}
    async with open_fake_backend(infos) as backend, trio.open_nursery() as nursery:
        yield Catalog(Settings(port=0, models=models, **settings), backend, nursery), backend
        nursery.cancel_scope.cancel()


async def test_callers_during_a_describe_share_its_answer(autojump_clock: Any) -> None:
    async with open_catalog() as (catalog, backend):
        backend.describe_seconds = 1.0
        entry = catalog.model("test/a")
        answers = []

        async def ask() -> None:
            answers.append(await catalog.describe(entry))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ask)
        assert answers == [SCRIPTED_INFO] * 5
        assert backend.describe_calls == 1


async def test_an_answer_is_kept_then_asked_again_in_the_background(
    autojump_clock: Any,
) -> None:
    async with open_catalog(describe_ttl_seconds=60.0) as (catalog, backend):
        entry = catalog.model("test/a")
        assert await catalog.info(entry) == SCRIPTED_INFO
        backend.models["fake:a"] = NEW  # redeployed
        await trio.sleep(59)
        assert await catalog.info(entry) == SCRIPTED_INFO
        assert backend.describe_calls == 1
        await trio.sleep(2)
        assert await catalog.info(entry) == SCRIPTED_INFO  # no wait for the new one
        await trio.testing.wait_all_tasks_blocked()
        assert await catalog.info(entry) == NEW
        assert backend.describe_calls == 2


async def test_a_backend_away_leaves_the_last_answer_and_is_not_asked_per_request(
    autojump_clock: Any,
) -> None:
    async with open_catalog(describe_ttl_seconds=60.0, describe_timeout_seconds=2.0) as (
        catalog,
        backend,
    ):
        entry = catalog.model("test/a")
        await catalog.info(entry)
        del backend.models["fake:a"]  # gone
        await trio.sleep(61)
        for _ in range(10):
            assert await catalog.info(entry) == SCRIPTED_INFO
            await trio.testing.wait_all_tasks_blocked()  # its refresh, if any, failed
        assert backend.describe_calls == 2  # one refresh, not ten
        await trio.sleep(2)
        assert await catalog.info(entry) == SCRIPTED_INFO
        await trio.testing.wait_all_tasks_blocked()
        assert backend.describe_calls == 3  # again after describe_timeout_seconds


async def test_a_backend_that_never_answered_has_no_answer(autojump_clock: Any) -> None:
    async with open_catalog(describe_timeout_seconds=2.0) as (catalog, backend):
        del backend.models["fake:a"]
        start = trio.current_time()
        assert await catalog.info(catalog.model("test/a")) is None
        assert trio.current_time() - start == 0  # unreachable answers at once
        backend.describe_seconds = 10.0  # and a slow one is given up on
        assert await catalog.info(catalog.model("test/b")) is None
        assert trio.current_time() - start == 2


async def test_every_model_is_described_at_once(autojump_clock: Any) -> None:
    async with open_catalog() as (catalog, backend):
        backend.describe_seconds = 1.0
        start = trio.current_time()
        await catalog.know_all()
        assert trio.current_time() - start == 1  # not 2
        assert all(entry.info == SCRIPTED_INFO for entry in catalog.models.values())


async def test_callers_sharing_a_describe_that_fails_each_get_their_own_error(
    autojump_clock: Any,
) -> None:
    """One Describe, one failure, raised in every caller as an exception of
    its own (one object raised in several tasks gathers their tracebacks)."""
    async with open_catalog() as (catalog, backend):
        backend.describe_seconds = 1.0
        del backend.models["fake:a"]
        entry = catalog.model("test/a")
        errors: list[BaseException] = []

        async def ask() -> None:
            try:
                await catalog.describe(entry)
            except BackendUnavailable as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ask)
        assert backend.describe_calls == 1
        assert [str(e) for e in errors] == ["model backend unavailable: no connection"] * 3
        assert len({id(e) for e in errors}) == 3


async def test_a_health_check_is_shared_kept_a_second_and_outlives_its_caller(
    autojump_clock: Any,
) -> None:
    """/health's check of every target: callers that come meanwhile share
    it, its answer is used for a second, and a caller that goes (a client
    that hangs up) does not cut it short, or every /health would ask anew."""
    async with open_catalog() as (catalog, backend):
        backend.health_seconds = 0.5
        with trio.move_on_after(0.1):
            await catalog.check_health()  # its caller goes at once
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(catalog.check_health)
        assert backend.health_calls == 2  # one check: each of the two targets once
        assert catalog.model("test/a").health == {"fake:a": "SERVING"}
        await trio.sleep(0.9)
        await catalog.check_health()
        assert backend.health_calls == 2  # within the second
        await trio.sleep(0.2)
        await catalog.check_health()
        assert backend.health_calls == 4


async def test_a_backend_that_reconnected_or_changed_health_is_asked_again_at_once(
    autojump_clock: Any,
) -> None:
    """Within describe_ttl_seconds, a kept answer is used, unless the
    backend's connection was lost since (its process restarted) or its
    health changed: then the next caller gets a new answer."""
    async with open_catalog(describe_ttl_seconds=60.0) as (catalog, backend):
        entry = catalog.model("test/a")
        assert await catalog.info(entry) == SCRIPTED_INFO
        backend.models["fake:a"] = NEW  # redeployed without a reconnect: kept
        assert await catalog.info(entry) == SCRIPTED_INFO
        backend.restart("fake:a", NEW)
        assert await catalog.info(entry) == NEW
        assert await catalog.info(entry) == NEW and backend.describe_calls == 2
        backend.models["fake:a"] = SCRIPTED_INFO
        entry.mark("fake:a", "NOT_SERVING")  # the first known status: no change
        assert await catalog.info(entry) == NEW
        entry.mark("fake:a", "SERVING")
        assert await catalog.info(entry) == SCRIPTED_INFO


async def test_a_changed_backend_that_cannot_answer_is_asked_at_most_every_second(
    autojump_clock: Any,
) -> None:
    """Restarted and not back yet: the kept answer serves, and the
    backend is not asked again by every request meanwhile."""
    async with open_catalog(describe_ttl_seconds=60.0) as (catalog, backend):
        entry = catalog.model("test/a")
        assert await catalog.info(entry) == SCRIPTED_INFO
        backend.restart("fake:a", NEW)
        del backend.models["fake:a"]  # not listening yet
        for _ in range(5):
            assert await catalog.info(entry) == SCRIPTED_INFO
        assert backend.describe_calls == 2
        backend.models["fake:a"] = NEW  # back
        assert await catalog.info(entry) == SCRIPTED_INFO  # within the second
        await trio.sleep(1)
        assert await catalog.info(entry) == NEW
