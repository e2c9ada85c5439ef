"""The alerter as a real process on a real broker, delivering to real HTTP receivers and Alertmanager."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, VV, Probe, Publisher, free_port, read_lines, wait_until

from bus import codec
from bus.alerts import Severity, build_alert
from bus.config import ConfigError
from bus.envelope import JSON, MSGPACK, parse_time
from nodes.alerter.channels import ChannelError, load_channels
from nodes.alerter.queue import DiskQueue

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
FAST = {
    "VV_ALERTER_GROUP_WAIT_S": "0.2",
    "VV_ALERTER_GROUP_INTERVAL_S": "0.2",
    "VV_ALERTER_RETRY_MIN_S": "0.05",
    "VV_ALERTER_RETRY_MAX_S": "0.3",
    "VV_ALERTER_SEND_TIMEOUT_S": "5",
}


class Receiver:
    """A real HTTP server on loopback that records every POSTed JSON body with its path."""

    def __init__(self, port: int = 0) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.status = 202  # what it answers
        self.answer = threading.Event()  # cleared: a POST is recorded at once but answered only once set
        self.answer.set()
        lock = self.lock = threading.Lock()
        posts = self.posts
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    posts.append((self.path, json.loads(body)))
                outer.answer.wait(30)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body in self.posts if p == path]

    def wait(
        self, path: str, predicate: Callable[[list[Any]], bool], what: str, timeout: float = 15
    ) -> list[Any]:
        return wait_until(lambda: predicate(b := self.bodies(path)) and b, timeout, what)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.answer.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def alert(
    title: str, severity: Severity = "WARNING", source: str = "disk", resolved: bool = False, **ctx: Any
) -> dict[str, Any]:
    return build_alert(
        severity=severity,
        title=title,
        details=f"{title}: what happened, in words that may change",
        source=source,
        device="edge1",
        context=ctx,
        actions=["Free some space", "Call the on-call"],
        status="resolved" if resolved else "firing",
    )


def publish_alert(publisher: Publisher, doc: dict[str, Any]) -> None:
    publisher.publish(publisher.event(f"alert.{doc['severity'].lower()}", doc))


def parse(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The alerts of one Apprise json:// body: status, severity, title, count, alert id per section."""
    found = []
    for section in message["message"].split("\n\n---\n\n"):
        head = re.match(r"\[(FIRING|RESOLVED)\] (\w+): (.*)", section)
        assert head, section
        found.append(
            {
                "status": head[1].lower(),
                "severity": head[2],
                "title": head[3],
                "count": int(re.search(r"count: (\d+)", section)[1]),  # type: ignore[index]
                "alert_id": re.search(r"Alert id: ([0-9a-f]{64})", section)[1],  # type: ignore[index]
            }
        )
    return found


def received(receiver: Receiver, path: str) -> list[tuple[str, str, int]]:
    return [(a["title"], a["status"], a["count"]) for body in receiver.bodies(path) for a in parse(body)]


def start_alerter(
    vv: VV, probe: Probe, channels: list[dict[str, Any]], **env: str
) -> subprocess.Popen[bytes]:
    seen = len(probe.health("alerter"))
    proc = vv.spawn("run", "alerter", extra_env={**FAST, "VV_ALERTER_CHANNELS": json.dumps(channels), **env})
    probe.wait_health("alerter", "online", after=seen)
    return proc


def hook(port: int, path: str = "/hook", min_severity: str = "INFO", name: str = "hook") -> dict[str, Any]:
    return {
        "kind": "apprise",
        "name": name,
        "url": f"json://127.0.0.1:{port}{path}",
        "min_severity": min_severity,
    }


