"""``python -m bridge predict``, run as a process against a real bridge."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pyte
import pytest
import trio

from bridge.cli.client import _status_line
from tests.backends import ENV, read_until
from tests.conftest import StartBridge, ended, wait_closed


async def predict(url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "bridge", "predict", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV | {"BRIDGE_URL": url} | (env or {}),
        )


async def test_streams_to_stdout_with_a_status_line(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    result = await predict(url, "demo/echo", "prompt=hello big  world", "delay_ms=20", "repeat=2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "hello big  world hello big  world"
    status = result.stderr.decode().strip()
    assert status.startswith("succeeded · first token ")
    assert " tokens/s · 6 tokens" in status


async def test_json_prints_one_event_per_line(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    result = await predict(url, "demo/echo", "prompt=a b", "--json")
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(e["event"], e["data"]) for e in events] == [
        ("logs", "echoing 2 chunks"), ("output", "a "), ("output", "b"), ("done", "{}")
    ]  # fmt: skip
    assert all(e["id"] for e in events)


async def test_wait_polls_instead_of_streaming(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    result = await predict(url, "demo/echo", "prompt=slow and steady", "delay_ms=150", "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "slow and steady"


async def test_failure_and_refusals_exit_nonzero(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    failed = await predict(url, "demo/echo", "prompt=x y", "fail_after=1")
    assert failed.returncode == 1
    assert "echo failed after 1 chunks" in failed.stderr.decode()
    refused = await predict(url, "demo/echo", "repeat=twice")
    assert refused.returncode == 2
    assert "prompt is required" in refused.stderr.decode()
    unknown = await predict(url, "demo/nope", "prompt=x")
    assert unknown.returncode == 2 and "404" in unknown.stderr.decode()
    down = await predict("http://127.0.0.1:9", "demo/echo", "prompt=x")
    assert down.returncode == 2 and "cannot reach the bridge" in down.stderr.decode()


async def test_token_from_the_environment_or_the_flag(start_bridge: StartBridge) -> None:
    url = await start_bridge(auth_tokens=frozenset({"r8_me"}))
    missing = await predict(url, "demo/echo", "prompt=x")
    assert missing.returncode == 2 and "401" in missing.stderr.decode()
    assert "(give a token with --token or $BRIDGE_TOKEN)" in missing.stderr.decode()
    by_env = await predict(url, "demo/echo", "prompt=from env", env={"BRIDGE_TOKEN": "r8_me"})
    assert by_env.stdout.decode() == "from env"
    by_flag = await predict(url, "demo/echo", "prompt=from flag", "--token", "r8_me")
    assert by_flag.stdout.decode() == "from flag"


@contextmanager
def children_ignore_sigint(ignored: bool) -> Iterator[None]:
    """While a child is started, SIGINT is ignored here if *ignored*, so the
    child inherits it ignored (as ``cmd &`` in a script starts it). Not a
    preexec_fn: that forks this process (with gRPC's threads in it) and
    runs Python in the child before exec, and under load gRPC's fork
    handlers broke the child now and then (epoll_wait: bad file descriptor);
    without one, the child is spawned with vfork, no fork handlers run."""
    if not ignored:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
async def test_ctrl_c_cancels_the_prediction(start_bridge: StartBridge, inherited: str) -> None:
    """Also when started with SIGINT ignored, as ``cmd &`` in a script
    starts it."""
    url = await start_bridge()
    key = uuid.uuid4().hex
    with children_ignore_sigint(inherited == "ignored"):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge", "predict", "test/endless", f"key={key}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV | {"BRIDGE_URL": url},
        )
    with trio.fail_after(30):
        first = await process.stdout.receive_some()  # it is streaming
        assert first.startswith(b"t1 ")
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 130
    await wait_closed(key)  # the backend stopped
    async with httpx.AsyncClient(base_url=url) as client:
        (prediction,) = (await client.get("/v1/predictions")).json()["results"]
        assert (await ended(client, prediction["id"]))["status"] == "canceled"


@pytest.mark.parametrize("inherited", ["default", "ignored"])
async def test_ctrl_c_while_starting_up_exits_130_quietly(inherited: str) -> None:
    """The Ctrl-C lands while the client is still starting (``-X importtime``
    says when the CLI is in, before the client's imports): no traceback,
    status 130. Should it land later, the bridge it asks never answers (a
    socket that listens but never accepts): the outcome is the same."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    with children_ignore_sigint(inherited == "ignored"):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-X", "importtime", "-m", "bridge", "predict", "demo/echo", "p=x"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV | {"BRIDGE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"},
        )
    seen: list[bytes] = []
    await read_until(process.stderr, rb"\| bridge.cli\n", seen)
    process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        assert await process.wait() == 130
        while data := await process.stderr.receive_some():
            seen.append(data)
    silent.close()
    said = b"".join(seen).decode()
    assert "Traceback" not in said and "KeyboardInterrupt" not in said
    # The client imports none of the server stack.
    assert "| quart" not in said and "| trio" not in said and "| grpc" not in said


class Terminal:
    """A real pseudo-terminal (80 x 24) whose output a VT100 emulator (pyte)
    turns into the screen a user would see."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.screen = pyte.Screen(80, 24)
        self.stream = pyte.ByteStream(self.screen)

    async def predict(self, url: str, *input: str, stdout: int | None = None) -> trio.Process:
        """``python -m bridge predict demo/echo`` with its stderr (and its
        stdout, unless given) on this terminal."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge", "predict", "demo/echo", *input],
            stdin=subprocess.DEVNULL,
            stdout=self.slave if stdout is None else stdout,
            stderr=self.slave,
            env=ENV | {"BRIDGE_URL": url},
        )
        os.close(self.slave)  # the process holds it now: its end is this one's EOF
        return process

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    async def read_until(self, done: Callable[[list[str]], bool]) -> list[str]:
        with trio.fail_after(30):
            while not done(self.lines()):
                await trio.lowlevel.wait_readable(self.master)
                try:
                    self.stream.feed(os.read(self.master, 65536))
                except OSError:  # the other side is closed: all is read
                    break
        return self.lines()

    def close(self, process: trio.Process) -> None:
        """Close this terminal, and kill *process* if it still runs."""
        os.close(self.master)
        if process.returncode is None:
            process.kill()


