"""The model SDK: a function or Cog-style class becomes a real gRPC backend."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import grpc
import pytest
import trio

from bridge._proto.v1 import predictor_pb2 as pb
from bridge._proto.v1 import predictor_pb2_grpc
from bridge.backends import wire
from bridge.backends.grpc_loop import GrpcLoop, open_grpc_loop
from bridge.errors import ModelError
from bridge.sdk import Field, Log, Metrics, Model, ModelServer, Predictor
from bridge.sdk.demo import make_models
from bridge.sdk.model import input_schema_for
from tests.helpers import asked


async def collect(grpc_loop: GrpcLoop, target: str, input: dict[str, Any]) -> list[Any]:
    items: list[Any] = []
    async with grpc_loop.predict(target, asked("test", input)) as stream:
        async for batch in stream:
            items.extend(batch)
    return items


def outputs(items: list[Any]) -> list[Any]:
    return [c for i in items if isinstance(i, wire.OutputChunks) for c in i.chunks]


class Words(Predictor):
    """Cog-style: setup once, predict yields."""

    setups = 0

    def setup(self) -> None:
        Words.setups += 1
        self.suffix = "!"

    def predict(self, prompt: str, shout: bool = False) -> Iterator[str]:
        for word in prompt.split():
            yield (word.upper() if shout else word) + self.suffix


async def test_cog_style_predictor() -> None:
    with ModelServer(Model("test/words", Words)) as server:
        async with open_grpc_loop() as grpc_loop:
            info = await grpc_loop.describe(server.target)
            items = await collect(grpc_loop, server.target, {"prompt": "a b", "shout": True})
            assert await grpc_loop.check_health(server.target) == "SERVING"
    assert Words.setups == 1
    assert isinstance(items[0], wire.Started)
    assert outputs(items) == ["A!", "B!"]
    assert info.name == "test/words"
    assert info.input_schema["required"] == ["prompt"]
    assert info.output_schema["x-cog-array-type"] == "iterator"
    assert info.output_schema["x-cog-array-display"] == "concatenate"


async def test_plain_function_logs_metrics_and_json_values() -> None:
    def predict(n: int) -> Iterator[Any]:
        yield Log("starting")
        yield {"n": n, "half": n / 2}
        yield Metrics({"input_token_count": 3})
        yield [1, "two"]

    def total(values: list[int]) -> int:
        return sum(values)

    with ModelServer(Model("test/gen", predict)) as gen, ModelServer(Model("t/sum", total)) as s:
        async with open_grpc_loop() as grpc_loop:
            items = await collect(grpc_loop, gen.target, {"n": 3})
            assert outputs(await collect(grpc_loop, s.target, {"values": [1, 2, 3]})) == [6]
    assert wire.LogLine("starting") in items
    assert wire.MetricsUpdate({"input_token_count": 3.0}) in items
    assert outputs(items) == [{"n": 3, "half": 1.5}, [1, "two"]]


async def test_model_exception_is_grpc_unknown_with_its_message() -> None:
    def predict(prompt: str) -> Iterator[str]:
        yield "one"
        raise ValueError(f"cannot continue {prompt!r}")

    with ModelServer(Model("test/raises", predict)) as server:
        # Seen by a plain gRPC client: status UNKNOWN, the exception's message.
        def call() -> grpc.RpcError:
            with grpc.insecure_channel(server.target) as channel:
                stub = predictor_pb2_grpc.PredictorStub(channel)
                try:
                    list(stub.Predict(wire.predict_request("x", {"prompt": "p"})))
                except grpc.RpcError as exc:
                    return exc
            raise AssertionError("the call succeeded")

        error = await trio.to_thread.run_sync(call)
        assert error.code() is grpc.StatusCode.UNKNOWN
        # (A ValueError's message with its type, as Python's last traceback line.)
        assert error.details() == "ValueError: cannot continue 'p'"
        # Seen through the bridge's adapter: a ModelError with that message.
        async with open_grpc_loop() as grpc_loop:
            with pytest.raises(ModelError, match=r"^ValueError: cannot continue 'p'$"):
                await collect(grpc_loop, server.target, {"prompt": "p"})


class Endless:
    """Counts the tokens it makes and notices when it is closed."""

    def __init__(self) -> None:
        self.made = 0
        self.closed = threading.Event()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_cancellation_reaches_the_generator(kind: str) -> None:
    state = Endless()

    def sync_predict(prompt: str) -> Iterator[str]:
        try:
            while True:
                time.sleep(0.005)
                state.made += 1
                yield prompt
        finally:
            state.closed.set()

    async def async_predict(prompt: str) -> AsyncIterator[str]:
        import asyncio

        try:
            while True:
                await asyncio.sleep(0.005)
                state.made += 1
                yield prompt
        finally:
            state.closed.set()

    model = Model("test/endless", sync_predict if kind == "sync" else async_predict)
    with ModelServer(model) as server:
        async with open_grpc_loop() as grpc_loop:
            received = 0
            async with grpc_loop.predict(server.target, asked("c", {"prompt": "x"})) as stream:
                async for batch in stream:
                    received += len(outputs(batch))
                    if received >= 5:
                        break  # leaving the block cancels the call
            assert grpc_loop.active_calls == 0
            # The model's generator was closed (it never ends by itself).
            assert await trio.to_thread.run_sync(state.closed.wait, 10)
    assert received >= 5


def test_input_schema_from_signature() -> None:
    def predict(
        prompt: str, temperature: float = 0.7, n: int | None = None, stop: list[str] | None = None
    ) -> Iterator[str]:
        yield prompt

    schema = input_schema_for(predict)
    assert schema["required"] == ["prompt"]
    props = schema["properties"]
    assert props["prompt"]["type"] == "string"
    assert props["temperature"] == {
        "title": "Temperature", "x-order": 1, "type": "number", "default": 0.7,
    }  # fmt: skip
    assert props["n"]["type"] == "integer" and "default" not in props["n"]
    assert props["stop"] == {
        "title": "Stop", "x-order": 3, "type": "array", "items": {"type": "string"},
    }  # fmt: skip


def test_fields_describe_inputs_and_their_limits() -> None:
    def predict(
        prompt: Annotated[str, Field("What to say", min_length=1)],
        words: Annotated[int, Field("How many", ge=1, le=500)] = 100,
        mood: Annotated[str | None, Field(choices=("calm", "loud"))] = None,
    ) -> Iterator[str]:
        yield prompt

    props = input_schema_for(predict)["properties"]
    assert props["prompt"] == {
        "title": "Prompt", "x-order": 0, "type": "string", "description": "What to say",
        "minLength": 1,
    }  # fmt: skip
    assert props["words"] == {
        "title": "Words", "x-order": 1, "type": "integer", "description": "How many",
        "minimum": 1, "maximum": 500, "default": 100,
    }  # fmt: skip
    assert props["mood"]["enum"] == ["calm", "loud"] and props["mood"]["type"] == "string"


def test_version_is_stable_and_changes_with_the_schema() -> None:
    def a(prompt: str) -> Iterator[str]:
        yield prompt

    def b(prompt: str, extra: int = 1) -> Iterator[str]:
        yield prompt

    assert Model("t/m", a).info.version == Model("t/m", a).info.version
    assert Model("t/m", a).info.version != Model("t/m", b).info.version
    assert Model("t/m", a, version="v1").info.version == "v1"


def _messages(target: str, input: dict[str, Any]) -> list[list[Any]]:
    """The output chunks of each message of one Predict call, as a plain
    gRPC client sees them."""
    with grpc.insecure_channel(target) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        responses = stub.Predict(wire.predict_request("x", input))
        return [
            item.chunks
            for item in map(wire.stream_item_from_pb, responses)
            if isinstance(item, wire.OutputChunks)
        ]


def _burst_models() -> dict[str, Any]:
    def sync_burst(n: int) -> Iterator[str]:
        for i in range(n):
            yield f"{i} "

    async def async_burst(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield f"{i} "

    return {"sync": sync_burst, "async": async_burst}


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_burst_of_tokens_goes_out_in_few_messages(kind: str) -> None:
    """Tokens yielded while a write is in flight share the next message."""
    with ModelServer(Model("test/burst", _burst_models()[kind])) as server:
        messages = await trio.to_thread.run_sync(_messages, server.target, {"n": 1000})
    assert [c for m in messages for c in m] == [f"{i} " for i in range(1000)]
    assert len(messages) <= 10, [len(m) for m in messages]


def _stream_messages(target: str, inputs: list[dict[str, Any]]) -> list[pb.StreamResponse]:
    """Every message of one Stream call that starts a prediction of each
    of *inputs* (keys 1, 2, ...), read until all have ended."""
    starts = [
        pb.Start(key=key, request=wire.predict_request(f"p{key}", input))
        for key, input in enumerate(inputs, 1)
    ]
    received: list[pb.StreamResponse] = []
    open_keys = set(range(1, len(inputs) + 1))
    done = threading.Event()

    def requests() -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(start=starts)
        done.wait(30)  # half-closing would end the call before they end

    with grpc.insecure_channel(target) as channel:
        call = predictor_pb2_grpc.PredictorStub(channel).Stream(requests())
        for response in call:
            received.append(response)
            open_keys -= {u.key for u in response.updates if u.HasField("end")}
            if not open_keys:
                break
        done.set()
        call.cancel()
    return received


def _texts(messages: list[pb.StreamResponse]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for message in messages:
        for update in message.updates:
            assert not update.end.code, update.end.message
            for response in update.responses:
                text = "".join(c.text for c in response.output.chunks)
                texts[update.key] = texts.get(update.key, "") + text
    return texts


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_a_stream_many_predictions_share_each_message(kind: str) -> None:
    """What every prediction on a Stream yielded during a write goes out
    together: 10 bursts of 200 tokens in far fewer messages than tokens,
    messages carrying several predictions' news."""
    model = Model("test/burst", _burst_models()[kind])
    with ModelServer(model) as server:
        messages = await trio.to_thread.run_sync(_stream_messages, server.target, [{"n": 200}] * 10)
    expected = "".join(f"{i} " for i in range(200))
    assert _texts(messages) == dict.fromkeys(range(1, 11), expected)
    assert len(messages) < 2000 / 10, len(messages)
    assert max(len({u.key for u in m.updates if u.responses}) for m in messages) >= 2