def test_burst_reaches_the_receiver_once_with_its_count_then_the_resolve(
    vv: VV, probe: Probe, publisher: Publisher, receiver: Receiver
) -> None:
    """100 repeats inside the group wait: one notification saying x100; the resolve follows, nothing else.

    The 3 s group wait covers the burst: 100 QoS 1 publishes, each acknowledged, take under 1 s here
    even with the test broker saving on every change.
    """
    start_alerter(vv, probe, [hook(receiver.port)], VV_ALERTER_GROUP_WAIT_S="3")
    doc = alert("Disk space low", mount="/srv")
    for _ in range(100):
        publish_alert(publisher, {**doc, "message_details": f"{doc['message_details']} (try {_})"})
    [first] = receiver.wait("/hook", lambda b: len(b) >= 1, "the first notification")
    assert first["type"] == "warning"
    assert first["title"] == "[WARNING] Disk space low on edge1 (x100)"
    assert parse(first) == [
        {
            "status": "firing",
            "severity": "WARNING",
            "title": "Disk space low",
            "count": 100,
            "alert_id": doc["alert_id"],
        }
    ]
    body = first["message"]  # what a person reads: what, where, how often, what to do, context
    for text in ("device: edge1", "source: disk", "(try 99)", "- Free some space", "Context: mount=/srv"):
        assert text in body
    publish_alert(publisher, alert("Disk space low", resolved=True, mount="/srv"))
    receiver.wait("/hook", lambda b: len(b) >= 2, "the resolve")
    assert received(receiver, "/hook") == [
        ("Disk space low", "firing", 100),
        ("Disk space low", "resolved", 100),
    ]
    assert receiver.bodies("/hook")[1]["type"] == "success"


def test_receiver_down_then_up_loses_nothing(vv: VV, probe: Probe, publisher: Publisher) -> None:
    port = free_port()  # nothing listens here yet
    start_alerter(vv, probe, [hook(port)])
    publish_alert(publisher, alert("Stream down", source="dvr", stream="cam1"))
    degraded = probe.wait_health("alerter", "degraded")
    assert "channel hook failing" in degraded["reason"]
    assert degraded["details"]["channels"]["hook"]["queued"] >= 1
    publish_alert(publisher, alert("Disk space low", mount="/"))
    health = wait_until(
        lambda: next(
            (h for h in reversed(probe.health("alerter")) if h["details"]["channels"]["hook"]["queued"] == 2),
            None,
        ),
        10,
        "both notifications queued",
    )
    assert health["status"] == "degraded" and health["details"]["channels"]["hook"]["failures"] >= 1
    seen = len(probe.health("alerter"))
    up = Receiver(port)
    try:
        up.wait("/hook", lambda b: len(b) >= 2, "the queued notifications")
        assert received(up, "/hook") == [("Stream down", "firing", 1), ("Disk space low", "firing", 1)]
        back = wait_until(
            lambda: next(
                (
                    h
                    for h in probe.health("alerter")[seen:]
                    if h["status"] == "online" and h["details"]["channels"]["hook"]["queued"] == 0
                ),
                None,
            ),
            10,
            "health online with an empty queue",
        )
        assert back["details"]["channels"]["hook"]["sent"] == 2
    finally:
        up.close()


def test_restart_does_not_page_again(vv: VV, probe: Probe, publisher: Publisher, receiver: Receiver) -> None:
    proc = start_alerter(vv, probe, [hook(receiver.port)])
    publish_alert(publisher, alert("Disk space low", mount="/"))
    receiver.wait("/hook", lambda b: len(b) >= 1, "the first notification")
    proc.terminate()
    assert proc.wait(15) == 0
    start_alerter(vv, probe, [hook(receiver.port)])
    publish_alert(publisher, alert("Disk space low", mount="/"))  # the same alert again: folded
    publish_alert(publisher, alert("Disk space low", mount="/data"))  # a new one in the same group
    receiver.wait("/hook", lambda b: len(b) >= 2, "the second notification")
    # the group's update carries only what changed: the repeat was folded into the known alert
    assert received(receiver, "/hook") == [("Disk space low", "firing", 1), ("Disk space low", "firing", 1)]
    assert [a["alert_id"] for b in receiver.bodies("/hook") for a in parse(b)] == [
        alert("Disk space low", mount="/")["alert_id"],
        alert("Disk space low", mount="/data")["alert_id"],
    ]


def test_stop_during_a_delivery_finishes_it_and_does_not_page_again(
    vv: VV, probe: Probe, publisher: Publisher, receiver: Receiver
) -> None:
    """SIGTERM while a notification waits for the receiver's answer: the alerter waits for the answer,
    so the notification leaves its queue and the next start does not send it a second time."""
    proc = start_alerter(vv, probe, [hook(receiver.port)])
    receiver.answer.clear()
    publish_alert(publisher, alert("Disk space low", mount="/"))
    receiver.wait("/hook", lambda b: len(b) >= 1, "the first notification")
    seen = len(probe.health("alerter"))
    proc.terminate()
    probe.wait_health("alerter", "offline", after=seen)  # its session is over; the answer is still due
    receiver.answer.set()
    assert proc.wait(15) == 0
    start_alerter(vv, probe, [hook(receiver.port)])
    publish_alert(publisher, alert("Disk space low", mount="/data"))
    receiver.wait("/hook", lambda b: len(b) >= 2, "the second notification")
    assert [a["alert_id"] for b in receiver.bodies("/hook") for a in parse(b)] == [
        alert("Disk space low", mount="/")["alert_id"],
        alert("Disk space low", mount="/data")["alert_id"],
    ]


