"""What bridge/_compat relies on of other projects' private APIs, pinned
by what it does, not by the text of their source: each test drives the
real code (hypercorn's connections over in-memory streams, h11, Quart-Trio,
httpx's transport, Cog's inspector) and checks the behaviour the bridge
builds on, so an upgrade that changes it fails here, not in production,
and one that only reformats it does not."""

from __future__ import annotations

import socket
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h2.errors
import h2.events
import h11
import pytest
import trio
import trio.testing
from hypercorn.config import Config

from bridge._compat.hypercorn_h2 import BoundedH2
from bridge._compat.hypercorn_tcp import Connection, Protocols, hosted
from bridge.http.heads import head_problem

from .h2_client import H2Client


class _NoAddress:
    """What hypercorn reads of a socket stream's socket: its family and
    addresses (none here: an in-memory stream)."""

    family = socket.AF_UNIX

    def getpeername(self) -> str:
        return ""

    getsockname = getpeername


class _Served:
    """Connections of an app hosted as serve_http hosts it, each over an
    in-memory stream: :meth:`connect` gives the client's end."""

    def __init__(self, host: Any, nursery: trio.Nursery, protocols: Protocols) -> None:
        self._host, self._nursery, self._protocols = host, nursery, protocols
        #: Each connection, and the Trio time its run returned (None: runs).
        self.connections: list[tuple[Connection, list[float]]] = []

    def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        server.socket = _NoAddress()  # type: ignore[attr-defined]
        connection = self._host.connection(server, self._protocols)
        ended: list[float] = []
        self.connections.append((connection, ended))

        async def run() -> None:
            await connection.run()
            ended.append(trio.current_time())

        self._nursery.start_soon(run)
        return client


@asynccontextmanager
async def served(
    app: Any, *, h2c: bool = False, stall_seconds: float = 30.0
) -> AsyncIterator[_Served]:
    config = Config()
    config.keep_alive_timeout = 60
    async with hosted(app, config) as host, trio.open_nursery() as nursery:
        yield _Served(host, nursery, Protocols(h2c, stall_seconds, head_problem))
        await host.terminate()
        nursery.cancel_scope.cancel()


def asgi_app(body: bytes = b"ok") -> tuple[Callable[..., Any], list[str]]:
    """A plain ASGI app answering *body* to every request, and what its
    lifespan saw."""
    lifespan: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                lifespan.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app, lifespan


async def read_all(stream: trio.abc.Stream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_hypercorn_hosts_the_app_as_its_trio_worker_does() -> None:
    """hosted() (Lifespan, WorkerContext, wrap_app): the app's lifespan
    starts before the first connection and ends after the last, and a
    request on a connection is the app's."""
    app, lifespan = asgi_app()
    async with served(app) as server:
        assert lifespan == ["lifespan.startup"]
        client = server.connect()
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_all(client)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"ok" in answer.partition(b"\r\n\r\n")[2]
    assert lifespan == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"505"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\nHost: x\n\n", b"400"),
    ],
    ids=["http2-preface", "two-content-lengths", "bare-lf"],
)
async def test_the_bridges_http11_answers_in_hypercorns_place(
    request_head: bytes, status: bytes
) -> None:
    """TCPServer.run makes its protocol by assigning ``protocol`` (which the
    bridge's Connection turns into its own, with ProtocolWrapper's
    arguments); H11Protocol calls ``_check_protocol`` with each request and
    answers an h11 error with ``_send_error_response(error_status_hint)``;
    the connection then closes (``_close``). Hypercorn's own would switch to
    HTTP/2 on the preface and answer the others 200."""
    app, _ = asgi_app()
    async with served(app) as server:
        client = server.connect()
        await client.send_all(request_head)
        answer = await read_all(client)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer


async def test_h2c_switches_to_the_bridges_bounded_http2() -> None:
    """With h2c on, the prior-knowledge preface makes hypercorn's
    ProtocolWrapper raise H2ProtocolAssumedError to the bridge's switch,
    which makes its own HTTP/2 from the wrapper's attributes."""
    app, _ = asgi_app(b"over h2")
    async with served(app, h2c=True) as server:
        client = H2Client(server.connect(), 65535)
        await client.flush()
        stream_id = await client.get("/")
        events = await client.until(h2.events.StreamEnded, stream_id)
        assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == (
            b"over h2"
        )
        connection, _ = server.connections[0]
        assert type(connection.protocol.protocol) is BoundedH2
        await client.aclose()


