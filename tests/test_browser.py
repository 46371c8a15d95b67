"""The page at /, in a real headless Chromium (Debian's, installed by
``make test``), against the bridge and demo backends run as processes."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.backends import ENV
from tests.helpers import ARGS, BRIDGE, CHROMIUM, wait_for
from tests.sse_clients import spec_events

DOCS = Path(__file__).parent.parent / "docs"
JS_DIR = Path(__file__).parent / "js"

CROSS_ORIGIN_PAGE = """<!doctype html><meta charset="utf-8"><pre id="out"></pre><script>
const source = new EventSource(new URLSearchParams(location.search).get("stream"),
                               { withCredentials: true });
source.addEventListener("output", (e) => { document.getElementById("out").textContent += e.data; });
source.addEventListener("done", () => { source.close(); document.title = "done"; });
</script>"""


@pytest.fixture(scope="module")
def other_origin() -> Iterator[str]:
    """Another origin (another port) serving a page with a plain EventSource."""
    root = Path(tempfile.mkdtemp())
    (root / "cross.html").write_text(CROSS_ORIGIN_PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("browser")
    env = ENV | {"XDG_STATE_HOME": str(tmp)}
    # Pipes as stdin and --stop-on-eof: they end with this test run.
    backend = subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo-backend", "--stop-on-eof", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    procs = [backend]
    try:
        echo = wait_for(backend.stdout, rb"demo/echo listening on (\S+)")[1].decode()
        story = wait_for(backend.stdout, rb"demo/story listening on (\S+)")[1].decode()
        config = tmp / "bridge.toml"
        config.write_text(
            f'[models."demo/story"]\ntargets = ["{story}"]\n'
            f'[models."demo/echo"]\ntargets = ["{echo}"]\n'
        )
        server = subprocess.Popen(
            [*BRIDGE, "serve", "--stop-on-eof", "--config", str(config), "--port", "0"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        procs.append(server)
        yield wait_for(server.stderr, rb"Running on (http://\S+)")[1].decode()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(20)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1000, "height": 760},
        )
        yield context
        context.close()


@pytest.fixture
def page(browser_context) -> Iterator[Page]:
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert errors == []  # no uncaught JavaScript error


def replayed(page: Page, text: str) -> None:
    """Wait until a reopened, finished prediction shows *text*: its status
    comes with the prediction, its output with the replayed stream after."""
    page.wait_for_selector('#status[data-status="succeeded"]', timeout=30_000)
    page.wait_for_function(
        "text => document.getElementById('output').textContent === text", arg=text, timeout=30_000
    )


def start(page: Page, bridge: str, model: str, **input: object) -> None:
    page.goto(bridge + "/")
    page.wait_for_selector("#inputs [name=prompt]")
    page.select_option("#model", model)
    for name, value in input.items():
        page.fill(f"#inputs [name={name}]", str(value))
    page.click("#start")


def test_page_streams_a_story(page: Page, bridge: str) -> None:
    start(page, bridge, "demo/story", prompt="Tell me a story", max_words=80, delay_ms=40, seed=7)
    seen = []
    for _ in range(8):
        page.wait_for_timeout(250)
        seen.append(len(page.text_content("#output")))
    assert len(set(seen)) >= 4 and seen == sorted(seen)  # it grows, word by word
    page.wait_for_selector('#status[data-status="succeeded"]', timeout=30_000)
    assert page.text_content("#status") == "succeeded"
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.text_content("#ttft"))
    assert float(page.text_content("#tps")) > 0
    assert len(page.text_content("#output").split()) >= 20
    shot = Path(tempfile.mkdtemp()) / "page.png"
    page.screenshot(path=shot, full_page=True)  # the code and recent panels too
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT"):  # make screenshot
        DOCS.mkdir(exist_ok=True)
        shutil.copy(shot, DOCS / "screenshot.png")
    # The link reopens the finished prediction and replays it.
    text = page.text_content("#output")
    page.goto(page.input_value("#link"))
    replayed(page, text)
    assert page.input_value("#inputs [name=prompt]") == "Tell me a story"


def test_cancel_stops_a_long_echo(page: Page, bridge: str) -> None:
    start(page, bridge, "demo/echo", prompt="on and on and on", delay_ms=100, repeat=100)
    page.wait_for_function("document.getElementById('count').textContent >= 3")
    page.click("#cancel")
    page.wait_for_selector('#status[data-status="canceled"]', timeout=10_000)
    stopped_at = page.text_content("#output")
    page.wait_for_timeout(600)  # six more tokens, were it still running
    assert page.text_content("#output") == stopped_at
    assert page.is_hidden("#error")


def test_failure_is_shown(page: Page, bridge: str) -> None:
    start(page, bridge, "demo/echo", prompt="a b c d", fail_after=2)
    page.wait_for_selector('#status[data-status="failed"]', timeout=10_000)
    assert page.text_content("#error") == "echo failed after 2 chunks, as asked (fail_after)"
    assert page.text_content("#output") == "a b "


def test_the_servers_validation_errors_are_shown(page: Page, bridge: str) -> None:
    page.goto(bridge + "/")
    page.wait_for_selector("#inputs [name=prompt]")
    page.select_option("#model", "demo/echo")
    # Past the browser's own check, to see the server's 422 on the page.
    page.evaluate("document.querySelector('#inputs [name=prompt]').required = false")
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == (
        "Input validation failed: input.prompt: prompt is required\n• prompt: prompt is required"
    )
    assert page.text_content("#status") == "idle"


def test_fits_a_phone(browser_context, bridge: str) -> None:
    page = browser_context.new_page()
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(bridge + "/")
    page.wait_for_selector("#inputs [name=prompt]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = page.locator("#start").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.close()


def test_event_source_from_any_origin(page: Page, bridge: str, other_origin: str) -> None:
    """The seed's browser example: a page on another origin streams with
    EventSource, with credentials, though the bridge has no [cors] at all."""
    prediction = httpx.post(
        f"{bridge}/v1/models/demo/echo/predictions",
        json={"input": {"prompt": "from another origin", "delay_ms": 50}},
    )
    stream = prediction.json()["urls"]["stream"]
    page.goto(f"{other_origin}/cross.html?stream={stream}")
    page.wait_for_function("document.title === 'done'", timeout=10_000)
    assert page.text_content("#out") == "from another origin"


def test_urls_web_opens_the_page_on_that_prediction(page: Page, bridge: str) -> None:
    """A prediction made over the API, opened in a browser from its urls.web."""
    prediction = httpx.post(
        f"{bridge}/v1/models/demo/echo/predictions",
        json={"input": {"prompt": "made over the API", "delay_ms": 20}},
        headers={"Prefer": "wait"},
    ).json()
    assert prediction["status"] == "succeeded"
    page.goto(prediction["urls"]["web"])
    replayed(page, "made over the API")
    assert page.input_value("#model") == "demo/echo"
    assert page.input_value("#inputs [name=prompt]") == "made over the API"


def test_list_inputs_keep_each_item_exactly(page: Page, bridge: str) -> None:
    """An array input: one item per line, spaces kept; or a JSON array."""
    typed = {"  Hello": "  Hello", '["a\\nb", ", world"]': "a\nb, world"}
    for text, output in {"  Hello\n, world \n!": "  Hello, world !", **typed}.items():
        assert echo_to_the_end(page, bridge, "-", tokens=text) == output
    mine = page.input_value("#link").rpartition("=")[2]
    prediction = httpx.get(f"{bridge}/v1/predictions/{mine}").json()
    assert prediction["input"]["tokens"] == ["a\nb", ", world"]
    page.goto(prediction["urls"]["web"])  # shown again as it was sent
    page.wait_for_selector("#inputs [name=tokens]")
    assert page.input_value("#inputs [name=tokens]") == '["a\\nb",", world"]'
    lines = httpx.get(f"{bridge}/v1/predictions").json()["results"][2]
    page.goto(lines["urls"]["web"])
    page.wait_for_selector("#inputs [name=tokens]")
    assert page.input_value("#inputs [name=tokens]") == "  Hello\n, world \n!"


def echo_to_the_end(page: Page, bridge: str, prompt: str, **input: object) -> str:
    start(page, bridge, "demo/echo", prompt=prompt, **input)
    page.wait_for_selector('#status[data-status="succeeded"]', timeout=30_000)
    return page.text_content("#output")


def test_fields_show_their_description_limits_and_a_real_placeholder(
    page: Page, bridge: str
) -> None:
    page.goto(bridge + "/")
    page.wait_for_selector("#inputs [name=prompt]")
    page.select_option("#model", "demo/story")
    prompt = page.locator("#inputs [name=prompt]")
    assert prompt.input_value() == ""  # nothing filled in that the user did not write
    # The description shows once, below the field; not again as a placeholder.
    assert not prompt.get_attribute("placeholder")
    hints = page.locator("#inputs .hint").all_text_contents()
    assert "What the story is about, e.g. the lion and the mouse, or sour grapes" in hints
    assert "The most words it may take · 1 to 10000 · default 120" in hints
    assert page.locator("#inputs [name=max_words]").get_attribute("max") == "10000"
    captions = page.locator("#inputs .caption").all_text_contents()
    assert captions[0] == "prompt string · required"
    page.select_option("#model", "demo/echo")
    tokens = page.locator("#inputs [name=tokens]")
    assert tokens.get_attribute("placeholder") == (
        "one item per line, exactly as typed; or a JSON array"
    )
    style = tokens.evaluate("e => getComputedStyle(e, '::placeholder').fontStyle")
    assert style == "italic"  # it reads as a placeholder


def test_copy_the_link_and_the_output(browser_context, page: Page, bridge: str) -> None:
    browser_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=bridge)
    output = echo_to_the_end(page, bridge, "copy me please")
    link = page.input_value("#link")
    assert re.fullmatch(re.escape(bridge) + r"/\?prediction=[a-z2-7]{26}", link)
    assert page.text_content("label[for=link]") == "Link to this prediction"
    page.click("#copy-link")
    page.wait_for_function("document.getElementById('copied').textContent === 'Link copied'")
    assert page.evaluate("navigator.clipboard.readText()") == link
    page.click("#copy-output")
    page.wait_for_function("document.getElementById('copied').textContent === 'Output copied'")
    assert page.evaluate("navigator.clipboard.readText()") == output == "copy me please"


def run_snippet(lang: str, code: str, tmp: Path) -> str:
    """What the page's *code* prints when run as a user would run it."""
    if lang == "curl":
        raw = subprocess.run(["bash", "-c", code], capture_output=True, timeout=60, check=True)
        events = spec_events([raw.stdout])
        assert events[-1].event == "done"
        return "".join(e.data for e in events if e.event == "output")
    if lang in ("python", "openai"):  # openai: the same prediction through OpenAI's chat API
        script = tmp / "snippet.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:  # next to the Replicate JS client that make test installs
        script = JS_DIR / f"snippet-{os.getpid()}.mjs"
        script.write_text(code)
        command = ["node", str(script)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=60, env=ENV, check=False)
    finally:
        if lang == "javascript":
            script.unlink()
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_the_code_snippets_reproduce_the_prediction(page: Page, bridge: str) -> None:
    output = echo_to_the_end(page, bridge, "the same words, again", repeat=2, delay_ms=5)
    assert output == "the same words, again the same words, again"
    tmp = Path(tempfile.mkdtemp())
    assert page.is_visible("#openai-tab")  # demo/echo is a text model
    for lang in ("curl", "python", "javascript", "openai"):
        page.click(f"#code [data-lang={lang}]")
        assert page.get_attribute("#snippet", "data-lang") == lang
        code = page.text_content("#snippet")
        assert '"repeat": 2' in code or '"repeat":2' in code  # with its input
        assert run_snippet(lang, code, tmp) == output, lang
    page.click("#copy-code")
    page.wait_for_function("document.getElementById('copied').textContent === 'Code copied'")


