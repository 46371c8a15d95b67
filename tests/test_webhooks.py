"""Webhooks, delivered to a real HTTP receiver and validated with
Replicate's own validators (Python and JS)."""

from __future__ import annotations

import itertools
import json
import select
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
import trio.testing
from quart import Response, request
from quart_trio import QuartTrio
from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

from bridge import webhooks as webhooks_module
from bridge.core.events import OutputBatch
from bridge.core.predictions import Prediction
from bridge.http.replicate_json import prediction_json
from bridge.webhooks import (
    EVENTS,
    WebhookPolicy,
    WebhookSender,
    new_secret,
    open_webhook_client,
)
from tests.backends import ENV
from tests.conftest import StartBridge, create, poll_until
from tests.helpers import kill_what_is_left, node, rss_bytes, start_run_demo

SECRET = new_secret()
#: The receivers here run on 127.0.0.1, which webhooks may not reach unless
#: allowed.
LOCAL = ("127.0.0.1",)


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: str

    @property
    def prediction(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def completed(self) -> bool:
        return self.prediction["status"] in ("succeeded", "failed", "canceled")


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    fail_completed: int = 0  # answer 500 to this many completed deliveries
    got_completed: trio.Event = field(default_factory=trio.Event)

    async def wait_completed(self) -> None:
        with trio.fail_after(30):
            await self.got_completed.wait()


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    app = QuartTrio("receiver")
    state = Receiver(url="")

    @app.post("/hook")
    async def hook() -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        delivery = Delivery(trio.current_time(), headers, (await request.get_data()).decode())
        state.deliveries.append(delivery)
        if delivery.completed and state.fail_completed > 0:
            state.fail_completed -= 1
            return Response("not now", status=503)
        if delivery.completed:
            state.got_completed.set()
        return Response("", status=204)

    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
    state.url = f"{binds[0]}/hook"
    return state


async def run_with_webhook(
    url: str, receiver: Receiver, input: dict, events: list[str] | None = None
) -> dict:
    """Create a prediction whose webhook is *receiver*; return it once the
    receiver accepted its ``completed`` delivery."""
    body = {"input": input, "webhook": receiver.url}
    if events is not None:
        body["webhook_events_filter"] = events
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/models/demo/echo/predictions", json=body)
        assert response.status_code == 201, response.text
        await receiver.wait_completed()
    return response.json()


async def render(prediction: Prediction) -> bytes:
    return json.dumps(prediction_json(prediction, "http://bridge")).encode()


def validate(delivery: Delivery, secret: str = SECRET) -> None:
    """Raises unless Replicate's Python validator accepts the delivery."""
    Webhooks.validate(
        headers=delivery.headers, body=delivery.body, secret=WebhookSigningSecret(key=secret)
    )


async def test_start_throttled_output_and_completed(
    start_bridge: StartBridge, receiver: Receiver
) -> None:
    url = await start_bridge(webhook_secret=SECRET, webhook_allow_hosts=LOCAL)
    words = " ".join(f"w{i}" for i in range(30))
    prediction = await run_with_webhook(url, receiver, {"prompt": words, "delay_ms": 50})
    deliveries = receiver.deliveries
    for delivery in deliveries:
        validate(delivery)
        assert delivery.prediction["id"] == prediction["id"]
    assert deliveries[0].prediction["status"] == "starting"  # start
    assert deliveries[-1].prediction["status"] == "succeeded"  # completed
    assert "".join(deliveries[-1].prediction["output"]) == words
    middle = deliveries[1:-1]
    # Coalesced: far fewer than one per chunk (how far apart they are is
    # measured in Trio's clock by the next test, not here in real time).
    assert 1 <= len(middle) <= 15
    assert all(d.prediction["output"] or d.prediction["logs"] for d in middle)
    lengths = [len(d.prediction["output"] or []) for d in deliveries]
    assert lengths == sorted(lengths)
    assert len({d.headers["webhook-id"] for d in deliveries}) == len(deliveries)


async def test_output_deliveries_are_throttled(autojump_clock: Any, receiver: Receiver) -> None:
    """One delivery per throttle window however fast output comes, each with
    everything so far: in Trio's virtual clock (the receiver stamps each
    delivery with trio.current_time()), so the gaps are exact on any
    machine."""
    prediction = Prediction(model="demo/echo", version="v1", input={})
    policy = WebhookPolicy(allow_hosts=LOCAL)
    async with open_webhook_client(policy) as client, trio.open_nursery() as nursery:
        sender = WebhookSender(client, SECRET, nursery, throttle=0.5)
        sender.start(prediction, receiver.url, frozenset(EVENTS), render, SECRET)
        for i in range(60):  # 3 s of output, a chunk every 50 ms
            await trio.sleep(0.05)
            prediction.add_output(OutputBatch([f"w{i} "]))
        prediction.succeed()
        await receiver.wait_completed()
    deliveries = receiver.deliveries
    middle = deliveries[1:-1]
    gaps = [b.at - a.at for a, b in itertools.pairwise(middle)]
    assert gaps and all(gap >= 0.5 - 1e-9 for gap in gaps), gaps
    assert 5 <= len(middle) <= 7  # 3 s in windows of 0.5 s
    lengths = [len(d.prediction["output"]) for d in middle]
    assert lengths == sorted(lengths) and lengths[-1] >= 50
    assert len(deliveries[-1].prediction["output"]) == 60


async def test_events_filter_completed_only(start_bridge: StartBridge, receiver: Receiver) -> None:
    url = await start_bridge(webhook_secret=SECRET, webhook_allow_hosts=LOCAL)
    prediction = await run_with_webhook(
        url, receiver, {"prompt": "a b c d", "delay_ms": 100}, ["completed"]
    )
    assert [(d.prediction["id"], d.prediction["status"]) for d in receiver.deliveries] == [
        (prediction["id"], "succeeded")
    ]


async def test_failed_completed_is_retried(start_bridge: StartBridge, receiver: Receiver) -> None:
    receiver.fail_completed = 2
    url = await start_bridge(webhook_secret=SECRET, webhook_allow_hosts=LOCAL)
    prediction = await run_with_webhook(url, receiver, {"prompt": "a b"}, ["completed"])
    completed = [d for d in receiver.deliveries if d.completed]
    assert {d.prediction["id"] for d in completed} == {prediction["id"]}
    assert len(completed) == 3  # 503, 503, then accepted
    assert len({d.headers["webhook-id"] for d in completed}) == 1  # one message, retried
    for delivery in completed:
        validate(delivery)
    assert completed[1].at - completed[0].at >= 0.4  # backoff between tries


async def test_signature_checks(start_bridge: StartBridge, receiver: Receiver) -> None:
    url = await start_bridge(webhook_secret=SECRET, webhook_allow_hosts=LOCAL)
    async with httpx.AsyncClient(base_url=url) as client:
        # The secret the bridge signs with is the one its API hands out.
        assert (await client.get("/v1/webhooks/default/secret")).json() == {"key": SECRET}
    prediction = await run_with_webhook(url, receiver, {"prompt": "sign me"}, ["completed"])
    (delivery,) = receiver.deliveries
    assert delivery.prediction["id"] == prediction["id"]
    validate(delivery)
    with pytest.raises(InvalidSignatureError):
        validate(delivery, new_secret())
    tampered = Delivery(delivery.at, delivery.headers, delivery.body.replace("sign", "SIGN"))
    with pytest.raises(InvalidSignatureError):
        validate(tampered)
    # And the JS client's validateWebhook agrees.
    args = {
        "id": delivery.headers["webhook-id"],
        "timestamp": delivery.headers["webhook-timestamp"],
        "signature": delivery.headers["webhook-signature"],
        "body": delivery.body,
    }
    assert await node(url, "webhook-valid", args | {"secret": SECRET}) == [{"valid": True}]
    assert await node(url, "webhook-valid", args | {"secret": new_secret()}) == [{"valid": False}]


async def test_secret_is_generated_once_and_kept(start_bridge: StartBridge, tmp_path) -> None:
    path = tmp_path / "kept" / "secret"
    keys = []
    for _ in range(2):
        url = await start_bridge(webhook_secret_file=str(path))
        async with httpx.AsyncClient(base_url=url) as client:
            keys.append((await client.get("/v1/webhooks/default/secret")).json()["key"])
    assert keys[0] == keys[1] and keys[0].startswith("whsec_")
    assert path.read_text().strip() == keys[0]
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:9/h",
        "http://localhost/h",
        "http://10.1.2.3/h",
        "http://192.168.0.1/h",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/h",
        "http://[::1]/h",
        "http://[::ffff:127.0.0.1]/h",
        "http://[fd00::1]/h",
        "http://[::127.0.0.1]/h",
        "http://[::7f00:1]/h",
        "http://[::169.254.169.254]/h",
        "http://[::10.0.0.1]/h",
        "http://[fec0::1]/h",
        "http://[feff::1]/h",
        "http://[64:ff9b:1::7f00:1]/h",
        "BRIDGE/v1/models/demo/echo/predictions",
    ],
)
async def test_webhooks_to_non_public_addresses_are_refused(
    start_bridge: StartBridge, target: str
) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/models/demo/echo/predictions",
            json={"input": {"prompt": "x"}, "webhook": target.replace("BRIDGE", url)},
        )
        problem = response.json()
        assert response.status_code == 422, problem
        assert [f["field"] for f in problem["invalid_fields"]] == ["webhook"]
        assert "not a public address" in problem["detail"]
        assert (await client.get("/v1/predictions")).json()["results"] == []