async def test_a_batching_model_s_step_is_one_message() -> None:
    """demo/batch steps 10 predictions together: each step, one emit,
    goes out as one message carrying a token of each."""
    model = make_models()["demo/batch"]
    inputs = [{"prompt": f"s{n}", "max_tokens": 5, "tokens_per_second": 50} for n in range(10)]
    with ModelServer(model) as server:
        messages = await trio.to_thread.run_sync(_stream_messages, server.target, inputs)
    assert _texts(messages) == {key: f"s{key - 1} " * 5 for key in range(1, 11)}
    with_output = [m for m in messages if any(u.responses for u in m.updates)]
    # Five steps (fewer messages if a slow write let two steps share one).
    shapes = [len(m.updates) for m in with_output]
    assert len(with_output) <= 5 and set(shapes) == {10}, shapes


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_lone_token_is_not_held_back(kind: str) -> None:
    """A token followed by a long pause reaches the bridge during the pause."""
    release = threading.Event()

    def sync_slow() -> Iterator[str]:
        yield "first "
        release.wait(30)
        yield "second"

    async def async_slow() -> AsyncIterator[str]:
        import asyncio

        yield "first "
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        yield "second"

    model = Model("test/slow", sync_slow if kind == "sync" else async_slow)
    with ModelServer(model) as server:
        async with (
            open_grpc_loop() as grpc_loop,
            grpc_loop.predict(server.target, asked("s", {})) as s,
        ):
            with trio.fail_after(10):  # the pause is 30 s
                chunks: list[Any] = []
                while not chunks:
                    chunks = outputs(await s.receive_batch())
            assert chunks == ["first "]
            release.set()
            rest = [c async for batch in s for c in outputs(batch)]
    assert rest == ["second"]


