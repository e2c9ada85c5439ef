"""Round trips through a real broker and a real node process: codecs, every event type, refusals."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from conftest import FIXTURES_DIR, VV, Probe, Publisher, read_lines

from bus.envelope import JSON, MSGPACK, rfc3339

PIPELINE_TYPES = ["video.new", "scan.done", "summary.done", "logline.signed", "video.quarantined"]


def sample(name: str) -> dict:
    data = json.loads((FIXTURES_DIR / name / "valid-1.json").read_text())
    if "until" in data:  # a command: live for a while yet (an expired one is dropped, not handled)
        data["until"] = rfc3339(datetime.now(UTC) + timedelta(hours=1))
    return data


@pytest.mark.parametrize("codec_name", ["msgpack", "json"])
def test_every_event_type_round_trips(vv: VV, probe: Probe, publisher: Publisher, codec_name: str) -> None:
    """Each pipeline event reaches a node, which handles it once; its answer carries the right codec."""
    env = {"VV_BUS_CODEC": codec_name}
    vv.spawn("run", "echo_node:Echo", extra_env=env)
    probe.wait_health("echo", "online")
    types = [*PIPELINE_TYPES, "alert.warning", "cmd.echo.ping"]
    sent = []
    for event_type in types:
        data = sample(event_type.split(".")[0] if event_type.startswith(("alert", "cmd")) else event_type)
        event = publisher.event(event_type, data, subject=data.get("video", {}).get("id"))
        publisher.publish(event)
        sent.append(event.id)
    answer = probe.wait_event("scan.done", where=lambda e: e["source"] == "vv://edge1/echo")[0]
    assert answer["datacontenttype"] == (JSON if codec_name == "json" else MSGPACK)
    assert answer["causationid"] == sent[0]
    assert answer["epoch"] >= 1 and answer["seq"] >= 1
    handled = wait_lines(vv, lambda lines: {line["id"] for line in lines} >= set(sent))
    assert [line["type"] for line in handled if line["id"] in sent] == types


def test_what_is_published_while_a_node_prepares_is_handled_after(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    """A node is subscribed (health online) before its slow `prepare()` ends, so it misses nothing."""
    vv.spawn("run", "echo_node:Preparing")
    probe.wait_health("preparing", "online")
    event = publisher.event("video.new", sample("video.new"))
    publisher.publish(event)  # acknowledged: the broker holds it for the node's subscription
    assert not read_lines(vv.home / "echo.log")  # not handled while preparing
    (vv.home / "go").touch()
    handled = wait_lines(vv, lambda lines: any(line["id"] == event.id for line in lines))
    own = ("cmd.",)  # its own catch-up request comes back on "#": not what this test is about
    assert [line["id"] for line in handled if not line.get("type", "").startswith(own)] == [
        "prepared",
        event.id,
    ]


def wait_lines(vv: VV, predicate, timeout: float = 15.0) -> list[dict]:
    from conftest import wait_until

    return wait_until(
        lambda: (lines := read_lines(vv.home / "echo.log")) and predicate(lines) and lines,
        timeout,
        "echo.log lines",
    )


@pytest.mark.parametrize(
    ("label", "payload", "content_type", "reason"),
    [
        ("garbage", b"\xc1" + bytes(range(64)), None, "not valid"),  # 0xc1: never valid msgpack
        ("garbage-json", b"{not json", JSON, "not valid application/json"),
        ("wrong-schema", None, MSGPACK, "video/id"),
        ("not-an-envelope", msgpack.packb([1, 2, 3]), MSGPACK, "not an event envelope"),
        ("oversized", None, MSGPACK, "oversized"),
    ],
)
def test_invalid_payloads_are_dead_lettered_and_node_keeps_working(
    vv: VV,
    probe: Probe,
    publisher: Publisher,
    label: str,
    payload: bytes | None,
    content_type: str | None,
    reason: str,
) -> None:
    vv.spawn("run", "echo_node:Echo")
    probe.wait_health("echo", "online")
    if label == "wrong-schema":
        data = sample("video.new")
        data["video"]["id"] = "not-hex"
        envelope = publisher.event("video.new", data).to_dict()
        payload = msgpack.packb(envelope)
    elif label == "oversized":
        data = sample("video.new")
        data["original_name"] = "x" * 300_000
        payload = msgpack.packb(publisher.event("video.new", data).to_dict())
    assert payload is not None
    publisher.raw("vv/edge1/video/new", payload, content_type)
    alert = probe.wait_event("alert.error")[0]["data"]
    assert alert["title"] == "Message refused and dead-lettered"
    assert reason in alert["message_details"]
    assert alert["context"]["topic"] == "vv/edge1/video/new"
    dead = read_lines(vv.home / "state" / "deadletter" / "echo.jsonl")
    assert len(dead) == 1 and reason in dead[0]["reason"]
    # the refused bytes are kept (a bounded prefix, with the hash of the whole), and the node still
    # handles the next good event
    assert base64.b64decode(dead[0]["payload_b64"]) == payload[:4096]
    assert dead[0]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert dead[0]["truncated"] == (len(payload) > 4096)
    good = publisher.event("video.new", sample("video.new"))
    publisher.publish(good)
    probe.wait_event("scan.done", where=lambda e: e["causationid"] == good.id)


def test_handler_failure_is_dead_lettered_not_fatal(vv: VV, probe: Probe, publisher: Publisher) -> None:
    vv.spawn("run", "echo_node:Echo")
    probe.wait_health("echo", "online")
    bad = sample("video.new")
    bad["original_name"] = "explode.mp4"
    publisher.publish(publisher.event("video.new", bad))
    alert = probe.wait_event("alert.error")[0]["data"]
    assert "handler failed: RuntimeError: handler bug on purpose" in alert["message_details"]
    good = publisher.event("video.new", sample("video.new"))
    publisher.publish(good)
    probe.wait_event("scan.done", where=lambda e: e["causationid"] == good.id)
    # nothing was emitted for the failed event: its partial effects were rolled back
    assert len(probe.events("scan.done")) == 1


def test_duplicate_event_ids_are_handled_once(vv: VV, probe: Probe, publisher: Publisher) -> None:
    vv.spawn("run", "echo_node:Echo")
    probe.wait_health("echo", "online")
    event = publisher.event("video.new", sample("video.new"))
    for _ in range(3):
        publisher.publish(event)
    marker = publisher.event("summary.done", sample("summary.done"))
    publisher.publish(marker)
    lines = wait_lines(vv, lambda lines: any(line["id"] == marker.id for line in lines))
    assert [line["id"] for line in lines].count(event.id) == 1
    health = probe.wait_health("echo", "online", after=len(probe.health("echo")))
    assert health["details"]["duplicates"] == 2