async def test_allow_private_lets_webhooks_reach_local_receivers(
    start_bridge: StartBridge, receiver: Receiver
) -> None:
    url = await start_bridge(webhook_secret=SECRET, webhook_allow_private=True)
    prediction = await run_with_webhook(url, receiver, {"prompt": "here"}, ["completed"])
    assert [d.prediction["id"] for d in receiver.deliveries] == [prediction["id"]]


async def test_the_address_is_checked_again_at_connect_time(receiver: Receiver) -> None:
    """What the create-time check passed is checked again when connecting,
    against the addresses the name resolves to then (DNS rebinding)."""
    body = b'{"status": "starting"}'
    async with open_webhook_client(WebhookPolicy()) as client:
        with pytest.raises(httpx.ConnectError, match="not a public address"):
            await client.post(receiver.url, content=body)
    assert receiver.deliveries == []
    async with open_webhook_client(WebhookPolicy(["127.0.0.1"])) as client:
        assert (await client.post(receiver.url, content=body)).status_code == 204
    assert len(receiver.deliveries) == 1


async def test_receivers_that_hang_delay_no_one_else(
    start_bridge: StartBridge, receiver: Receiver, nursery: trio.Nursery
) -> None:
    """600 predictions whose receiver accepts and never answers; another
    prediction's start and completed still arrive at once.

    What is bounded is the connections open to the hung host at once: each
    attempt gives up after 5 s and closes its connection, and the next
    delivery may then open another. So when a connection arrives, those
    the bridge has closed are no longer counted. On loopback the bridge's
    FIN reaches the kernel before its next SYN, so a closed connection
    already reads as hung up (POLLRDHUP) when its replacement is accepted."""
    held: list[trio.SocketStream] = []
    most_held = 0
    some_held = trio.Event()

    def hung_up(stream: trio.SocketStream) -> bool:
        poller = select.poll()
        poller.register(stream.socket.fileno(), select.POLLRDHUP)
        return bool(poller.poll(0))

    async def hang(stream: trio.SocketStream) -> None:
        nonlocal most_held
        held[:] = [s for s in held if not hung_up(s)] + [stream]
        most_held = max(most_held, len(held))
        if len(held) >= 4:
            some_held.set()
        await trio.sleep_forever()

    (listener,) = await nursery.start(partial(trio.serve_tcp, hang, 0, host="127.0.0.1"))
    hanging = f"http://localhost:{listener.socket.getsockname()[1]}/hook"
    url = await start_bridge(webhook_secret=SECRET, webhook_allow_hosts=("localhost", "127.0.0.1"))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def create_hung(i: int) -> None:
            body = {"input": {"prompt": f"p{i}"}, "webhook": hanging}
            response = await client.post("/v1/models/demo/echo/predictions", json=body)
            assert response.status_code == 201, response.text

        for batch in range(6):
            async with trio.open_nursery() as creates:
                for i in range(100):
                    creates.start_soon(create_hung, batch * 100 + i)
        with trio.fail_after(5):
            await some_held.wait()
        start = trio.current_time()
        body = {"input": {"prompt": "on time"}, "webhook": receiver.url}
        response = await client.post("/v1/models/demo/echo/predictions", json=body)
        assert response.status_code == 201
        with trio.fail_after(10):
            await receiver.got_completed.wait()
        # Its start was not lost waiting for a connection (start is not
        # retried), and came well before a delivery timeout (5 s).
        statuses = [d.prediction["status"] for d in receiver.deliveries]
        assert statuses[0] == "starting" and statuses[-1] == "succeeded"
        assert receiver.deliveries[0].at - start < 4
        # The hung host got its share of connections at once, no more.
        assert most_held <= 4
        # And the API answers meanwhile.
        with trio.fail_after(4):
            await create(client, "demo/echo", {"prompt": "still quick"})


