"""What bridge/_compat relies on of other projects' private APIs: an
upgrade that changes any of it fails here, not in production."""

from __future__ import annotations

import inspect

import h11
import pytest
import trio
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import EventWrapper

from bridge.http.heads import head_problem


def test_hypercorn_tcp_server_makes_its_protocol_in_run_and_closes_with_close() -> None:
    run = inspect.getsource(TCPServer.run)
    assert "self.protocol = ProtocolWrapper(" in run
    assert "await self._close()" in run
    assert "self.send_lock" in inspect.getsource(TCPServer.protocol_send)
    assert "send_eof" in inspect.getsource(TCPServer._close)


def test_hypercorn_protocol_wrapper_keeps_its_protocol_and_arguments() -> None:
    init = inspect.getsource(ProtocolWrapper.__init__)
    for name in ("app", "config", "context", "task_group", "state", "ssl", "client", "server"):
        assert f"self.{name} = {name}" in init
    assert "self.protocol = H11Protocol(" in init


def test_hypercorn_h11_checks_each_request_and_answers_errors() -> None:
    events = inspect.getsource(H11Protocol._handle_events)
    assert "await self._check_protocol(event)" in events
    assert "except h11.RemoteProtocolError as error:" in events
    assert "_send_error_response(error.error_status_hint)" in events
    assert list(inspect.signature(H11Protocol._send_error_response).parameters) == [
        "self",
        "status_code",
    ]


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


def test_hypercorn_h2_buffers_streams_as_the_bounded_h2_relies_on() -> None:
    create = inspect.getsource(H2Protocol._create_stream)
    assert "self.stream_buffers[request.stream_id] = StreamBuffer(" in create
    sends = inspect.getsource(H2Protocol.stream_send)
    assert "await self.stream_buffers[event.stream_id].push(event.data)" in sends
    assert "await self.stream_buffers[event.stream_id].drain()" in sends
    assert "await self.send(Updated(idle=idle))" in sends
    assert "await self.stream_buffers[stream_id].pop(chunk_size)" in inspect.getsource(
        H2Protocol._send_data
    )
    assert set(inspect.signature(StreamBuffer.__init__).parameters) == {"self", "event_class"}
    assert {"_complete", "_is_empty", "_paused", "buffer"} <= set(vars(StreamBuffer(EventWrapper)))


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


def test_quart_trio_handles_each_request_in_its_connection_class() -> None:
    """bridge/_compat/quart_trio.py: the app makes its asgi_http_class for
    each HTTP request and calls it with (receive, send); that class cancels
    the request's nursery on http.disconnect (why the last send is
    shielded)."""
    from quart import Quart
    from quart_trio.asgi import TrioASGIHTTPConnection

    from bridge._compat.quart_trio import App

    assert issubclass(App.asgi_http_class, TrioASGIHTTPConnection)
    assert "self.asgi_http_class(self, scope)" in inspect.getsource(Quart.asgi_app)
    assert list(inspect.signature(TrioASGIHTTPConnection.__call__).parameters) == [
        "self",
        "receive",
        "send",
    ]
    assert "cancel_scope.cancel()" in inspect.getsource(TrioASGIHTTPConnection)


def test_httpx_transport_sends_through_its_pool() -> None:
    """bridge/_compat/httpx.py replaces AsyncHTTPTransport._pool: the
    transport must send every request through that attribute."""
    import httpx

    handle = inspect.getsource(httpx.AsyncHTTPTransport.handle_async_request)
    assert "await self._pool.handle_async_request(req)" in handle
    assert "self._pool" in inspect.getsource(httpx.AsyncHTTPTransport.aclose)


def test_hypercorn_wraps_an_asgi_app_as_its_worker_does() -> None:
    """serve_http wraps the app with hypercorn.utils.wrap_app, as
    hypercorn's trio entry point does (hypercorn.trio.serve)."""
    import hypercorn.trio
    from hypercorn.utils import wrap_app

    assert list(inspect.signature(wrap_app).parameters) == ["app", "wsgi_max_body_size", "mode"]
    assert "wrap_app(app, config.wsgi_max_body_size, mode)" in inspect.getsource(
        hypercorn.trio.serve
    )


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