def test_silence_mutes_then_unsilence_lets_it_through(
    vv: VV, probe: Probe, publisher: Publisher, receiver: Receiver
) -> None:
    start_alerter(vv, probe, [hook(receiver.port)])
    publisher.publish(publisher.event("cmd.alerter.silence", {"args": {"matcher": {"title": "Noisy"}}}))
    refused = probe.wait_event("alert.error")[0]["data"]  # a bad command is refused with the reason
    assert "exactly one of `until`" in refused["message_details"]
    silence = {"args": {"matcher": {"title": "Noisy"}, "duration_s": 300}, "reason": "maintenance"}
    publisher.publish(publisher.event("cmd.alerter.silence", silence))
    wait_until(
        lambda: any(h["details"]["alerts"]["silences"] for h in probe.health("alerter")),
        10,
        "silence in health",
    )
    publish_alert(publisher, alert("Noisy", source="scan"))
    publish_alert(publisher, alert("Other", source="scan"))

    def scan_alerts() -> list[tuple[str, str, int]]:  # the refusal above is an alert of the alerter's own
        return [a for a in received(receiver, "/hook") if a[0] in ("Noisy", "Other")]

    wait_until(scan_alerts, 15, "the unsilenced alert")
    assert scan_alerts() == [("Other", "firing", 1)]  # same group, same flush: Noisy was muted
    publisher.publish(publisher.event("cmd.alerter.unsilence", {"args": {"matcher": {"title": "Noisy"}}}))
    wait_until(lambda: len(scan_alerts()) >= 2, 15, "the alert once unsilenced")
    assert scan_alerts() == [("Other", "firing", 1), ("Noisy", "firing", 1)]


def test_min_severity_routing_and_pagerduty_dedup_key(
    vv: VV, probe: Probe, publisher: Publisher, receiver: Receiver
) -> None:
    channels = [
        hook(receiver.port, "/all", "INFO", "all"),
        hook(receiver.port, "/crit", "CRITICAL", "crit"),
        {
            "kind": "pagerduty",
            "name": "pd",
            "routing_key": "R0UT1NGKEY",
            "url": f"http://127.0.0.1:{receiver.port}/v2/enqueue",
            "min_severity": "ERROR",
        },
    ]
    start_alerter(vv, probe, channels)
    warning = alert("Motion gating slow", source="scan")
    critical = alert("Detector crashed", "CRITICAL", source="scan", video="ab" * 16)
    publish_alert(publisher, warning)
    publish_alert(publisher, critical)
    receiver.wait("/v2/enqueue", lambda b: len(b) >= 1, "the PagerDuty trigger")
    publish_alert(
        publisher, alert("Detector crashed", "CRITICAL", source="scan", resolved=True, video="ab" * 16)
    )
    receiver.wait("/v2/enqueue", lambda b: len(b) >= 2, "the PagerDuty resolve")
    receiver.wait("/crit", lambda b: len(b) >= 2, "the critical channel's resolve")
    receiver.wait("/all", lambda b: len(b) >= 2, "the resolve on the INFO channel")
    assert sorted(received(receiver, "/all")[:2]) == [
        ("Detector crashed", "firing", 1),
        ("Motion gating slow", "firing", 1),
    ]
    assert received(receiver, "/all")[2:] == [("Detector crashed", "resolved", 1)]
    assert received(receiver, "/crit") == [
        ("Detector crashed", "firing", 1),
        ("Detector crashed", "resolved", 1),
    ]
    trigger, resolve = receiver.bodies("/v2/enqueue")
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == critical["alert_id"]
    assert trigger["routing_key"] == "R0UT1NGKEY"
    assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["source"] == "edge1"
    assert trigger["payload"]["custom_details"]["context"] == {"video": "ab" * 16}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)")
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: default\nreceivers:\n  - name: default\n")
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("ab")
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"alertmanager exited: {(tmp_path / 'alertmanager.log').read_text()[-2000:]}")
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200  # type: ignore[no-any-return]
        except OSError:
            return False

    wait_until(ready, 20, "alertmanager to be ready")
    yield url
    proc.terminate()
    proc.wait(10)


