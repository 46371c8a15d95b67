"""The prediction lifecycle table and the event log, without any I/O."""

from __future__ import annotations

import json

import pytest
import trio

from bridge.config import ConfigError, Settings
from bridge.core.events import OutputBatch
from bridge.core.predictions import IllegalTransition, Prediction, Status
from bridge.http.replicate_json import prediction_json
from tests.sse_clients import Ev, replicate_events, spec_events


def make() -> Prediction:
    return Prediction(model="o/m", version="v", input={"prompt": "x"})


def events(p: Prediction, start: int = 0) -> list[Ev]:
    """The prediction's log from *start* on, read as a client reads it."""
    data, end, _ = p.events.read(start, limit=10**9)
    assert end == len(p.events)
    assert replicate_events([data]) == spec_events([data])
    return spec_events([data])


def test_happy_path_and_final_event() -> None:
    p = make()
    p.start()
    p.add_output(OutputBatch(["a", {"k": 1}]))
    p.add_log("line")
    p.succeed()
    assert p.status is Status.SUCCEEDED
    names = [e.event for e in events(p)]
    assert names == ["output", "output", "logs", "done"]
    assert events(p)[1].data == '{"k": 1}'
    assert p.events.closed
    body = prediction_json(p, "http://h")
    assert body["output"] == ["a", {"k": 1}] and body["logs"] == "line\n"
    assert set(body["metrics"]) >= {"predict_time", "time_to_first_token"}


@pytest.mark.parametrize("end", ["succeed", "fail", "cancel"])
def test_terminal_states_are_final(end: str) -> None:
    p = make()
    getattr(p, end)(*(["boom"] if end == "fail" else []))
    assert p.done
    for again in (p.start, p.succeed, p.cancel, lambda: p.fail("x")):
        with pytest.raises(IllegalTransition):
            again()
    assert [e.event for e in events(p)][-1] == "done"
    assert len(p.events) == (2 if end == "fail" else 1)


#: The lifecycle, written out again here (not read from the code under test).
ALLOWED = {
    ("starting", "processing"),
    ("starting", "succeeded"),
    ("starting", "failed"),
    ("starting", "canceled"),
    ("processing", "succeeded"),
    ("processing", "failed"),
    ("processing", "canceled"),
}
#: How to move a prediction to each status.
MOVE = {
    "processing": lambda p: p.start(),
    "succeeded": lambda p: p.succeed(),
    "failed": lambda p: p.fail("boom"),
    "canceled": lambda p: p.cancel(),
}


@pytest.mark.parametrize("to", [s.value for s in Status])
@pytest.mark.parametrize("frm", [s.value for s in Status])
def test_the_whole_transition_table(frm: str, to: str) -> None:
    """Every status x status pair: allowed ones move, every other raises and
    leaves the prediction (and its event log) as it was."""
    p = make()
    if frm != "starting":
        if frm != "processing":
            p.start()  # any path there will do; starting -> end is covered too
        MOVE[frm](p)
    assert p.status == frm
    logged = len(p.events)
    if to == "starting":  # nothing moves a prediction back to starting
        assert (frm, to) not in ALLOWED
        return
    if (frm, to) in ALLOWED:
        MOVE[to](p)
        assert p.status == to
        assert p.events.closed == Status(to).terminal
    else:
        with pytest.raises(IllegalTransition):
            MOVE[to](p)
        assert p.status == frm and len(p.events) == logged


def test_failure_writes_error_then_done() -> None:
    p = make()
    p.fail("it broke")
    assert [(e.event, json.loads(e.data)) for e in events(p)] == [
        ("error", {"detail": "it broke"}),
        ("done", {"reason": "error"}),
    ]
    assert prediction_json(p, "http://h")["error"] == "it broke"


def test_cannot_start_twice() -> None:
    p = make()
    p.start()
    with pytest.raises(IllegalTransition):
        p.start()


def test_ids_are_seconds_and_index() -> None:
    p = make()
    p.add_output(OutputBatch(["a", "b", "c"]))
    ids = [e.id for e in events(p)]
    assert [int(i.split(":")[1]) for i in ids] == [0, 1, 2]
    assert p.events.index_after(ids[1]) == 2
    for bad in ("", "abc", "1:", ":1", "1:x", "-1:2"):
        with pytest.raises(ValueError, match="Last-Event-ID"):
            p.events.index_after(bad)


async def test_readers_wake_on_append_and_close() -> None:
    p = make()
    woke = []

    async def reader() -> None:
        await p.events.wait_beyond(0)
        woke.append(len(p.events))
        await p.events.wait_beyond(5)
        woke.append(p.events.closed)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        p.add_output(OutputBatch(["a"]))
        await trio.testing.wait_all_tasks_blocked()
        p.succeed()
    assert woke == [1, True]


def test_config_from_toml(tmp_path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        '[models."demo/echo"]\ntargets = ["127.0.0.1:50051"]\n'
        '[server]\nping_seconds = 5\npublic_url = "https://x.example/"\n'
        '[deployments."acme/teller"]\nmodel = "demo/echo"\n'
        '[metrics]\ntoken = "m_scraper"\n'
    )
    settings = Settings.from_toml(path, port=9000)
    assert settings.metrics_token == "m_scraper"
    assert settings.deployments["acme/teller"].model == "demo/echo"
    assert settings.models["demo/echo"].targets == ("127.0.0.1:50051",)
    assert settings.ping_seconds == 5 and settings.port == 9000
    assert settings.public_url == "https://x.example"