def test_live_cursor_logs_and_recent_predictions(page: Page, bridge: str) -> None:
    start(page, bridge, "demo/echo", prompt="slow and steady words", delay_ms=300)
    page.wait_for_function("document.getElementById('count').textContent >= 1")
    cursor = "e => getComputedStyle(e, '::after').content"
    assert page.eval_on_selector("#output", cursor) == '"▍"'  # live: a cursor
    page.wait_for_selector('#status[data-status="succeeded"]', timeout=30_000)
    assert page.eval_on_selector("#output", cursor) == "none"  # ended: none
    assert page.text_content("#logs") == "echoing 4 chunks\n"
    mine = page.input_value("#link").rpartition("=")[2]
    first = page.locator("#recent-list li a").first
    first.wait_for()
    page.wait_for_function(f"document.querySelector('#recent-list a').href.endsWith('{mine}')")
    assert "slow and steady words" in first.text_content()
    assert "succeeded" in first.text_content()
    page.goto(bridge + "/")  # a fresh page; reopen it from the list
    page.click(f"#recent-list a[href$='{mine}']")
    replayed(page, "slow and steady words")


TELLER = """
syntax = "proto3";
package story.v1;
import "google/api/field_behavior.proto";

// A story, a word at a time.
message TellRequest {
  // What the story is about.
  string topic = 1 [(google.api.field_behavior) = REQUIRED];
  // The most words it may take.
  int32 max_words = 2;
  Tone tone = 3;
  // Shout it.
  bool loud = 4;
  repeated string names = 5;
  int64 seed = 6;
  Style style = 7;
}
enum Tone { TONE_UNSPECIFIED = 0; GRIM = 1; MERRY = 2; }
message Style { string voice = 1; }
message TellResponse { string word = 1; }

service Teller { rpc Tell(TellRequest) returns (stream TellResponse); }
"""


