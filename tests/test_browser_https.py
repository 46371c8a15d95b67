"""HTTPS with HTTP/2 in a real Chromium: one origin, ten live streams at
once (HTTP/1.1 lets a browser open six connections to an origin, so a
page with ten EventSources saw four of them wait for others to end)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from playwright.sync_api import sync_playwright

from tests.backends import ENV
from tests.helpers import ARGS, BRIDGE, CHROMIUM, wait_for

TEN_STREAMS = """async ([n]) => {
  const streams = [];
  for (let i = 0; i < n; i++) {
    const answer = await fetch("/v1/models/demo/echo/predictions", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({input: {prompt: "a b c d e f g h i j", delay_ms: 300}}),
    });
    streams.push((await answer.json()).urls.stream);
  }
  const protocols = performance.getEntriesByType("resource").map((e) => e.nextHopProtocol);
  return await new Promise((resolve) => {
    const live = new Set();
    let liveAtFirstDone = null, ended = 0, text = [];
    streams.forEach((url, i) => {
      text[i] = "";
      const source = new EventSource(url);
      source.addEventListener("output", (e) => { live.add(i); text[i] += e.data; });
      source.addEventListener("done", () => {
        source.close();
        if (liveAtFirstDone === null) liveAtFirstDone = live.size;
        if (++ended === n) resolve({liveAtFirstDone, protocols, text});
      });
    });
  });
}"""


@pytest.fixture(scope="module")
def https_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bridge and demo backends as processes, the bridge on HTTPS with
    a certificate for localhost from a CA made for the test."""
    tmp = tmp_path_factory.mktemp("https")
    cert = trustme.CA().issue_cert("localhost")
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    config = tmp / "bridge.toml"
    config.write_text(f'[server]\ncertfile = "{certfile}"\nkeyfile = "{keyfile}"\n')
    env = ENV | {"XDG_STATE_HOME": str(tmp)}
    bridge = subprocess.Popen(
        [*BRIDGE, "run-demo", "--stop-on-eof", "--port", "0", "--config", str(config)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        url = wait_for(bridge.stderr, rb"Running on (https://\S+)")[1].decode()
        yield url.replace("127.0.0.1", "localhost")
    finally:
        bridge.terminate()
        bridge.wait(20)


def test_ten_event_sources_stream_at_once_over_http2(https_bridge: str, tmp_path: Path) -> None:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            ignore_https_errors=True,  # the test's own CA is not the system's
        )
        try:
            page = context.new_page()
            page.goto(f"{https_bridge}/")
            result = page.evaluate(TEN_STREAMS, [10])
        finally:
            context.close()
    assert set(result["protocols"]) == {"h2"}, result["protocols"]
    assert result["liveAtFirstDone"] == 10, result
    assert result["text"] == ["a b c d e f g h i j"] * 10
