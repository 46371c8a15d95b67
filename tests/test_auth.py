"""Bearer tokens, per-token isolation, and CORS."""

from __future__ import annotations

import hmac
from collections import Counter
from typing import Any

import httpx
import pytest
import trio

from bridge.backends.grpc_loop import GrpcLoop
from bridge.core import catalog as catalog_module
from tests.conftest import StartBridge, create, read_stream
from tests.helpers import assert_problem

ALICE = {"Authorization": "Bearer r8_alice"}
BOB = {"Authorization": "Bearer r8_bob"}


@pytest.fixture
async def url(start_bridge: StartBridge) -> str:
    return await start_bridge(
        auth_tokens=frozenset({"r8_alice", "r8_bob"}),
        cors_allow_origins=("http://app.example",),
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "r8_alice"},
        {"Authorization": "Basic r8_alice"},
        {"Authorization": "Bearer r8_alic"},  # a prefix of a token
        {"Authorization": "Bearer r8_alice2"},  # a token and more
        {"Authorization": "Bearer r8_alice r8_bob"},
        {"Authorization": "Bearer R8_ALICE"},
    ],
)
async def test_no_valid_token_is_401(url: str, headers: dict) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        for method, path in [
            ("POST", "/v1/predictions"),
            ("GET", "/v1/predictions"),
            ("GET", "/v1/predictions/x"),
            ("GET", "/v1/models/demo/echo"),
            ("GET", "/v1/webhooks/default/secret"),
            ("GET", "/metrics"),
        ]:
            response = await client.request(method, path, json={})
            assert_problem(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_each_token_sees_only_its_own(url: str) -> None:
    async with (
        httpx.AsyncClient(base_url=url, headers=ALICE) as alice,
        httpx.AsyncClient(base_url=url, headers=BOB) as bob,
        httpx.AsyncClient(base_url=url) as anyone,
    ):
        mine = await create(alice, "demo/echo", {"prompt": "private words"})
        theirs = await create(bob, "demo/echo", {"prompt": "other words"})
        assert (await alice.get(mine["urls"]["get"])).status_code == 200
        assert_problem(await bob.get(mine["urls"]["get"]), 404)
        assert_problem(await bob.post(mine["urls"]["cancel"]), 404)
        listed = (await bob.get("/v1/predictions")).json()["results"]
        assert [p["id"] for p in listed] == [theirs["id"]]
        # The stream URL needs no token (an EventSource cannot send one): its
        # id is the secret, 130 random bits.
        events, _ = await read_stream(anyone, mine["urls"]["stream"])
        assert "".join(e.data for e in events if e.event == "output") == "private words"
        assert (await alice.get(mine["urls"]["get"])).json()["status"] == "succeeded"
        # Replicate's older "Token" scheme works too.
        legacy = {"Authorization": "Token r8_alice"}
        assert (await anyone.get(mine["urls"]["get"], headers=legacy)).status_code == 200


async def test_each_token_pages_through_its_own_newest_first(start_bridge: StartBridge) -> None:
    url = await start_bridge(auth_tokens=frozenset({"r8_alice", "r8_bob"}), page_size=2)
    async with (
        httpx.AsyncClient(base_url=url, headers=ALICE) as alice,
        httpx.AsyncClient(base_url=url, headers=BOB) as bob,
    ):
        ids: dict[str, list[str]] = {"alice": [], "bob": []}
        for i in range(7):  # interleaved: alice, bob, bob, alice, bob, bob, alice
            who, client = ("alice", alice) if i % 3 == 0 else ("bob", bob)
            ids[who].append((await create(client, "demo/echo", {"prompt": f"p{i}"}))["id"])
        for who, client in (("alice", alice), ("bob", bob)):
            pages, next_url = [], "/v1/predictions"
            while next_url:
                page = (await client.get(next_url)).json()
                pages.append([p["id"] for p in page["results"]])
                next_url, previous = page["next"], page["previous"]
            newest_first = ids[who][::-1]
            assert pages == [newest_first[i : i + 2] for i in range(0, len(newest_first), 2)]
            assert previous is not None or len(pages) == 1
            if previous:
                back = (await client.get(previous)).json()
                assert [p["id"] for p in back["results"]] == pages[-2]


async def test_cors_for_allowed_origins(url: str) -> None:
    origin = {"Origin": "http://app.example"}
    async with httpx.AsyncClient(base_url=url) as client:
        preflight = await client.options(
            "/v1/predictions",
            headers=origin
            | {
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"

        created = await client.post(
            "/v1/models/demo/echo/predictions",
            headers=origin | ALICE,
            json={"input": {"prompt": "cross origin"}},
        )
        assert created.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "Origin" in created.headers["Vary"]
        # An EventSource with withCredentials from that origin.
        async with client.stream(
            "GET",
            created.json()["urls"]["stream"],
            headers=origin | {"Accept": "text/event-stream", "Cookie": "session=1"},
        ) as stream:
            assert stream.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert stream.headers["Access-Control-Allow-Credentials"] == "true"
            assert b"event: done" in await stream.aread()

        other = {"Origin": "http://evil.example"}
        refused = await client.options(
            "/v1/predictions", headers=other | {"Access-Control-Request-Method": "POST"}
        )
        assert "Access-Control-Allow-Origin" not in refused.headers
        plain = await client.get("/health", headers=other)
        assert "Access-Control-Allow-Origin" not in plain.headers


async def test_stream_urls_answer_any_origin_by_default(start_bridge: StartBridge) -> None:
    """No [cors] at all: stream URLs still answer any page's EventSource,
    with credentials; the rest of the API answers no other origin."""
    url = await start_bridge()
    origin = {"Origin": "http://anywhere.example"}
    async with httpx.AsyncClient(base_url=url) as client:
        prediction = await create(client, "demo/echo", {"prompt": "capability"})
        async with client.stream(
            "GET", prediction["urls"]["stream"], headers=origin | {"Cookie": "s=1"}
        ) as stream:
            assert stream.headers["Access-Control-Allow-Origin"] == "http://anywhere.example"
            assert stream.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Origin" in stream.headers["Vary"]
            assert b"event: done" in await stream.aread()
        preflight = await client.options(
            prediction["urls"]["stream"],
            headers=origin | {"Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://anywhere.example"
        for path in ("/v1/predictions", prediction["urls"]["get"]):
            assert (
                "Access-Control-Allow-Origin"
                not in (await client.get(path, headers=origin)).headers
            )


async def test_star_never_reflects_origins_with_credentials(start_bridge: StartBridge) -> None:
    url = await start_bridge(
        auth_tokens=frozenset({"r8_alice"}), cors_allow_origins=("*", "http://app.example")
    )
    async with httpx.AsyncClient(base_url=url, headers=ALICE) as client:
        anyone = await client.get("/v1/predictions", headers={"Origin": "http://evil.example"})
        assert anyone.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in anyone.headers
        listed = await client.get("/v1/predictions", headers={"Origin": "http://app.example"})
        assert listed.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert listed.headers["Access-Control-Allow-Credentials"] == "true"


async def test_only_the_stream_route_is_exempt_from_tokens(url: str) -> None:
    """A path that merely ends in /stream is not a stream URL."""
    async with httpx.AsyncClient(base_url=url) as client:
        for path in ("/v1/models/demo/echo/versions/stream", "/v1/predictions/stream"):
            assert_problem(await client.get(path), 401)


async def test_tokens_are_compared_in_constant_time_with_every_token(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request compares what it sent with each configured token,
    with hmac.compare_digest, whether it matches the first, the last or
    none: how long the check takes says nothing of the tokens."""
    tokens = {"r8_alice", "r8_bob", "r8_carol"}
    url = await start_bridge(auth_tokens=frozenset(tokens))
    compared: list[bytes] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return hmac_compare(a, b)

    hmac_compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    async with httpx.AsyncClient(base_url=url) as client:
        for sent, status in [("r8_alice", 200), ("r8_carol", 200), ("r8_zed", 401)]:
            compared.clear()
            response = await client.get(
                "/v1/predictions", headers={"Authorization": f"Bearer {sent}"}
            )
            assert response.status_code == status
            # (The check runs once before the route and once in it.)
            counts = Counter(compared)
            assert set(counts) == {t.encode() for t in tokens}
            assert len(set(counts.values())) == 1


@pytest.mark.parametrize(
    ("settings", "metrics_with", "refused"),
    [
        ({}, [{}], []),  # no auth: open, as the API
        ({"auth_tokens": frozenset({"r8_alice"})}, [ALICE], [{}]),
        (
            {"auth_tokens": frozenset({"r8_alice"}), "metrics_token": "m_scraper"},
            [{"Authorization": "Bearer m_scraper"}],
            [{}, ALICE],  # the API's tokens are not the metrics token
        ),
        ({"metrics_token": "m_scraper"}, [{"Authorization": "Bearer m_scraper"}], [{}]),
    ],
    ids=["no-auth", "auth-tokens", "metrics-token", "metrics-token-only"],
)
async def test_metrics_take_their_token_or_the_api_s(
    start_bridge: StartBridge, settings: dict, metrics_with: list, refused: list
) -> None:
    url = await start_bridge(**settings)
    async with httpx.AsyncClient(base_url=url) as client:
        for headers in metrics_with:
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 200, response.text
            assert "bridge_predictions_active" in response.text
        for headers in refused:
            assert_problem(await client.get("/metrics", headers=headers), 401)
        if "metrics_token" in settings:  # it opens /metrics, nothing else
            scraper = {"Authorization": f"Bearer {settings['metrics_token']}"}
            answer = await client.get("/v1/predictions", headers=scraper)
            assert answer.status_code == (401 if "auth_tokens" in settings else 200)
        assert (await client.get("/health")).status_code == 200  # probes need no token


@pytest.mark.parametrize(
    ("settings", "detail_with"),
    [
        ({}, None),  # no auth: open, as the API
        ({"auth_tokens": frozenset({"r8_alice"})}, [ALICE]),
        (
            {"auth_tokens": frozenset({"r8_alice"}), "metrics_token": "m_scraper"},
            [ALICE, {"Authorization": "Bearer m_scraper"}],
        ),
    ],
    ids=["no-auth", "auth-tokens", "metrics-token"],
)
async def test_health_names_models_and_backends_only_to_a_token(
    start_bridge: StartBridge, settings: dict, detail_with: list | None
) -> None:
    """With tokens, /health listed every model and backend address to
    anyone; a probe without a token now gets status and readiness only."""
    url = await start_bridge(**settings)
    async with httpx.AsyncClient(base_url=url) as client:
        for headers in [{}, ALICE, BOB, {"Authorization": "Bearer m_scraper"}]:
            answer = await client.get("/health", headers=headers)
            assert answer.status_code == 200  # probes need no token
            body = answer.json()
            assert body["status"] == "ok" and body["ready"] is True
            if detail_with is None or headers in detail_with:
                assert body["models"]["demo/echo"] == "SERVING"
                assert "127.0.0.1:" in next(iter(body["targets"]["demo/echo"]))
            else:
                assert set(body) == {"status", "ready"}, body


async def test_health_asks_each_backend_about_once_a_second(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each /health asked every backend for its gRPC health: a loop of
    requests was a loop of gRPC calls on every backend. Now a check
    answers every /health for a second (here: until told otherwise);
    callers meanwhile share it."""
    asked: Counter[str] = Counter()
    real = GrpcLoop.check_health

    async def counted(self: GrpcLoop, target: str, *args: Any, **kwargs: Any) -> str:
        asked[target] += 1
        return await real(self, target, *args, **kwargs)

    monkeypatch.setattr(GrpcLoop, "check_health", counted)
    monkeypatch.setattr(catalog_module, "HEALTH_MAX_AGE", 3600)
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(client.get, "/health")
        targets = len(asked)
        assert targets and set(asked.values()) == {1}  # twenty at once: one check
        for _ in range(20):
            assert (await client.get("/health")).json()["ready"] is True
        assert set(asked.values()) == {1}  # all within its age
        monkeypatch.setattr(catalog_module, "HEALTH_MAX_AGE", 0)
        await client.get("/health")
        assert set(asked.values()) == {2} and len(asked) == targets
