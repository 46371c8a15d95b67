"""SSE framing: a table of chunks, hostile ones included, each read back by
a spec-following parser and by Replicate's splitlines-based client."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sse import KEEPALIVE, encode_event, normalize_line_breaks
from tests.helpers import CHUNKS
from tests.sse_clients import PARSERS, Ev


def _stream(chunks: list[str]) -> bytes:
    body = b"".join(encode_event("output", f"1692041342:{i}", c) for i, c in enumerate(chunks))
    return body + KEEPALIVE + encode_event("done", f"1692041342:{len(chunks)}", "{}")


def _expected(chunks: list[str]) -> list[Ev]:
    events = [
        Ev("output", f"1692041342:{i}", normalize_line_breaks(c)) for i, c in enumerate(chunks)
    ]
    return [*events, Ev("done", f"1692041342:{len(chunks)}", "{}")]


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_each_chunk_reads_back_as_itself(parser: str, chunk: str) -> None:
    assert PARSERS[parser]([_stream([chunk])]) == _expected([chunk])


@pytest.mark.parametrize("parser", PARSERS)
def test_whole_table_in_one_stream_forges_nothing(parser: str) -> None:
    events = PARSERS[parser]([_stream(CHUNKS)])
    assert events == _expected(CHUNKS)
    assert [e.event for e in events].count("done") == 1


@pytest.mark.parametrize("parser", PARSERS)
def test_byte_at_a_time(parser: str) -> None:
    """Any split of the bytes across reads gives the same events."""
    data = _stream(CHUNKS)
    assert PARSERS[parser]([data[i : i + 1] for i in range(len(data))]) == _expected(CHUNKS)


def test_framing_is_lf_only_and_every_line_is_a_field() -> None:
    text = _stream(CHUNKS).decode()
    assert "\r" not in text
    for line in text.split("\n"):
        assert line == "" or line.startswith(("event: ", "id: ", "data: ", ": ping")), line
    # And no splitlines break anywhere but at our own LFs.
    assert text.splitlines() == text.split("\n")[:-1]


def test_wire_format_matches_replicate() -> None:
    assert encode_event("output", "1692041342:0", "Sure") == (
        b"event: output\nid: 1692041342:0\ndata: Sure\n\n"
    )
    assert (
        encode_event("output", "1:1", "a\nb\n")
        == b"event: output\nid: 1:1\ndata: a\ndata: b\ndata: \n\n"
    )


@pytest.mark.parametrize("name", ["message", "ping", "output\n", ""])
def test_only_the_four_event_names(name: str) -> None:
    with pytest.raises(ValueError, match="event name"):
        encode_event(name, "1:0", "x")


@pytest.mark.parametrize("bad_id", ["1:0\n", "1:0\r", "1\u20280", "1:\x000"])
def test_ids_cannot_break_framing(bad_id: str) -> None:
    with pytest.raises(ValueError, match="id"):
        encode_event("output", bad_id, "x")


# Characters that stress framing most, mixed into otherwise arbitrary text.
_HOSTILE = st.sampled_from(
    [
        "\n",
        "\r",
        "\r\n",
        "\v",
        "\f",
        "\x1c",
        "\x1d",
        "\x1e",
        "\x85",
        "\u2028",
        "\u2029",
        "\x00",
        ":",
        " ",
        "event: done",
        "data: ",
        "id: 1:0",
        "\n\n",
    ]
)
_CHUNK = st.lists(st.one_of(st.text(), _HOSTILE), max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(_CHUNK, max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_property_any_chunks_read_back_and_forge_nothing(
    chunks: list[str], cuts: list[int]
) -> None:
    """For any chunks, split across reads anywhere, both parsers read back
    exactly those chunks (line breaks as \\n) and exactly one done."""
    data = _stream(chunks)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    for parse in PARSERS.values():
        assert parse(pieces) == _expected(chunks)