def test_alertmanager_receives_lists_and_resolves(
    vv: VV, probe: Probe, publisher: Publisher, alertmanager: str
) -> None:
    start_alerter(
        vv, probe, [{"kind": "alertmanager", "url": alertmanager, "min_severity": "INFO", "resend_s": 0.5}]
    )
    doc = alert("Storage unwritable", "CRITICAL", source="monitor", path="/var/lib/vv")

    def ours() -> list[dict[str, Any]]:
        return [
            a
            for a in get_json(f"{alertmanager}/api/v2/alerts")
            if a["labels"].get("dedup_key") == doc["alert_id"]
        ]

    publish_alert(publisher, doc)
    [listed] = wait_until(ours, 15, "the alert listed by Alertmanager")
    assert listed["status"]["state"] == "active"
    assert listed["labels"] == {
        "alertname": "Storage unwritable",
        "severity": "critical",
        "device": "edge1",
        "source_component": "monitor",
        "dedup_key": doc["alert_id"],
    }
    assert listed["annotations"]["suggested_actions"] == "Free some space\nCall the on-call"
    publish_alert(
        publisher,
        alert("Storage unwritable", "CRITICAL", source="monitor", resolved=True, path="/var/lib/vv"),
    )
    wait_until(
        lambda: not any(a["status"]["state"] == "active" for a in ours()),
        15,
        "the alert resolved in Alertmanager",
    )
    # the refresh only re-sends what is still firing: the resolved alert stays resolved
    health = probe.wait_health("alerter", "online", after=len(probe.health("alerter")))
    assert health["details"]["alerts"]["firing"] == 0
    assert not any(a["status"]["state"] == "active" for a in ours())


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ('[{"kind": "carrier-pigeon"}]', "alerter.channels[0].kind"),
        ('[{"kind": "apprise"}]', "needs `url` or `urls`"),
        ('[{"kind": "apprise", "url": "nosuchscheme://x"}]', "Apprise does not understand"),
        ('[{"kind": "pagerduty"}]', "alerter.channels[0].routing_key: missing"),
        ('[{"kind": "alertmanager", "url": "http://am", "min_severity": "LOUD"}]', "min_severity"),
        ('[{"kind": "alertmanager", "url": "http://am", "colour": 1}]', "unknown key(s) colour"),
        (
            '[{"kind": "apprise", "url": "json://a"}, {"kind": "apprise", "name": "apprise-1", "url": "json://b"}]',
            "used twice",
        ),
        ("{not json", "alerter.channels: cannot read"),
        ("[1, 2]", "expected a list of channel tables"),
    ],
)
def test_bad_channel_config_names_the_key(channels: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_channels(channels)


def test_alerter_with_a_bad_channel_stops_at_start_with_one_line(vv: VV) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "run", "alerter"],
        env={**vv.env, "VV_ALERTER_CHANNELS": '[{"kind": "apprise", "url": "nosuchscheme://secret@x"}]'},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "vv: configuration error: alerter.channels[0].urls[0]: "
        "Apprise does not understand this URL (scheme 'nosuchscheme')"
    )


def test_channel_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "channels.toml"
    toml.write_text(
        '[[channels]]\nkind = "apprise"\nurls = ["json://127.0.0.1:9/a", "ntfy://ntfy.sh/topic"]\n'
        '[[channels]]\nkind = "pagerduty"\nrouting_key = "secret-key"\nmin_severity = "CRITICAL"\n'
    )
    apprise_channel, pagerduty = load_channels(str(toml))
    assert (apprise_channel.name, apprise_channel.min_severity) == ("apprise", "WARNING")
    assert (pagerduty.name, pagerduty.min_severity) == ("pagerduty", "CRITICAL")
    assert "secret-key" not in pagerduty.target()
    as_json = tmp_path / "channels.json"
    as_json.write_text(json.dumps({"channels": [{"kind": "alertmanager", "url": "http://am:9093/"}]}))
    [am] = load_channels(str(as_json))
    assert am.target() == "http://am:9093/api/v2/alerts" and am.resend_s == 60.0
    with pytest.raises(ChannelError, match="refused"):
        am_local = load_channels(
            json.dumps([{"kind": "alertmanager", "url": f"http://127.0.0.1:{free_port()}"}])
        )[0]
        am_local.send([alert("x")], "g", timeout=2)


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (429, True), (503, True)])
def test_http_refusals_say_whether_a_retry_can_help(receiver: Receiver, status: int, retryable: bool) -> None:
    receiver.status = status
    [pd] = load_channels(
        json.dumps([{"kind": "pagerduty", "routing_key": "k", "url": f"http://127.0.0.1:{receiver.port}/e"}])
    )
    view = {**alert("x", "CRITICAL"), "starts_at": None, "ends_at": None}
    with pytest.raises(ChannelError, match=f"HTTP {status}") as refused:
        pd.send([view], "edge1/disk", timeout=5)
    assert refused.value.retryable is retryable