def test_a_renamed_setting_is_read_under_its_old_name_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """keepalive_seconds (the SSE ping, beside keep_alive_seconds: an idle
    connection) is now ping_seconds; the old name still works, and says so."""
    with caplog.at_level("WARNING", logger="bridge.config"):
        settings = Settings.from_dict({"server": {"keepalive_seconds": 7}})
    assert settings.ping_seconds == 7
    assert "[server] keepalive_seconds is deprecated: it is now ping_seconds" in caplog.text
    with pytest.raises(ConfigError, match="set only ping_seconds"):
        Settings.from_dict({"server": {"keepalive_seconds": 7, "ping_seconds": 7}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."echo"]\ntargets = ["a:1"]', "owner/name"),
        ('[models."demo/echo"]\ntargets = []', "targets"),
        ('[models."demo/echo"]\n', "targets"),
        ("[server]\nprot = 1", "unknown"),
        ("not toml [", "cannot read"),
        ('[server]\nport = "eighty"', r"\[server\] port: expected `int`, got `str`"),
        ("[server]\nport = 70000", r"\[server\] port: expected `int` <= 65535"),
        ("[server]\nmax_running = -3", r"\[server\] max_running: expected `int` >= 1"),
        ("[server]\nping_seconds = 0", r"ping_seconds: expected `float` > 0"),
        ("[server]\nmax_queued = 1.5", r"max_queued: expected `int`, got `float`"),
        ('[server]\npublic_url = "bridge.example"', r"public_url: expected `str` matching"),
        ('[auth]\ntokens = "r8_abc"', r"\[auth\] tokens: expected `array`, got `str`"),
        ('[metrics]\ntoken = ""', r"\[metrics\] token: expected `str` of length >= 1"),
        ('[metrics]\ntokens = ["m"]', r"unknown \[metrics\] keys: tokens"),
        ('[auth]\ntokens = ["r8_abc", ""]', r"\[auth\] tokens\[1\]: expected `str` of length"),
        ("[webhooks]\nallow_private = 1", r"\[webhooks\] allow_private: expected `bool`"),
        ('[webhooks]\nsecret = "hunter2"', r"\[webhooks\] secret: expected `str` matching"),
        ("server = 5", r"\[server\] must be a table"),
        (
            '[models."demo/echo"]\ntargets = ["a:1"]\nidle_seconds = "ten"',
            r'\[models."demo/echo"\] idle_seconds: expected `float \| null`, got `str`',
        ),
        (
            '[models."demo/echo"]\ntargets = ["a:1"]\nmax_running = 0',
            r'\[models."demo/echo"\] max_running: expected `int` >= 1',
        ),
        ('[models."demo/echo"]\ntargets = "a:1"', r"targets: expected `array`, got `str`"),
        (
            '[deployments."acme/teller"]\nmodel = "demo/none"',
            r'\[deployments."acme/teller"\] model must name a model configured in \[models\]',
        ),
        ('[deployments."teller"]\nmodel = "demo/none"', "deployment name 'teller' is not"),
        ('[deployments."acme/teller"]\nmodle = "x"', r'unknown \[deployments."acme/teller"\]'),
        (
            "[server]\nretention_seconds = 60\nmetadata_retention_seconds = 30",
            r"metadata_retention_seconds must be at least retention_seconds \(60\)",
        ),
        (
            "[server]\nmetadata_retention_count = 10",
            r"metadata_retention_count must be at least retention_count \(10000\)",
        ),
        ('[server]\ncertfile = "/etc/hostname"', r"certfile and keyfile go together"),
        (
            '[server]\ncertfile = "/no/cert.pem"\nkeyfile = "/no/key.pem"',
            r"\[server\] certfile: cannot read /no/cert.pem",
        ),
        ("[server]\nmax_connections = 0", r"\[server\] max_connections: expected `int` >= 1"),
        ("[server]\nh2c = 1", r"\[server\] h2c: expected `bool`"),
        ('[server]\nallowed_hosts = "x"', r"\[server\] allowed_hosts: expected `array`"),
        ("[server]\nbody_timeout_seconds = 0", r"body_timeout_seconds: expected `float` > 0"),
    ],
)
def test_config_errors_say_what_is_wrong(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.from_toml(path)
    assert str(path) in str(raised.value)  # which file


def _states() -> list[Prediction]:
    made = []
    for end in ("starting", "processing", "succeeded", "failed", "canceled", "removed"):
        prediction = Prediction(
            model="o/m", version="v1", input={"prompt": "héllo", "n": [1, 2]}, seq=7, owner="t"
        )
        if end != "starting":
            prediction.add_output(OutputBatch(["a", {"k": 1}]))
            prediction.add_log("a line")
            prediction.add_metrics({"input_token_count": 3.0}, 25)
        if end in ("succeeded", "removed"):
            prediction.succeed()
        elif end == "failed":
            prediction.fail("it broke")
        elif end == "canceled":
            prediction.cancel()
        if end == "removed":
            prediction.remove_data()
        made.append(prediction)
    return made


@pytest.mark.parametrize("prediction", _states(), ids=lambda p: str(p.status))
def test_a_prediction_is_rebuilt_from_its_record_through_json(prediction: Prediction) -> None:
    """What a store kept in another process would hold: its record as JSON,
    and its events in its log. The rebuilt prediction shows the same
    object to clients, and gives the same record."""
    record = json.loads(json.dumps(prediction.record()))
    rebuilt = Prediction.from_record(record, prediction.events)
    assert rebuilt.record() == prediction.record()
    assert prediction_json(rebuilt, "http://x") == prediction_json(prediction, "http://x")
    assert rebuilt.kept_bytes == prediction.kept_bytes
    assert set(record) == set(Prediction.RECORD_FIELDS)