WORDS = " ".join(f"w{i}" for i in range(1, 21))  # 20 tokens
#: 20 tokens too, over three rows: a line break, then a line that wraps.
LINES = "w1 w2 w3 w4 w5\n" + " ".join(f"w{i}-{'x' * 12}" for i in range(6, 21))


def rows(text: str) -> list[str]:
    """*text* as an 80-column terminal shows it."""
    return [line[i : i + 80].rstrip() for line in text.split("\n") for i in range(0, len(line), 80)]


@pytest.mark.parametrize("prompt", [WORDS, LINES], ids=["one-line", "breaks-and-wraps"])
async def test_the_status_line_is_live_below_the_text(
    start_bridge: StartBridge, prompt: str
) -> None:
    url = await start_bridge()
    term = Terminal()
    process = await term.predict(url, f"prompt={prompt}", "delay_ms=100")
    try:
        # Mid-stream: the text so far, and just below it the live status (the
        # two are separate writes, so wait for a screen that shows both).
        live = r"processing · first token \d+ ms · [\d.]+ tokens/s · \d+ tokens"

        def status_below_the_text(lines: list[str]) -> bool:
            row = term.screen.cursor.y
            return "w7" in lines[row] and bool(re.fullmatch(live, lines[row + 1]))

        await term.read_until(status_below_the_text)
        # The end: the whole text, intact, then the final status; no live line left.
        final = await term.read_until(lambda lines: any("succeeded" in line for line in lines))
        with trio.fail_after(10):
            assert await process.wait() == 0
        text = rows(prompt)
        assert final[: len(text)] == text
        assert re.fullmatch(
            r"succeeded · first token \d+ ms · [\d.]+ tokens/s · 20 tokens", final[len(text)]
        ), final
        assert not any("processing" in line for line in final)
    finally:
        term.close(process)


