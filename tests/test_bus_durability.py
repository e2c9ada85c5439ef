"""Durability against a real broker: persistent sessions, a broker SIGKILL, the ACL."""

from __future__ import annotations

import json
import signal

import paho.mqtt.client as paho
from conftest import FIXTURES_DIR, VV, Probe, Publisher, read_lines, wait_until


def video_new(publisher: Publisher, n: int):
    data = json.loads((FIXTURES_DIR / "video.new" / "valid-1.json").read_text())
    data["original_name"] = f"clip-{n}.mp4"
    return publisher.event("video.new", data)


def handled_ids(vv: VV) -> list[str]:
    return [line["id"] for line in read_lines(vv.home / "echo.log") if line["type"] == "video.new"]


def test_stopped_node_gets_everything_after_restart_once(vv: VV, probe: Probe, publisher: Publisher) -> None:
    node = vv.spawn("run", "echo_node:Echo")
    probe.wait_health("echo", "online")
    first = [video_new(publisher, n) for n in range(5)]
    for event in first:
        publisher.publish(event)
    wait_until(lambda: len(handled_ids(vv)) == 5, 15, "first batch handled")

    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0
    probe.wait_health("echo", "offline")

    queued = [video_new(publisher, n) for n in range(5, 25)]
    for event in queued:
        publisher.publish(event)  # acknowledged by the broker while the node is down

    vv.spawn("run", "echo_node:Echo")
    wait_until(lambda: len(handled_ids(vv)) >= 25, 20, "queued events handled after restart")
    ids = handled_ids(vv)
    assert sorted(ids) == sorted(e.id for e in first + queued)
    assert len(ids) == len(set(ids)), "an event was processed twice"
    answers = probe.wait_event("scan.done", count=25)
    assert len({a["causationid"] for a in answers}) == 25


def test_broker_sigkill_loses_no_acknowledged_event(vv: VV, probe: Probe, publisher: Publisher) -> None:
    vv.spawn("run", "echo_node:Echo")
    probe.wait_health("echo", "online")
    before = [video_new(publisher, n) for n in range(10)]
    for event in before:
        publisher.publish(event)
    probe.wait_event("scan.done", count=10)
    vv.broker.kill()
    probe.close()
    publisher.close()
    vv.broker.start()

    watcher = vv.probe()
    # The node's session and its last will were persisted: it is seen offline, then back online.
    offline = watcher.wait_health("echo", "offline", timeout=20)
    online = watcher.wait_health("echo", "online", timeout=20, after=watcher.health("echo").index(offline))
    assert online["details"]["reconnects"] >= 1

    again = Publisher(vv.broker.port, *vv.admin())
    after = [video_new(again, n) for n in range(10, 20)]
    for event in after:
        again.publish(event)
    wait_until(lambda: set(handled_ids(vv)) >= {e.id for e in before + after}, 20, "all events handled")
    ids = handled_ids(vv)
    assert len(ids) == len(set(ids)) == 20
    # every answer the node published before the crash was acknowledged and persisted: none is lost
    answers = watcher.wait_event("scan.done", count=10)
    assert {a["causationid"] for a in answers} == {e.id for e in after}
    again.close()
    watcher.close()


def test_acl_refuses_publishing_under_another_device(vv: VV) -> None:
    """A node's credential may publish under vv/edge1/ only; its attempt on vv/edge2/ never arrives."""
    watcher = vv.probe("vv/#")
    intruder = Publisher(vv.broker.port, *vv.login("ingest"), device="edge2", node="intruder")
    rc_received: list[int] = []
    intruder.client.on_publish = lambda client, userdata, mid, reason_code, props: rc_received.append(
        reason_code.value
    )
    forged = intruder.event(
        "video.quarantined", json.loads((FIXTURES_DIR / "video.quarantined" / "valid-1.json").read_text())
    )
    intruder.publish(forged)
    own = Publisher(vv.broker.port, *vv.login("ingest"), device="edge1", node="ingest")
    allowed = own.event("video.quarantined", forged.data)
    own.publish(allowed)
    watcher.wait_event("video.quarantined", where=lambda e: e["id"] == allowed.id)
    assert not [e for e in watcher.events() if e["id"] == forged.id]
    assert rc_received == [135]  # MQTT 5 PUBACK: not authorized
    intruder.close()
    own.close()
    watcher.close()


def test_anonymous_clients_are_refused(vv: VV) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    results: list[int] = []
    client.on_connect = lambda c, u, f, reason_code, p: results.append(reason_code.value)
    client.connect("127.0.0.1", vv.broker.port)
    client.loop_start()
    wait_until(lambda: results, 10, "CONNACK")
    client.loop_stop()
    assert results[0] in (134, 135)  # bad user name or password / not authorized
