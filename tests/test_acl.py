"""Least privilege on the device broker: each node's credential, against the real mosquitto rendered
from the repo's templates and the node classes (no mocks).

What mosquitto 2.0.11's ACL file does, as these tests observe it: a PUBLISH to a topic the user may
not write is answered with PUBACK 135 and routed nowhere (a will there is accepted at CONNECT and
dropped when due); a SUBSCRIBE is always granted (the ACL file does not check subscriptions), and
each message is then checked against the user's `read` lines by its own topic before delivery,
retained ones included. So a node that subscribes beyond what it consumes gets an empty
subscription, and a `$share/<group>/...` subscription is governed by the plain topic's `read` line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import DEVICE, FIXTURES_DIR, VV, Probe, Publisher, wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bus.broker import ADMIN_USER, Grant, render_broker
from bus.config import load_settings
from bus.node import Node, UndeclaredEvent
from nodes.registry import NODES, VERB_NODES, broker_grants

NOT_AUTHORIZED = 135
TOPIC = f"vv/{DEVICE}"


class Login:
    """A paho MQTT 5 client logged in as one user; records PUBACK and SUBACK codes and what arrives."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.received: list[str] = []  # topics, in order of arrival
        self._lock = threading.Lock()
        connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(
            mid, [rc.value for rc in rcs]
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10), f"{username} could not connect"

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(message.topic)

    def publish(self, topic: str, retain: bool = False) -> int:
        """Publish QoS 1 and return the broker's PUBACK reason code (0/16 accepted, 135 refused)."""
        info = self.client.publish(topic, b"{}", qos=1, retain=retain)
        wait_until(lambda: info.mid in self.pubacks, 10, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic_filter: str) -> list[int]:
        """Subscribe QoS 1 and return the SUBACK reason codes."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        wait_until(lambda: mid in self.subacks, 10, f"SUBACK for {topic_filter}")
        return self.subacks[mid]

    def topics(self) -> list[str]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def logins(vv: VV) -> Any:
    """Open logins by node name (`admin` for vv-admin, `device` for the read-only device user)."""
    opened: list[Login] = []

    def login(who: str) -> Login:
        if who == "admin":
            creds = vv.admin()
        elif who == "device":
            creds = vv.settings.mqtt_credentials()
        else:
            creds = vv.login(who)
        opened.append(Login(vv.broker.port, *creds))
        return opened[-1]

    yield login
    for client in opened:
        client.close()


def seen_after_marker(watcher: Login | Probe, marker: str) -> list[str]:
    """Everything delivered up to a marker published last: the broker has routed what came before."""
    if isinstance(watcher, Probe):
        wait_until(lambda: any(t == marker for t, _ in watcher.messages), 10, f"marker {marker}")
        return [t for t, _ in watcher.messages]
    wait_until(lambda: marker in watcher.topics(), 10, f"marker {marker}")
    return watcher.topics()


# ----------------------------------------------------------------------------- rendering


def test_every_node_process_gets_a_credential_and_an_acl_from_its_class(tmp_path: Path) -> None:
    settings = load_settings(
        {"VV_HOME": str(tmp_path), "VV_DEVICE": "edge9", "VV_BROKER_INSTANCES": "scan:2"}
    )
    grants = {grant.username: grant for grant in broker_grants(settings)}
    expected = {f"{name}@edge9" for name in [*NODES, *VERB_NODES, "scan-2"]}
    assert set(grants) == expected
    scan, worker = grants["scan@edge9"], grants["scan-2@edge9"]
    assert scan.write == (
        "vv/edge9/scan/done",
        "vv/edge9/video/quarantined",
        "vv/edge9/cmd/journal/replay",  # its catch-up requests
        "vv/edge9/health/scan",
        "vv/edge9/alert/#",
    )
    # not the $share filter: mosquitto checks the topic; and its own catch-up answers
    assert scan.read == ("vv/edge9/video/new", "vv/edge9/catchup/scan")
    assert worker.read == ("vv/edge9/video/new", "vv/edge9/catchup/scan-2")
    assert "vv/edge9/health/scan-2" in worker.write and "vv/edge9/health/scan" not in worker.write
    assert grants["journal@edge9"].read == ("vv/edge9/#",)
    assert grants["journal@edge9"].write[-1] == "vv/edge9/catchup/+"  # answers, and no event
    # exactly what its gap re-sends need beside: the bridged types it re-publishes (alerts it has)
    assert grants["journal@edge9"].write == (
        "vv/edge9/health/journal",
        "vv/edge9/alert/#",
        "vv/edge9/logline/signed",
        "vv/edge9/catchup/+",
    )
    assert grants["ingest@edge9"].read == ("vv/edge9/cmd/ingest/pause", "vv/edge9/cmd/ingest/resume")
    assert "vv/edge9/health/+" in grants["monitor@edge9"].read  # @on_health

    files = render_broker(settings, grants=list(grants.values()))
    acl = files.acl.read_text()
    assert files.passwd is not None
    users = {line.split(":")[0] for line in files.passwd.read_text().splitlines()}
    assert users == expected | {"edge9", ADMIN_USER}
    assert "user scan@edge9\ntopic write vv/edge9/scan/done\n" in acl
    for username in expected:
        secret = settings.mqtt_secret(username)
        assert (secret.stat().st_mode & 0o777) == 0o600 and f"user {username}\n" in acl


def test_bad_broker_node_entries_are_named(tmp_path: Path) -> None:
    for key, value in (("VV_BROKER_INSTANCES", "scan"), ("VV_BROKER_INSTANCES", "scan:a/b")):
        settings = load_settings({"VV_HOME": str(tmp_path), key: value})
        with pytest.raises(LookupError, match=r"broker\.instances"):
            broker_grants(settings)
    with pytest.raises(LookupError, match="unknown node"):
        broker_grants(load_settings({"VV_HOME": str(tmp_path), "VV_BROKER_NODES": "nosuchnode"}))


def test_emit_refuses_an_event_type_the_node_does_not_declare(tmp_path: Path) -> None:
    class Ingestish(Node):
        name = "ingestish"
        produces = ("video.new",)

    node = Ingestish(load_settings({"VV_HOME": str(tmp_path)}))
    with pytest.raises(UndeclaredEvent, match=r"'scan.done'.*Ingestish.produces"):
        asyncio.run(node.emit("scan.done", {}))


# ----------------------------------------------------------------------------- the real broker


def test_ingest_credential_cannot_publish_scan_done(vv: VV, probe: Probe, logins: Any) -> None:
    ingest = logins("ingest")
    assert ingest.publish(f"{TOPIC}/scan/done") == NOT_AUTHORIZED
    assert ingest.publish(f"{TOPIC}/logline/signed") == NOT_AUTHORIZED
    assert ingest.publish(f"{TOPIC}/video/new") != NOT_AUTHORIZED
    seen = seen_after_marker(probe, f"{TOPIC}/video/new")
    assert f"{TOPIC}/scan/done" not in seen and f"{TOPIC}/logline/signed" not in seen


def test_scan_credential_cannot_publish_logline_signed(vv: VV, probe: Probe, logins: Any) -> None:
    scan = logins("scan")
    assert scan.publish(f"{TOPIC}/logline/signed") == NOT_AUTHORIZED
    assert scan.publish(f"{TOPIC}/summary/done") == NOT_AUTHORIZED
    assert scan.publish(f"{TOPIC}/scan/done") != NOT_AUTHORIZED
    seen = seen_after_marker(probe, f"{TOPIC}/scan/done")
    assert f"{TOPIC}/logline/signed" not in seen


def test_a_node_writes_only_its_own_health_and_alerts(vv: VV, logins: Any) -> None:
    ingest, worker = logins("ingest"), logins("scan-a")
    assert ingest.publish(f"{TOPIC}/health/scan", retain=True) == NOT_AUTHORIZED
    assert ingest.publish(f"{TOPIC}/health/ingest", retain=True) != NOT_AUTHORIZED
    assert ingest.publish(f"{TOPIC}/alert/critical") != NOT_AUTHORIZED
    assert worker.publish(f"{TOPIC}/health/scan") == NOT_AUTHORIZED  # an instance is not its stage
    assert worker.publish(f"{TOPIC}/health/scan-a", retain=True) != NOT_AUTHORIZED
    assert ingest.publish("vv/edge2/health/ingest") == NOT_AUTHORIZED  # nor another device


def test_a_node_receives_nothing_it_does_not_consume(vv: VV, logins: Any) -> None:
    admin = logins("admin")
    assert admin.publish(f"{TOPIC}/health/scan", retain=True) != NOT_AUTHORIZED
    ingest = logins("ingest")
    # mosquitto 2.0.11 grants every SUBSCRIBE with an ACL file (a later version may refuse: 135);
    # either way nothing the node does not consume is delivered, retained health included.
    for topic_filter in (f"{TOPIC}/#", f"$share/ingest/{TOPIC}/scan/done", "$SYS/#"):
        assert ingest.subscribe(topic_filter)[0] in (1, NOT_AUTHORIZED)
    for kind in ("scan/done", "logline/signed", "video/new", "alert/error", "cmd/alerter/silence"):
        admin.publish(f"{TOPIC}/{kind}")
    admin.publish(f"{TOPIC}/cmd/ingest/pause")  # what ingest consumes, published last
    assert seen_after_marker(ingest, f"{TOPIC}/cmd/ingest/pause") == [f"{TOPIC}/cmd/ingest/pause"]


def test_shared_subscriptions_follow_the_plain_topic(vv: VV, logins: Any) -> None:
    admin, worker = logins("admin"), logins("scan-a")
    worker.subscribe(f"$share/scan/{TOPIC}/video/new")
    worker.subscribe(f"$share/scan/{TOPIC}/summary/done")
    admin.publish(f"{TOPIC}/summary/done")
    admin.publish(f"{TOPIC}/video/new")
    assert seen_after_marker(worker, f"{TOPIC}/video/new") == [f"{TOPIC}/video/new"]


def test_the_journal_sees_everything_and_publishes_no_event(vv: VV, logins: Any) -> None:
    admin, journal = logins("admin"), logins("journal")
    journal.subscribe(f"{TOPIC}/#")
    kinds = ["video/new", "scan/done", "summary/done", "logline/signed", "video/quarantined"]
    kinds += ["health/scan", "alert/critical", "cmd/ingest/pause", "cmd/supervisor/restart"]
    for kind in kinds:
        admin.publish(f"{TOPIC}/{kind}")
    assert seen_after_marker(journal, f"{TOPIC}/{kinds[-1]}") == [f"{TOPIC}/{kind}" for kind in kinds]
    assert journal.publish(f"{TOPIC}/scan/done") == NOT_AUTHORIZED


def test_the_device_credential_only_reads(vv: VV, logins: Any) -> None:
    device, admin = logins("device"), logins("admin")
    device.subscribe(f"{TOPIC}/#")
    assert device.publish(f"{TOPIC}/video/new") == NOT_AUTHORIZED
    assert device.publish(f"{TOPIC}/health/ingest") == NOT_AUTHORIZED
    admin.publish(f"{TOPIC}/logline/signed")
    assert seen_after_marker(device, f"{TOPIC}/logline/signed") == [f"{TOPIC}/logline/signed"]


def test_an_undeclared_instance_is_refused_at_connect_with_a_hint(vv: VV) -> None:
    vv.spawn("run", "journal", "--instance", "zz", log_name="journal-zz")
    hint = "does the broker know journal-zz? see broker.nodes and broker.instances"
    wait_until(lambda: hint in (vv.home / "journal-zz.out").read_text(), 20, "the refusal hint")


def test_an_event_a_stale_acl_refuses_stays_in_the_outbox_until_the_broker_is_re_rendered(vv: VV) -> None:
    """A broker rendered before a node declared a type: the node degrades, keeps the event, and
    sends it once `vv broker` renders the ACL from the node's code again."""
    grants = broker_grants(vv.settings)
    stale = [
        dataclasses.replace(g, write=tuple(t for t in g.write if not t.endswith("/scan/done")))
        if g.username == vv.settings.mqtt_username("echo")
        else g
        for g in grants
    ]

    def restart_broker(with_grants: list[Grant]) -> None:
        vv.broker.stop()
        render_broker(vv.settings, grants=with_grants)
        vv.broker.start()

    restart_broker(stale)
    probe = vv.probe()
    publisher = Publisher(vv.broker.port, *vv.admin())
    vv.spawn("run", "echo_node:Echo")
    probe.wait_health("echo", "online")
    video = publisher.event(
        "video.new", json.loads((FIXTURES_DIR / "video.new" / "valid-1.json").read_text())
    )
    publisher.publish(video)
    degraded = probe.wait_health("echo", "degraded")
    assert "refused" in degraded["reason"] and not probe.events("scan.done")
    probe.close()
    publisher.close()

    restart_broker(grants)
    watcher = vv.probe()
    answer = watcher.wait_event("scan.done", timeout=20)[0]
    assert answer["causationid"] == video.id
    watcher.wait_health("echo", "online")
    watcher.close()


def test_a_last_will_outside_the_acl_is_never_published(vv: VV, probe: Probe) -> None:
    """mosquitto accepts the CONNECT but drops the will: ingest cannot fake scan offline on leaving."""
    for will_topic in (f"{TOPIC}/health/scan", f"{TOPIC}/health/ingest"):  # forbidden, then allowed
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.username_pw_set(*vv.login("ingest"))
        client.will_set(will_topic, b'{"status": "offline"}', qos=1)
        client.connect("127.0.0.1", vv.broker.port)
        client.loop_start()
        wait_until(client.is_connected, 10, "CONNACK")
        client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        client.loop_stop()
    assert seen_after_marker(probe, f"{TOPIC}/health/ingest").count(f"{TOPIC}/health/scan") == 0