async def test_an_http2_reader_that_takes_nothing_is_reset_after_stall_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """H2Protocol keeps a StreamBuffer per stream in ``stream_buffers``,
    made as each stream starts, pushed to by the response and popped as
    the window allows: the bridge's buffer there holds the writer while
    the client's window stays shut, and resets the stream once it has
    taken nothing for stall_seconds."""
    app, _ = asgi_app(b"x" * (1 << 20))
    async with served(app, h2c=True, stall_seconds=7) as server:
        client = H2Client(server.connect(), 0)
        await client.flush()
        start = trio.current_time()
        stream_id = await client.get("/")
        (reset,) = [
            e
            for e in await client.until(h2.events.StreamReset, stream_id)
            if isinstance(e, h2.events.StreamReset)
        ]
        assert reset.error_code == h2.errors.ErrorCodes.CANCEL
        assert 7 <= trio.current_time() - start < 8
        await client.aclose()


async def test_a_client_that_goes_frees_its_connection_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """TCPServer's ``_read_data`` returns at the client's EOF and its
    ``idle_task`` is what would hold the connection for keep_alive_timeout
    (60 s here): the bridge stops it, so the connection ends at once."""
    app, _ = asgi_app()
    async with served(app) as server:
        client = server.connect()
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while not answer.endswith(b"0\r\n\r\n"):  # the end of the chunked body
                answer += await client.receive_some(65536)
        gone_at = trio.current_time()
        await client.aclose()
        _, ended = server.connections[0]
        while not ended:  # noqa: ASYNC110 - the connection's own task says when it ended
            await trio.sleep(0.01)
        assert ended[0] - gone_at < 1


async def test_quart_trio_handles_each_request_in_the_bridges_connection_class() -> None:
    """Quart makes its ``asgi_http_class`` for each request and calls it
    with (receive, send): the bridge's runs the request's when_request_ends
    callbacks, and sends the last message shielded, so that a
    ``Connection: close`` answer closes the connection (Quart-Trio cancels
    the request on http.disconnect, which lands inside that send)."""
    from bridge._compat.quart_trio import App, when_request_ends

    app = App(__name__)
    ended: list[str] = []

    @app.get("/")
    async def index() -> str:
        when_request_ends(lambda: ended.append("/"))
        return "ok"

    async with served(app) as server:
        client = server.connect()
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_all(client)  # the server closed it
    assert answer.startswith(b"HTTP/1.1 200 ") and b"ok" in answer.partition(b"\r\n\r\n")[2]
    assert ended == ["/"]


