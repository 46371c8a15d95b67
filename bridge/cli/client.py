"""``python -m bridge predict``: run a prediction from the terminal.

::

    python -m bridge predict demo/story prompt="Tell me a story"
    python -m bridge predict demo/echo prompt=hi repeat=3 --json
    python -m bridge predict demo/echo prompt=hi --wait

Output goes to stdout as it arrives; a status line (status, time to first
token, tokens/s) goes to stderr: live while the prediction streams when
stderr is a terminal (on the line below the text when stdout is that
terminal too), and once more, final, at the end. ``--json`` prints each event as one JSON
line instead; ``--wait`` polls the prediction rather than streaming it.
Ctrl-C cancels the prediction. ``--url`` / ``BRIDGE_URL`` and ``--token`` /
``BRIDGE_TOKEN`` say where and who. Exit status: 0 succeeded, 1 failed,
3 canceled, 130 interrupted (after cancelling), 2 for a request the bridge
refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, cast

import httpx

__all__ = ["EXIT", "parse_inputs", "predict"]

EXIT = {"succeeded": 0, "failed": 1, "canceled": 3}
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130


class Refused(Exception):
    """The bridge answered with an error (problem+json)."""


def parse_inputs(pairs: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """``key=value`` pairs as the model's input, typed by its *schema*."""
    props = schema.get("properties", {})
    input: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"input {pair!r} is not key=value")
        kind = props.get(key, {}).get("type")
        if kind == "string":
            input[key] = raw
        elif kind == "array" and not raw.startswith("["):
            input[key] = [item.strip() for item in raw.split(",")]
        else:
            try:
                input[key] = json.loads(raw)
            except ValueError:
                input[key] = raw
    return input


#: Control characters as ``cat -v`` shows them (``^[`` for ESC, ``^?`` for
#: DEL, ``M-^[`` for the C1 CSI), except newline and tab.
_VISIBLE = {c: f"^{chr(c + 64)}" for c in range(0x20) if c not in (0x09, 0x0A)}
_VISIBLE |= {0x7F: "^?"} | {c: f"M-^{chr(c - 0x80 + 64)}" for c in range(0x80, 0xA0)}


def visible(text: str) -> str:
    """*text* safe to write to a terminal: a model's escape sequences
    (window title, clear screen, hyperlinks, clipboard writes with OSC 52)
    are shown, not obeyed."""
    return text.translate(_VISIBLE)


def _shown(stream: TextIO) -> Callable[[str], str]:
    """How text from the bridge is written to *stream*: visibly on a
    terminal, the exact characters to a pipe or a file."""
    return visible if stream.isatty() else str


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
            message = f"{problem['title']} ({problem['status']}): {problem['detail']}"
        except (ValueError, KeyError):
            message = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code == 401:
            message += " (give a token with --token or $BRIDGE_TOKEN)"
        raise Refused(message)
    return response.json()


def _tokens(count: int) -> str:
    return "1 token" if count == 1 else f"{count:,} tokens"