class _OneAtATime(Predictor):
    """Counts the predictions running in it at once."""

    def setup(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0

    def predict(self, text: str) -> Iterator[str]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)
            yield text
        finally:
            with self.lock:
                self.now -= 1


def test_concurrency_is_one_for_a_class_none_for_a_function_or_what_is_said() -> None:
    def func(text: str) -> str:
        return text

    assert Model("t/c", _OneAtATime).info.concurrency == 1  # as Cog
    assert Model("t/f", func).info.concurrency == 0  # not said: no limit
    assert Model("t/c", _OneAtATime, concurrency=4).info.concurrency == 4
    described = wire.model_info_from_pb(wire.model_info_to_pb(Model("t/f", func).info))
    assert described.concurrency == 0
    with pytest.raises(ValueError, match="concurrency"):
        Model("t/f", func, concurrency=-1)


async def test_five_predictions_at_once_run_one_after_another(start_bridge: Any) -> None:
    """Seen from the backend: never two at once, and none failed. The
    bridge queues them (the backend said concurrency 1 in Describe); the
    SDK would make any extra wait too."""
    import httpx

    from tests.conftest import create, read_stream

    model = Model("test/one", _OneAtATime)
    with ModelServer(model) as server:
        url = await start_bridge(targets={"test/one": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = [await create(client, "test/one", {"text": str(i)}) for i in range(5)]
            for prediction in made:
                events, _ = await read_stream(client, prediction["urls"]["stream"])
                assert [e.event for e in events] == ["output", "done"]
            statuses = [(await client.get(p["urls"]["get"])).json()["status"] for p in made]
    predictor = model.predict.__self__  # type: ignore[attr-defined]
    assert predictor.most == 1
    assert statuses == ["succeeded"] * 5