async def test_with_stdout_redirected_the_text_stays_clean(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    term = Terminal()
    process = await term.predict(url, f"prompt={WORDS}", "delay_ms=50", stdout=subprocess.PIPE)
    try:
        text = b""
        async with trio.open_nursery() as nursery:
            live = []

            async def watch() -> None:
                await term.read_until(lambda lines: lines[0].startswith("processing"))
                live.append(term.lines()[0])
                await term.read_until(lambda lines: any("succeeded" in x for x in lines))

            nursery.start_soon(watch)
            while data := await process.stdout.receive_some():
                text += data
        assert text.decode() == WORDS  # no escape codes in the output itself
        assert await process.wait() == 0
        assert re.match(r"processing · first token \d+ ms", live[0])
        assert any(re.match(r"succeeded · first token", x) for x in term.lines())
    finally:
        term.close(process)


#: A model's output that tries to drive the terminal: set the window title,
#: clear the screen, write the clipboard (OSC 52), and a C1 CSI.
HOSTILE = ["\x1b]0;PWNED\x07", "\x1b[2J", "\x1b]52;c;ZWNobyBwd25lZA==\x07", "a\tb\n", "\x9b31m"]


async def test_a_models_escape_sequences_are_shown_not_obeyed(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    term = Terminal()
    term.stream.feed(b"on the screen before\r\n")
    process = await term.predict(url, "prompt=x", f"tokens={json.dumps(HOSTILE)}")
    try:
        lines = await term.read_until(lambda lines: any("succeeded" in x for x in lines))
        assert lines[0] == "on the screen before"  # not cleared
        # (the tab is a tab: it moves on to the next tab stop)
        assert " ".join(lines[1].split()) == "^[]0;PWNED^G^[[2J^[]52;c;ZWNobyBwd25lZA==^Ga b"
        assert lines[2] == "M-^[31m"
        assert term.screen.title == ""
        assert await process.wait() == 0
    finally:
        term.close(process)


async def test_to_a_pipe_the_models_bytes_are_kept_exactly(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    result = await predict(url, "demo/echo", "prompt=x", f"tokens={json.dumps(HOSTILE)}")
    assert result.returncode == 0
    assert result.stdout.decode() == "".join(HOSTILE)


def test_errors_on_a_terminal_are_shown_visibly() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for err, expected in ((Tty(), "error: ^[]0;x^G"), (io.StringIO(), "error: \x1b]0;x\x07")):
        _status_line({"status": "failed", "error": "\x1b]0;x\x07"}, err)
        assert err.getvalue() == f"\nfailed · {expected}\n"


def test_the_status_line_counts_tokens_in_words() -> None:
    for output, said in ((["a"], "1 token"), (["a", "b"], "2 tokens"), ([], "0 tokens")):
        err = io.StringIO()
        _status_line({"status": "succeeded", "output": output}, err)
        assert err.getvalue() == f"\nsucceeded · {said}\n"
    err = io.StringIO()
    _status_line({"status": "succeeded", "output": ["x"] * 12_345}, err)
    assert err.getvalue() == "\nsucceeded · 12,345 tokens\n"


@pytest.mark.parametrize("mode", ["stream", "--wait"])
async def test_on_a_terminal_the_output_ends_its_line(start_bridge: StartBridge, mode: str) -> None:
    """With stdout a terminal and stderr elsewhere (2>/dev/null, a log),
    the shell's prompt must not follow the output on its line."""
    url = await start_bridge()
    master, slave = pty.openpty()
    args = ["prompt=hello"] + ([mode] if mode != "stream" else [])
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bridge", "predict", "demo/echo", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=ENV | {"BRIDGE_URL": url},
    )
    os.close(slave)
    shown = b""
    with trio.fail_after(30):
        while True:
            await trio.lowlevel.wait_readable(master)
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side is closed: all is read
                break
            if not data:
                break
            shown += data
        assert await process.wait() == 0
    os.close(master)
    assert shown == b"hello\r\n"  # the terminal's line end