async def test_a_receivers_long_answer_is_not_read(nursery: trio.Nursery) -> None:
    """A receiver answering 2xx with a 10 GB body: the bridge reads a few
    KiB and drops the connection (it read it whole: 1.5 GB of RSS)."""
    sent = 0
    dropped = trio.Event()

    async def flood(stream: trio.SocketStream) -> None:
        nonlocal sent
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        try:
            while True:
                await stream.send_all(b"x" * 65536)
                sent += 65536
        except trio.BrokenResourceError:
            dropped.set()

    (listener,) = await nursery.start(partial(trio.serve_tcp, flood, 0, host="127.0.0.1"))
    url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/hook"
    prediction = Prediction(model="demo/echo", version="v1", input={})
    prediction.succeed()
    async with open_webhook_client(WebhookPolicy(allow_hosts=LOCAL)) as client:
        sender = WebhookSender(client, SECRET, nursery, timeout=30)
        with trio.fail_after(10):
            await sender.follow(prediction, url, frozenset({"completed"}), render, SECRET)
            await dropped.wait()
    # What the kernel's socket buffers took before the bridge hung up.
    assert sent < 32 << 20, sent


async def test_each_token_has_its_own_signing_secret(
    start_bridge: StartBridge, receiver: Receiver
) -> None:
    """With [auth] tokens every token got the same key, so one tenant could
    sign deliveries another tenant's receiver accepts."""
    tokens = ("r8_tenant_a", "r8_tenant_b")
    keys: list[dict[str, str]] = []
    for _ in range(2):  # the same keys after a restart
        url = await start_bridge(
            webhook_secret=SECRET, webhook_allow_hosts=LOCAL, auth_tokens=frozenset(tokens)
        )
        async with httpx.AsyncClient(base_url=url) as client:
            keys.append(
                {
                    token: (
                        await client.get(
                            "/v1/webhooks/default/secret",
                            headers={"Authorization": f"Bearer {token}"},
                        )
                    ).json()["key"]
                    for token in tokens
                }
            )
    assert keys[0] == keys[1]
    a, b = keys[0]["r8_tenant_a"], keys[0]["r8_tenant_b"]
    assert len({a, b, SECRET}) == 3 and a.startswith("whsec_")
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/models/demo/echo/predictions",
            json={"input": {"prompt": "mine"}, "webhook": receiver.url},
            headers={"Authorization": "Bearer r8_tenant_a"},
        )
        assert response.status_code == 201
        await receiver.wait_completed()
    for delivery in receiver.deliveries:
        validate(delivery, a)
        with pytest.raises(InvalidSignatureError):
            validate(delivery, b)