def test_disk_queue_is_bounded_durable_and_sets_unreadable_items_aside(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path / "q", max_items=3)
    for number in range(5):
        queue.put({"n": number})
    assert len(queue) == 3 and queue.dropped == 2  # the oldest went first
    reopened = DiskQueue(tmp_path / "q", max_items=3)
    first = reopened.peek()
    assert first is not None and first[1] == {"n": 2}
    first[0].write_text("{torn")
    second = reopened.peek()
    assert second is not None and second[1] == {"n": 3}
    assert len(list((tmp_path / "q").glob("*.corrupt"))) == 1
    reopened.remove(second[0])
    reopened.put({"n": 5})
    assert [json.loads(p.read_text())["n"] for p in sorted((tmp_path / "q").glob("*.json"))] == [4, 5]


# ----------------------------------------------------------------------------- the fleet console's commands
def alerter_health(probe: Probe, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The first health document of the alerter whose details satisfy `predicate`."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: next((h for h in probe.health("alerter") if predicate(h["details"])), None), 15, what
    )


def test_ack_stops_renotification_until_the_alert_resolves(
    vv: VV, probe: Probe, publisher: Publisher, receiver: Receiver
) -> None:
    """Repeats every 0.5 s: the control alert repeats, the acked one does not; its resolve still goes
    out, and firing again after the resolve is a new episode, notified again."""
    start_alerter(vv, probe, [hook(receiver.port)], VV_ALERTER_REPEAT_INTERVAL_S="0.5")
    acked, control = alert("Disk space low", mount="/"), alert("Stream down", source="dvr", stream="cam1")
    publish_alert(publisher, acked)
    publish_alert(publisher, control)
    receiver.wait("/hook", lambda b: len(b) >= 2, "both alerts notified")
    ack = {
        "args": {"dedup_key": acked["dedup_key"], "comment": "on it"},
        "author": "alice",
        "reason": "on it",
    }
    publisher.publish(publisher.event("cmd.alerter.ack", ack))
    health = alerter_health(probe, lambda d: d["alerts"]["acked"], "the ack in health")
    [shown] = health["details"]["alerts"]["acked"]
    assert (shown["dedup_key"], shown["by"], shown["comment"]) == (acked["dedup_key"], "alice", "on it")
    before = received(receiver, "/hook").count(("Disk space low", "firing", 1))
    receiver.wait(  # three repeats of the control alert after the ack: time enough for the acked one
        "/hook",
        lambda b: received(receiver, "/hook")[-3:] == [("Stream down", "firing", 1)] * 3,
        "the control alert repeated",
    )
    assert received(receiver, "/hook").count(("Disk space low", "firing", 1)) == before
    publish_alert(publisher, alert("Disk space low", resolved=True, mount="/"))
    receiver.wait(
        "/hook", lambda b: ("Disk space low", "resolved", 1) in received(receiver, "/hook"), "resolve"
    )
    alerter_health(probe, lambda d: not d["alerts"]["acked"], "the ack gone with the resolve")
    told = len(received(receiver, "/hook"))
    publish_alert(publisher, acked)  # a new episode after the resolve
    receiver.wait(
        "/hook",
        lambda b: ("Disk space low", "firing", 1) in received(receiver, "/hook")[told:],
        "the new episode notified",
    )