@pytest.fixture(scope="module")
def teller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bridge serving story.v1.Teller/Tell, a service of its own proto
    (compiled by the bridge from the .proto file), as model acme/teller."""
    from google.protobuf import message_factory

    from bridge.backends.generic.descriptors import types_from_set
    from tests.backends import RawServer
    from tests.helpers import descriptor_set

    tmp = tmp_path_factory.mktemp("teller")
    pool = types_from_set(descriptor_set(tmp, "teller", TELLER)).pool
    request, response = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"story.v1.{name}"))
        for name in ("TellRequest", "TellResponse")
    )

    async def tell(asked: Any, context: Any) -> AsyncIterator[Any]:
        tone = pool.FindEnumTypeByName("story.v1.Tone").values_by_number[asked.tone].name
        words = [tone, *asked.topic.split(), *asked.names, asked.style.voice, str(asked.seed)]
        for word in words[: asked.max_words or None]:
            yield response(word=(word.upper() if asked.loud else word) + " ")

    handler = grpc.method_handlers_generic_handler(
        "story.v1.Teller",
        {
            "Tell": grpc.unary_stream_rpc_method_handler(
                tell, request.FromString, response.SerializeToString
            )
        },
    )
    with RawServer(handler) as server:
        config = tmp / "bridge.toml"
        config.write_text(
            f'[models."acme/teller"]\ntargets = ["{server.target}"]\n'
            'method = "story.v1.Teller/Tell"\nprotos = ["teller.proto"]\nproto_path = ["."]\n'
            '[models."acme/teller".output]\ntext = "word"\n'
        )
        bridge = subprocess.Popen(
            [*BRIDGE, "serve", "--stop-on-eof", "--config", str(config), "--port", "0"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV | {"XDG_STATE_HOME": str(tmp)},
        )
        try:
            yield wait_for(bridge.stderr, rb"Running on (http://\S+)")[1].decode()
        finally:
            bridge.terminate()
            bridge.wait(20)


def test_a_bridged_services_form_comes_from_its_proto(page: Page, teller: str) -> None:
    page.goto(teller + "/")
    page.wait_for_selector("#inputs [name=topic]")
    captions = page.locator("#inputs .caption").all_text_contents()
    assert captions == [
        "topic string · required",
        "max_words integer",
        "tone string",
        "loud boolean",
        "names array",
        "seed any",
        "style object",
    ]  # each field once: maxWords, its lowerCamel spelling, is not a second box
    hints = page.locator("#inputs .hint").all_text_contents()
    assert hints[0] == "What the story is about."
    assert hints[1] == "The most words it may take. · -2147483648 to 2147483647"
    tone = page.locator("#inputs [name=tone] option").all_text_contents()
    assert tone == ["(default)", "TONE_UNSPECIFIED", "GRIM", "MERRY"]
    page.fill("#inputs [name=topic]", "the fox")
    page.select_option("#inputs [name=tone]", "MERRY")
    page.check("#inputs [name=loud]")
    page.fill("#inputs [name=names]", "Ann\nBo")
    page.fill("#inputs [name=seed]", "9007199254740993")  # past a double's exact range
    page.fill("#inputs [name=style]", '{"voice": "owl"}')
    page.click("#start")
    page.wait_for_selector('#status[data-status="succeeded"]', timeout=30_000)
    assert page.text_content("#output") == "MERRY THE FOX ANN BO OWL 9007199254740993 "


def test_a_model_whose_setup_failed_says_why_on_the_page(page: Page, tmp_path: Path) -> None:
    """The page shows why a model serves nothing, as its backend's
    Describe says it (its setup() raised), above the model's form."""
    from tests.test_author_loop import BROKEN

    (tmp_path / "broken.py").write_text(BROKEN)
    procs = []
    try:
        model = subprocess.Popen(
            [*BRIDGE, "serve-model", "broken.py:Broken", "--name", "me/broken", "--port", "0",
             "--stop-on-eof", "--setup-failure-seconds", "inf"],
            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=ENV,
        )  # fmt: skip
        procs.append(model)
        target = wait_for(model.stdout, rb"listening on (\S+)")[1].decode()
        wait_for(model.stderr, rb"setup failed")
        config = tmp_path / "bridge.toml"
        config.write_text(f'[models."me/broken"]\ntargets = ["{target}"]\n')
        server = subprocess.Popen(
            [*BRIDGE, "serve", "--stop-on-eof", "--config", str(config), "--port", "0"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        procs.append(server)
        url = wait_for(server.stderr, rb"Running on (http://\S+)")[1].decode()
        page.goto(url + "/")
        page.wait_for_selector(".model-note", timeout=30_000)
        assert page.text_content(".model-note") == "setup failed: weights file not found"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(20)