class _Tracked:
    """A text stream that remembers the last character written to it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        if text:
            self.last = text[-1]
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _end_line(out: Any) -> bool:
    """End the output's last line if it is on a terminal and unended;
    whether it did."""
    try:
        unended = out.isatty() and out.last not in ("", "\n")
    except (OSError, ValueError):
        return False
    if unended:
        out.write("\n")
        out.flush()
    return bool(unended)


def _status_line(prediction: dict[str, Any], err: TextIO, lead: str = "\n") -> None:
    metrics = prediction.get("metrics") or {}
    parts = [prediction["status"]]
    if "time_to_first_token" in metrics:
        parts.append(f"first token {metrics['time_to_first_token'] * 1000:.0f} ms")
    if "tokens_per_second" in metrics:
        parts.append(f"{metrics['tokens_per_second']:.1f} tokens/s")
    if isinstance(prediction.get("output"), list):
        parts.append(_tokens(len(prediction["output"])))
    if prediction.get("error"):
        parts.append(f"error: {prediction['error']}")
    print(lead + _shown(err)(" · ".join(parts)), file=err, flush=True)


class _Live:
    """The status line, kept up to date on a terminal while tokens arrive.

    When stdout is the same terminal, the line sits just below the text: it
    is drawn with relative cursor moves (a line feed, then back up to the
    text's column), so it survives scrolling, and it is cleared before text
    that could reach its row (a line break, or a wrap). Otherwise it is one
    line redrawn in place. At most 10 redraws a second."""

    EVERY = 0.1

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.shared = _same_terminal(out, err)
        self.cols = max(os.get_terminal_size(err.fileno()).columns, 20)
        self.col = 0  # the text's cursor column
        self.started = time.monotonic()
        self.first: float | None = None
        self.count = 0
        self.drawn_at: float | None = None

    def output(self, text: str) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.count += 1
        due = self.drawn_at is None or now - self.drawn_at >= self.EVERY
        reaches = any(c in text for c in "\n\r\v\f") or self.col + len(text) * 2 >= self.cols
        clear = self.shared and self.drawn_at is not None and (due or reaches)
        if clear:
            self._clear()
        self.out.write(text)
        self.out.flush()
        self.col = _column(self.col, text, self.cols)
        if due or clear:
            self.draw(now)

    def line(self, now: float) -> str:
        if self.first is None:
            return f"starting · {now - self.started:.1f} s"
        parts = ["processing", f"first token {(self.first - self.started) * 1000:.0f} ms"]
        if self.count > 1 and now > self.first:
            parts.append(f"{(self.count - 1) / (now - self.first):.1f} tokens/s")
        parts.append(_tokens(self.count))
        return " · ".join(parts)

    def draw(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        line = self.line(now)[: self.cols - 1]
        if self.shared:
            self.err.write(f"\n\x1b[2K{line}\x1b[1A\x1b[{self.col + 1}G")
        else:
            self.err.write(f"\r\x1b[2K{line}")
        self.err.flush()
        self.drawn_at = now

    def _clear(self) -> None:
        if self.shared:  # the row below, leaving the cursor where it was
            self.err.write("\x1b[1B\x1b[2K\x1b[1A")
        else:
            self.err.write("\r\x1b[2K")
        self.err.flush()

    def close(self) -> None:
        """Take the live line away (the final one follows)."""
        if self.drawn_at is not None:
            self._clear()


def _same_terminal(out: TextIO, err: TextIO) -> bool:
    try:
        return out.isatty() and os.path.samestat(os.fstat(out.fileno()), os.fstat(err.fileno()))
    except (OSError, ValueError):
        return False


def _column(col: int, text: str, cols: int) -> int:
    """Where the cursor is after *text* is written at column *col*."""
    from wcwidth import wcwidth

    for char in text:
        if char in "\n\r\v\f":
            col = 0
        elif char == "\t":
            col = (col // 8 + 1) * 8
        else:
            col += max(wcwidth(char), 0)
        col %= cols
    return col


def _live(out: TextIO, err: TextIO, as_json: bool) -> _Live | None:
    """A live status line if stderr is a terminal (and not for --json)."""
    try:
        return None if as_json or not err.isatty() else _Live(out, err)
    except (OSError, ValueError):  # no size to be had
        return None


def _events(response: httpx.Response) -> Any:
    """(event, id, data) for each SSE event of *response*."""
    event, event_id, data = None, "", list[str]()
    for line in response.iter_lines():
        if not line:
            if event is not None:
                yield event, event_id, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


def predict(
    model: str,
    pairs: list[str],
    *,
    url: str,
    token: str | None,
    as_json: bool = False,
    wait: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run one prediction of *model*; returns the exit status."""
    out = cast(TextIO, _Tracked(out))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(30, read=None)  # a stream may idle between tokens
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as client:
        created: dict[str, str] = {}  # the prediction's id, once known (for Ctrl-C)
        try:
            info = client.get(f"/v1/models/{model}")
            if info.status_code in (401, 404):
                _check(info)
            version = info.json().get("latest_version") if info.status_code == 200 else None
            schema = version["openapi_schema"]["components"]["schemas"]["Input"] if version else {}
            body = {"input": parse_inputs(pairs, schema)}
            path = f"/v1/models/{model}/predictions"
            if wait:
                prediction = _check(client.post(path, json=body, headers={"Prefer": "wait=5"}))
                created["id"] = prediction["id"]
                prediction = _poll(client, prediction, as_json, out)
            else:
                live = _live(out, err, as_json)
                try:
                    prediction = _stream(client, path, body, created, as_json, out, live)
                finally:
                    if live is not None:
                        live.close()
        except KeyboardInterrupt:
            if "id" in created:
                canceled = client.post(f"/v1/predictions/{created['id']}/cancel")
                if canceled.status_code < 400:
                    _status_line(canceled.json(), err)
            return EXIT_INTERRUPTED
        except (Refused, ValueError) as exc:
            print(_shown(err)(f"error: {exc}"), file=err, flush=True)
            return EXIT_REFUSED
        except httpx.HTTPError as exc:
            print(f"error: cannot reach the bridge at {url}: {exc}", file=err, flush=True)
            return EXIT_REFUSED
        if not as_json:
            # On a terminal, the output's last line is ended there (else the
            # shell's prompt would follow it): the status line then needs no
            # line feed of its own when it is on the same terminal.
            ended = _end_line(out)
            _status_line(prediction, err, lead="" if ended and _same_terminal(out, err) else "\n")
        return EXIT.get(prediction["status"], 1)


def _stream(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    created: dict[str, str],
    as_json: bool,
    out: TextIO,
    live: _Live | None = None,
) -> dict[str, Any]:
    # A direct streaming create: if this process dies, the bridge cancels.
    with client.stream("POST", path, json=body, headers={"Accept": "text/event-stream"}) as r:
        if r.status_code >= 400:
            r.read()
            _check(r)
        location = r.headers["Location"]
        created["id"] = location.rsplit("/", 1)[1]
        if live is not None:
            live.draw()
        show = _shown(out)
        for event, event_id, data in _events(r):
            if as_json:
                print(
                    json.dumps({"event": event, "id": event_id, "data": data}), file=out, flush=True
                )
            elif event == "output" and live is not None:
                live.output(show(data))
            elif event == "output":
                out.write(show(data))
                out.flush()
    prediction: dict[str, Any] = _check(client.get(location))
    return prediction


def _poll(client: httpx.Client, prediction: dict[str, Any], as_json: bool, out: TextIO) -> Any:
    shown = 0
    show = _shown(out)
    while True:
        output = prediction.get("output") or []
        for chunk in output[shown:]:
            if as_json:
                print(json.dumps({"event": "output", "data": chunk}), file=out, flush=True)
            else:
                out.write(show(chunk if isinstance(chunk, str) else json.dumps(chunk)))
                out.flush()
        shown = len(output)
        if prediction["status"] in EXIT:
            if as_json:
                print(
                    json.dumps({"event": "done", "data": prediction["status"]}),
                    file=out,
                    flush=True,
                )
            return prediction
        time.sleep(0.25)
        prediction = _check(client.get(f"/v1/predictions/{prediction['id']}"))


def main_predict(args: Any) -> int:
    url = args.url or os.environ.get("BRIDGE_URL") or "http://127.0.0.1:8000"
    token = args.token or os.environ.get("BRIDGE_TOKEN")
    return predict(args.model, args.input, url=url, token=token, as_json=args.json, wait=args.wait)