def test_silence_from_the_console_keeps_author_and_comment_and_expires_on_time(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    """Default alerter settings; the silence's short life is the command's own `duration_s`."""
    seen = len(probe.health("alerter"))
    vv.spawn("run", "alerter")
    probe.wait_health("alerter", "online", after=seen)
    args = {"matcher": {"title": "Noisy"}, "duration_s": 3}
    until = "2099-01-01T00:00:00Z"  # the command's expiry, not the silence's end
    publisher.publish(
        publisher.event(
            "cmd.alerter.silence", {"args": args, "until": until, "author": "bob", "reason": "swap"}
        )
    )
    health = alerter_health(probe, lambda d: d["alerts"]["silences"], "the silence in health")
    [silence] = health["details"]["alerts"]["silences"]
    assert (silence["matcher"], silence["author"], silence["reason"]) == ({"title": "Noisy"}, "bob", "swap")
    end = parse_time(silence["until"]).timestamp()
    assert end - parse_time(health["time"]).timestamp() <= 3
    shown_at = next(i for i, h in enumerate(probe.health("alerter")) if h["details"]["alerts"]["silences"])
    gone = wait_until(
        lambda: next(
            (h for h in probe.health("alerter")[shown_at:] if not h["details"]["alerts"]["silences"]), None
        ),
        15,
        "the silence to expire",
    )
    assert end <= parse_time(gone["time"]).timestamp() <= end + 2.0  # health every 0.5 s here


def test_expired_command_is_logged_not_applied(vv: VV, probe: Probe, publisher: Publisher) -> None:
    """A command older than its `until` (it waited out a link outage) is dropped by the bus before
    any handler, logged with its id and how late, and acknowledged (never redelivered)."""
    start_alerter(vv, probe, [])
    stale = publisher.event(
        "cmd.alerter.silence",
        {"args": {"matcher": {"title": "Old"}, "duration_s": 600}, "until": "2020-01-01T00:00:00Z"},
    )
    publisher.publish(stale)
    fresh = {"args": {"matcher": {"title": "New"}, "duration_s": 600}, "until": "2099-01-01T00:00:00Z"}
    publisher.publish(publisher.event("cmd.alerter.silence", fresh))
    health = alerter_health(probe, lambda d: d["alerts"]["silences"], "the fresh silence")
    assert [s["matcher"] for s in health["details"]["alerts"]["silences"]] == [{"title": "New"}]
    assert health["details"]["expired_commands"] == 1 and health["details"]["dead_letters"] == 0
    logged = [
        line
        for line in read_lines(vv.home / "logs" / "app.log")
        if line.get("event_id") == stale.id and "expired command" in line["message"]
    ]
    assert len(logged) == 1 and logged[0]["level"] == "INFO"
    assert "cmd.alerter.silence" in logged[0]["message"] and "s past its until" in logged[0]["message"]


@pytest.mark.parametrize("codec_name", [JSON, MSGPACK])
def test_command_without_content_type_is_decoded(
    vv: VV, probe: Probe, publisher: Publisher, codec_name: str
) -> None:
    """What a 3.1.1 bridge delivers: no MQTT 5 content type; JSON or msgpack, both are applied."""
    start_alerter(vv, probe, [])
    event = publisher.event("cmd.alerter.silence", {"args": {"matcher": {"title": "X"}, "duration_s": 60}})
    publisher.raw("vv/edge1/cmd/alerter/silence", codec.encode(event.to_dict(), codec_name), None)
    health = alerter_health(probe, lambda d: d["alerts"]["silences"], "the silence applied")
    assert health["details"]["alerts"]["silences"][0]["matcher"] == {"title": "X"}
    assert health["details"]["dead_letters"] == 0


def test_resync_republishes_the_firing_alerts_with_their_original_ids(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    start_alerter(vv, probe, [])
    firing = [publisher.event("alert.warning", alert(t, source="dvr")) for t in ("Stream down", "Lagging")]
    gone = publisher.event("alert.warning", alert("Blip", source="dvr"))
    over = publisher.event("alert.warning", alert("Blip", source="dvr", resolved=True))
    for event in (*firing, gone, over):
        publisher.publish(event)
    alerter_health(probe, lambda d: d["alerts"]["firing"] == 2 and d["received"] >= 4, "two firing")
    publisher.publish(publisher.event("cmd.alerter.resync", {"args": {}, "author": "console"}))

    def copies() -> list[int]:
        ids = [e["id"] for e in probe.events("alert.warning")]
        return [ids.count(event.id) for event in (*firing, gone, over)]

    wait_until(lambda: copies()[:2] == [2, 2], 15, "the firing alerts re-published")
    assert copies() == [2, 2, 1, 1]
    resent = [e for e in probe.events("alert.warning") if e["id"] == firing[0].id]
    assert resent[0] == resent[1]  # the original envelope: same id, source, epoch, seq, data