async def test_webhooks_carry_the_urls_the_creating_request_was_given(
    start_bridge: StartBridge, receiver: Receiver
) -> None:
    """Not the address the bridge listens on (with --host 0.0.0.0 that was
    http://0.0.0.0:PORT): the Host the creating request reached it by, as
    in the create's own answer."""
    url = await start_bridge(webhook_secret=SECRET, webhook_allow_hosts=LOCAL)
    body = {"input": {"prompt": "a b"}, "webhook": receiver.url}
    async with httpx.AsyncClient(base_url=url, headers={"Host": "bridge.example:8443"}) as client:
        response = await client.post("/v1/models/demo/echo/predictions", json=body)
        assert response.status_code == 201, response.text
        await receiver.wait_completed()
    answered = response.json()["urls"]["get"]
    assert answered.startswith("http://bridge.example:8443/v1/predictions/")
    assert {d.prediction["urls"]["get"] for d in receiver.deliveries} == {answered}


async def test_deliveries_that_wait_hold_no_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Twelve predictions of 9 MB whose receiver never answers: each
    ``completed`` delivery was rendered at once and held through its 60 s
    of retries, waiting for a connection slot or between attempts (+102 MiB
    beyond what the predictions keep). Now an attempt renders the
    prediction when it has a slot and its share of ``[webhooks]
    max_bytes``, and lets go of the body when it ends."""
    accepted = [0]
    retried = trio.Event()

    async def hang(stream: trio.SocketStream) -> None:
        accepted[0] += 1
        if accepted[0] == 5:  # an attempt timed out (1 s), and a fifth came
            retried.set()
        await trio.sleep_forever()

    (listener,) = await nursery.start(partial(trio.serve_tcp, hang, 0, host="127.0.0.1"))
    hanging = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/hook"
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'[webhooks]\nallow_hosts = ["127.0.0.1"]\ntimeout_seconds = 1\nmax_bytes = {10 << 20}\n'
    )
    # Large blocks are mapped and unmapped as they come and go, so that the
    # bridge's RSS is what it holds, not what its heap once reached.
    env = {**ENV, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    run, url, backend_pid = await start_run_demo("--config", str(config), env=env)
    big = {"prompt": "x" * 1_000_000, "repeat": 8}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def all_ended(count: int) -> None:
                line = f'bridge_predictions_total{{model="demo/echo",status="succeeded"}} {count}.0'

                async def seen() -> bool:
                    return line in (await client.get("/metrics")).text

                await poll_until(seen, within=60)

            async def twelve(body: dict[str, Any]) -> int:
                """RSS grown by twelve predictions of 9 MB made with *body*."""
                before = rss_bytes(run.pid)
                for _ in range(12):
                    response = await client.post("/v1/models/demo/echo/predictions", json=body)
                    assert response.status_code == 201, response.text
                return before

            before = await twelve({"input": big})
            await all_ended(12)
            kept = rss_bytes(run.pid) - before  # what twelve predictions keep
            hooked = {"webhook": hanging, "webhook_events_filter": ["completed"]}
            before = await twelve({"input": big, **hooked})
            await all_ended(24)
            with trio.fail_after(30):
                await retried.wait()
            grown = rss_bytes(run.pid) - before
            print(f"twelve predictions keep +{kept >> 20} MiB; with webhooks +{grown >> 20} MiB")
            assert grown - kept < 30 << 20  # a body at a time (before: +102 MiB)
    finally:
        kill_what_is_left(run, backend_pid)


async def test_the_byte_budget_is_taken_in_turn_and_small_bodies_skip_it(
    autojump_clock: Any,
) -> None:
    """Large shares wait in turn while the budget is held; a small body
    (a prediction that keeps at most 64 KiB) never waits for it."""
    budget = webhooks_module._ByteBudget(10 << 20)
    order = []

    async def deliver(name: str, size: int, seconds: float) -> None:
        async with budget.share(size):
            order.append((name, trio.current_time()))
            await trio.sleep(seconds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver, "hanging", 9 << 20, 5)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(deliver, "large", 2 << 20, 0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(deliver, "small", 60_000, 0)
        nursery.start_soon(deliver, "larger than all", 20 << 20, 0)
    assert order == [("hanging", 0), ("small", 0), ("large", 5), ("larger than all", 5)]
    assert budget.used == 0