async def test_httpx_transport_sends_through_the_pool_it_is_given() -> None:
    """bridge/_compat/httpx.py replaces AsyncHTTPTransport._pool: every
    request goes through that pool, whose network backend (here httpcore's
    in-memory one) makes its connections."""
    import httpcore
    import httpx

    from bridge._compat.httpx import transport_with_backend

    backend = httpcore.AsyncMockBackend(
        [b"HTTP/1.1 200 OK\r\n", b"Content-Length: 4\r\n\r\n", b"mock"]
    )
    transport = transport_with_backend(
        backend, max_connections=1, max_keepalive_connections=1, keepalive_expiry=5
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://webhooks.invalid/")
    assert (response.status_code, response.content) == (200, b"mock")


def test_cogs_inspector_describes_a_predictor_as_the_sdk_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bridge/sdk/cog.py reads predictors with cog._inspector and cog._adt
    (private in Cog 0.23): create_predictor's inputs (order, type, bounds,
    choices, defaults, repetition), its output's kind and JSON type, and
    check_input's normalizing and refusals."""
    pytest.importorskip("cog")
    from cog import _adt, _inspector
    from cog.predictor import extract_setup_weights, has_setup_weights

    (tmp_path / "pinned_predictor.py").write_text(
        textwrap.dedent(
            """
            from typing import Iterator, Optional
            from cog import BasePredictor, Input, Path, Secret

            class Predictor(BasePredictor):
                def setup(self) -> None:
                    pass

                def predict(
                    self,
                    prompt: str = Input(description="what to say", min_length=1, regex="^h"),
                    count: int = Input(default=2, ge=1, le=5),
                    mood: str = Input(default="calm", choices=["calm", "loud"]),
                    image: Optional[Path] = Input(default=None),
                    key: Secret = Input(default="s"),
                ) -> Iterator[str]:
                    yield prompt
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import pinned_predictor

        with warnings.catch_warnings():  # BasePredictor and predict(), deprecated in 0.23
            warnings.simplefilter("ignore", DeprecationWarning)
            info = _inspector.create_predictor("pinned_predictor", "Predictor")
        fields = info.inputs
        assert sorted(fields, key=lambda name: fields[name].order) == [
            "prompt", "count", "mood", "image", "key",
        ]  # fmt: skip
        prompt, count, mood, image, key = (
            fields[n] for n in sorted(fields, key=lambda n: fields[n].order)
        )
        assert prompt.type.primitive is _adt.PrimitiveType.STRING
        assert prompt.type.json_type() == {"type": "string"}
        assert (prompt.description, prompt.min_length, prompt.regex) == ("what to say", 1, "^h")
        assert prompt.default is None and prompt.type.repetition is _adt.Repetition.REQUIRED
        assert count.type.primitive is _adt.PrimitiveType.INTEGER
        assert (count.default, count.ge, count.le) == (2, 1, 5)
        assert mood.choices == ["calm", "loud"] and not mood.deprecated
        assert image.type.primitive is _adt.PrimitiveType.PATH
        assert image.type.repetition is _adt.Repetition.OPTIONAL
        assert key.type.primitive is _adt.PrimitiveType.SECRET
        assert count.type.json_encode(3) == 3
        assert info.output.kind is _adt.OutputKind.ITERATOR
        assert info.output.json_type()["type"] == "array"
        assert _inspector.check_input(fields, {"prompt": "hi"})["count"] == 2
        with pytest.raises(ValueError):
            _inspector.check_input(fields, {"prompt": "hi", "count": 9})
        instance = pinned_predictor.Predictor()
        assert not has_setup_weights(instance) and callable(extract_setup_weights)
    finally:
        sys.modules.pop("pinned_predictor", None)


def test_h11_process_error_lets_a_server_answer_then_close() -> None:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert connection.trailing_data == (b"GET / HTTP/1.1\r\nHost: x\r\n", False)
    connection._process_error(connection.their_role)
    assert connection.their_state is h11.ERROR
    connection.send(h11.Response(status_code=400, headers=[("content-length", "0")]))
    connection.send(h11.EndOfMessage())
    assert connection.our_state is h11.MUST_CLOSE


def test_h11_frames_bodies_as_the_chunk_writer_does() -> None:
    """ChunkWriter writes body pieces itself while h11's writer for the
    response is a ChunkedWriter (a chunk each) or an Http10Writer (the
    bytes as they are): the same bytes h11 writes. A body with a
    Content-Length gets neither, so it is always h11's."""
    from h11._writers import ChunkedWriter, Http10Writer

    data = b"event: output\ndata: hi\n\n"
    for version, headers, writer, framed in [
        (b"1.1", [], ChunkedWriter, b"%x\r\n%b\r\n" % (len(data), data)),
        (b"1.0", [], Http10Writer, data),
        (b"1.1", [("content-length", str(len(data)))], None, data),
    ]:
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(b"GET / HTTP/%b\r\nHost: x\r\n\r\n" % version)
        assert type(connection.next_event()) is h11.Request
        connection.send(h11.Response(status_code=200, headers=headers))
        assert connection.our_state is h11.SEND_BODY
        if writer is not None:
            assert type(connection._writer) is writer
        else:
            assert type(connection._writer) not in (ChunkedWriter, Http10Writer)
        assert connection.send(h11.Data(data=data)) == framed


def test_head_problem_waits_for_a_whole_head_and_fed_byte_by_byte_agrees() -> None:
    bad = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"
    for end in range(len(bad)):
        assert head_problem(bad[:end]) is None
    assert head_problem(bad) == "more than one Content-Length"
    assert head_problem(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n") is None


async def test_a_trio_socket_stream_says_when_it_may_not_be_written() -> None:
    """What the direct write relies on: the socket's fd, -1 once closed, and
    a flag once shut for writing."""
    a, b = trio.socket.socketpair()
    stream = trio.SocketStream(a)
    assert stream.socket.fileno() >= 0 and not stream.socket.did_shutdown_SHUT_WR
    await stream.send_eof()
    assert stream.socket.did_shutdown_SHUT_WR
    await stream.aclose()
    assert stream.socket.fileno() == -1
    b.close()


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"pattern": "^a+$"}, "b"),
        ({"patternProperties": {"^a+$": {"type": "integer"}}}, {"aa": "x"}),
        ({"patternProperties": {"^a+$": True}, "additionalProperties": False}, {"b": 1}),
        ({"patternProperties": {"^a+$": True}, "unevaluatedProperties": False}, {"b": 1}),
    ],
    ids=["pattern", "patternProperties", "additionalProperties", "unevaluatedProperties"],
)
def test_jsonschema_matches_every_pattern_through_its_module_global_re(
    monkeypatch: pytest.MonkeyPatch, schema: dict, instance: object
) -> None:
    """bridge/_compat/jsonschema.py replaces ``re`` in jsonschema's
    _keywords and _utils: every keyword that matches a pattern must look
    ``re.search`` up there, at each call."""
    import jsonschema

    from bridge._compat import jsonschema as compat

    compat.bound_patterns()
    asked = []
    monkeypatch.setattr(compat._BOUNDED, "search", lambda p, s: asked.append((p, s)) or False)
    list(jsonschema.Draft202012Validator(schema).iter_errors(instance))
    assert asked and all(pattern.startswith("^a+$") for pattern, _ in asked)
