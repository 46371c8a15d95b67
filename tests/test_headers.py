"""The header parsers, as tables: what each header value means."""

from __future__ import annotations

import pytest

from bridge.errors import BadRequest, Unauthorized
from bridge.http.headers import bearer_token, cancel_after, check_host, cors_origin, prefer_wait


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("respond-async", None),
        ("waiting", None),
        ("wait", 60.0),  # the longest
        ("wait=5", 5.0),
        ("WAIT = 5", 5.0),
        ("wait=0", 1.0),  # at least a second
        ("wait=600", 60.0),  # at most the longest
        ("wait=" + "9" * 5000, 60.0),  # no int() of thousands of digits
        ("respond-async, wait=10", 10.0),
        ("return=minimal; wait=3", 3.0),
    ],
)
def test_prefer_wait(header: str | None, seconds: float | None) -> None:
    assert prefer_wait(header, 60.0) == seconds


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("90", 90.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1H30M15S", 5415.0),
        (" 2m ", 120.0),
        ("24h", 86400.0),
    ],
)
def test_cancel_after(header: str | None, seconds: float | None) -> None:
    assert cancel_after(header) == seconds


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "is not a duration"),
        ("soon", "is not a duration"),
        ("5 minutes", "is not a duration"),
        ("-5", "is not a duration"),
        ("0.5", "must be from 1 s to 86400 s"),
        ("25h", "must be from 1 s to 86400 s"),
        ("9" * 40, "is not a duration"),
    ],
)
def test_cancel_after_refuses(header: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        cancel_after(header)


@pytest.mark.parametrize(
    ("hosts", "allowed", "ok"),
    [
        ([], (), True),
        ([""], ("example.com",), True),  # an empty Host is none
        (["example.com"], (), True),
        (["example.com:8000"], ("example.com",), True),
        (["EXAMPLE.com."], ("example.com",), True),
        (["api.example.com"], (".example.com",), True),
        (["example.com"], (".example.com",), True),
        (["[::1]:8000"], (), True),
        (["evil.com"], ("example.com",), False),
        (["notexample.com"], (".example.com",), False),
        (["a.com", "b.com"], (), False),  # two Host headers
        (["example.com:99999"], (), False),
        (["exa mple.com"], (), False),
        (["user@example.com"], (), False),
    ],
)
def test_check_host(hosts: list[str], allowed: tuple[str, ...], ok: bool) -> None:
    if ok:
        check_host(hosts, allowed)
    else:
        with pytest.raises(BadRequest, match="Host"):
            check_host(hosts, allowed)


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        ("Bearer secret", "secret"),
        ("bearer secret", "secret"),
        ("Token other", "other"),
        ("Bearer  secret ", "secret"),
    ],
)
def test_bearer_token(authorization: str, token: str) -> None:
    assert bearer_token(authorization, [b"other", b"secret"]) == token


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", "Basic secret"])
def test_bearer_token_refuses(authorization: str | None) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(authorization, [b"secret"])
    assert bearer_token(authorization, []) is None  # no tokens: open


@pytest.mark.parametrize(
    ("origin", "allowed", "capability", "answer"),
    [
        (None, ("*",), False, None),
        ("https://a.com", (), False, None),
        ("https://a.com", (), True, ("https://a.com", True)),  # a stream URL
        ("https://a.com", ("https://a.com",), False, ("https://a.com", True)),
        ("https://a.com/", ("https://a.com",), False, ("https://a.com/", True)),
        ("https://b.com", ("https://a.com",), False, None),
        ("https://b.com", ("https://a.com", "*"), False, ("*", False)),
    ],
)
def test_cors_origin(
    origin: str | None, allowed: tuple[str, ...], capability: bool, answer: object
) -> None:
    assert cors_origin(origin, allowed, capability) == answer
