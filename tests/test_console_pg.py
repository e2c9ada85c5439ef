"""Console replicas on one real PostgreSQL: change notifications between stores, two folds of one
device racing in threads, and two `vv console` processes splitting a device's stream over a
`$share` subscription on a real mosquitto, one of them SIGKILLed mid-stream.

What mosquitto 2.0.11 does with a killed shared subscriber (observed here and by hand): its
persistent session stays a member of the share group, so mosquitto keeps handing it its turn of
the round robin and queues those messages in the dead session; nothing goes to the survivor in
its place. They are delivered when the replica comes back under the same name (systemd restarts
it). A message the killed process had received but not yet committed was already acknowledged
(aiomqtt acks on receipt): the console's gap check asks the device's journal to re-send it.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import REPO, VV, Probe, Publisher, free_port, mqtt_client, wait_until
from fleet import FleetRig, bundle_tls
from pg import PgServer

from bus.envelope import Event
from bus.fleet import decode_fleet
from nodes.console.fold import Fleet
from nodes.console.registry import Registry
from nodes.console.settings import ConsoleSettings
from nodes.console.store import AlertState, Change
from nodes.fleet.sim import SimDevice, wire

pytest.importorskip("psycopg", reason="the `postgres` extra: pip install 'vv-edge[postgres]'")
from nodes.console.store_pg import PgStore

pytestmark = pytest.mark.slow

T0 = 1_800_000_000.0
ROUNDS = 40  # of the streaming test: an alert and a LogLine per device each


@pytest.fixture
def dsn(postgres: PgServer) -> str:
    return postgres.database()


@pytest.fixture
def stores(dsn: str) -> Iterator[tuple[PgStore, PgStore]]:
    a, b = PgStore(dsn), PgStore(dsn)
    yield a, b
    a.close()
    b.close()


def _alert(device: str, key: str, title: str) -> AlertState:
    return AlertState(device, key, "id", "ERROR", "monitor", title, "", "firing", 1, T0, T0, T0, "")


def test_a_change_committed_by_one_replica_reaches_the_others_feed(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    heard_by_b: list[Change] = []
    heard_by_a: list[Change] = []
    b.watch(heard_by_b.append)
    a.watch(heard_by_a.append)
    disk = {"severity": "ERROR", "status": "firing", "title": "Disk almost full"}
    with pytest.raises(RuntimeError), a.transaction():
        a.put_alert(_alert("edge-a", "k0", "Rolled back"))
        a.publish([Change("alert", "edge-a", "k0", disk)])
        raise RuntimeError("the fold step failed")
    with a.transaction():
        a.put_alert(_alert("edge-a", "k1", "Disk almost full"))
        a.publish([Change("alert", "edge-a", "k1", disk)])
        # too big for a notification (8,000 bytes): it goes without its data, the commit stands
        a.publish([Change("logline", "edge-a", "7", {"seq": 7, "text": "x" * 9000})])
    wait_until(lambda: len(heard_by_b) == 2, 5, "B to hear A's changes")
    assert heard_by_b == [Change("alert", "edge-a", "k1", disk), Change("logline", "edge-a", "7", {})]
    assert b.alert("edge-a", "k1") is not None and b.alert("edge-a", "k0") is None
    with b.transaction():  # B's own change: A hears it, B does not hear itself
        b.publish([Change("alert", "edge-b", "k2", disk)])
    wait_until(lambda: [c.key for c in heard_by_a] == ["k2"], 5, "A to hear B's alert")
    assert [c.key for c in heard_by_b] == ["k1", "7"]


def test_one_replica_sends_actions_until_its_connection_ends(dsn: str) -> None:
    a, b = PgStore(dsn), PgStore(dsn)
    try:
        assert a.claim_sender() and a.claim_sender()
        assert not b.claim_sender()
        a.close()
        wait_until(b.claim_sender, 5, "B to take over sending when A is gone")
    finally:
        a.close()
        b.close()


def test_two_replicas_folding_one_device_out_of_order_agree(
    stores: tuple[PgStore, PgStore], tmp_path: Path
) -> None:
    """Two folds in two threads over two connections, as two replicas behind a $share subscription:
    a device's LogLines split between them and each half shuffled; every alert delivered to both
    (a redelivery). One device's steps serialise on its lock: no false fork, no lost head, every
    gap closed, each alert once."""
    dev = SimDevice("edge-a")
    registry = tmp_path / "devices.json"
    registry.write_text(json.dumps({"devices": {dev.device: dev.registry_entry()}}))
    settings = ConsoleSettings(reorder_timeout_s=60.0)
    folds = [Fleet(store, settings, Registry(registry)) for store in stores]
    lines = [dev.logline_event(dev.logline()) for _ in range(40)]
    alerts = [dev.alert(f"Alert {i}") for i in range(20)]
    rng = random.Random(14)
    shares: list[list[Event]] = [lines[0::2] + alerts, lines[1::2] + alerts]
    for share in shares:
        rng.shuffle(share)
    errors: list[BaseException] = []

    def run(fold: Fleet, share: list[Event]) -> None:
        try:
            for event in share:
                topic, payload = wire(event)
                fold.receive(decode_fleet(topic, payload, None, False), T0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(folds, shares, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    a = stores[0]
    state = a.device("edge-a")
    assert state is not None and (state.chain_seq, state.chain_base) == (40, 1)
    assert all(len(a.chain_at("edge-a", seq)) == 1 for seq in range(1, 41))
    consoles = [x.title for x in a.alerts() if x.source_component == "console"]
    assert consoles == []  # no fork, no rewind, nothing missing
    assert a.gaps() == []
    device_alerts = a.alerts(status="firing")
    assert sorted(x.title for x in device_alerts) == sorted(f"Alert {i}" for i in range(20))
    assert {x.count for x in device_alerts} == {1}
    assert sum(fold.duplicates for fold in folds) == 20
    firing = [h for h in a.history("edge-a") if h.kind == "alert" and h.change == "firing"]
    assert len(firing) == 20


class Resender:
    """The device's journal as far as the console sees it: answers `cmd.journal.resend` by
    re-publishing the events asked for (same ids) from what was published."""

    def __init__(self, vv: VV) -> None:
        self.published: dict[tuple[str, str, int], Event] = {}  # (source, type, seq)
        self.chain: dict[tuple[str, int], Event] = {}  # (device, LogLine seq)
        self.asked: list[dict[str, Any]] = []
        self.client = mqtt_client(vv.broker.port, *vv.admin())
        self.client.on_message = self._on_message
        self.client.subscribe("vv/+/cmd/journal/resend", qos=1)
        self.client.loop_start()

    def sent(self, event: Event) -> None:
        self.published[(event.source, event.type, event.seq)] = event
        if event.type == "logline.signed":
            self.chain[(event.device, int(event.data["seq"]))] = event

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        command = json.loads(message.payload)
        args = command["data"]["args"]
        self.asked.append(args)
        for seq in range(args["first"], args["last"] + 1):
            if args["by"] == "chain":
                event = self.chain.get((command["device"], seq))
            else:
                event = self.published.get((args["source"], args["type"], seq))
            if event is not None:
                client.publish(*wire(event), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Replicas:
    """`vv console` replicas as real processes: one PostgreSQL, one shared-subscription group."""

    def __init__(self, vv: VV, dsn: str, *devices: SimDevice) -> None:
        self.vv = vv
        registry = vv.home / "fleet" / "devices.json"
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text(json.dumps({"devices": {d.device: d.registry_entry() for d in devices}}))
        username, password = vv.admin()
        self.env = {
            "VV_CONSOLE_PORT": str(vv.broker.port),
            "VV_CONSOLE_USERNAME": username,
            "VV_CONSOLE_PASSWORD": password,
            "VV_CONSOLE_REGISTRY": str(registry),
            "VV_CONSOLE_DATABASE_URL": dsn,
            "VV_CONSOLE_SHARED_GROUP": "console",
            "VV_CONSOLE_REORDER_TIMEOUT_S": "0.5",
            "VV_CONSOLE_RESEND_WAIT_S": "60",  # the test waits on the resends, never on a give-up
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def out(self, name: str) -> Path:
        return self.vv.home / f"console-{name}.out"

    def start(self, name: str) -> None:
        """Start replica `name` (its own VV_HOME for logs) and wait until it has subscribed."""
        subscribed = self.out(name).read_text().count("subscribed to") if self.out(name).exists() else 0
        env = {**self.env, "VV_CONSOLE_NAME": name, "VV_HOME": str(self.vv.home / name)}
        self.procs[name] = self.vv.spawn("console", log_name=f"console-{name}", extra_env=env)
        wait_until(
            lambda: self.out(name).read_text().count("subscribed to") > subscribed,
            20,
            f"replica {name} to subscribe",
        )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_two_replicas_one_killed_mid_stream_lose_and_double_nothing(vv: VV, dsn: str) -> None:
    # three devices: with two, mosquitto's round robin would hand each replica one device's events
    devices = [SimDevice(f"edge-{x}") for x in "abc"]
    replicas = Replicas(vv, dsn, *devices)
    watcher = PgStore(dsn)  # a third party on the database: what another replica's page would hear
    heard: list[Change] = []
    watcher.watch(heard.append)
    publisher = Publisher(vv.broker.port, *vv.admin())
    resender = Resender(vv)
    try:
        replicas.start("r1")
        replicas.start("r2")
        stream: list[Event] = []
        for i in range(ROUNDS):
            for dev in devices:
                stream.append(dev.alert(f"Alert {i}", severity=("ERROR", "WARNING")[i % 2]))
                stream.append(dev.logline_event(dev.logline()))

        def folded() -> tuple[int, int]:
            alerts = [a for a in watcher.alerts() if a.source_component == "monitor"]
            lines = sum(len(watcher.chain_at(d.device, s)) for d in devices for s in range(1, ROUNDS + 1))
            return len(alerts), lines

        # The first round folded before the stream goes on: a producer's first event has no
        # predecessor whose seq would reveal it missing (see the module's docstring).
        warm_up, killed_at = 2 * len(devices), len(stream) // 3
        for event in stream[:warm_up]:
            resender.sent(event)
            publisher.raw(*wire(event))
        wait_until(lambda: folded() == (3, 3), 10, "the first round folded")
        for n, event in enumerate(stream[warm_up:], warm_up):
            if n == killed_at:
                replicas.kill("r1")  # mid-stream: whatever r1 held uncommitted dies with it
            resender.sent(event)
            publisher.raw(*wire(event))  # no content type, as a 3.1.1 bridge delivers it

        # r2 alone goes on folding its turns; r1's turns wait in its session at the broker, and
        # the holes they leave in the producers' seqs make r2 (now the sender) ask the device
        wait_until(lambda: resender.asked, 20, "r2 to ask the device for what r1 holds")
        before_restart = folded()
        replicas.start("r1")  # as systemd would: same name, same session, its queue delivered
        total = ROUNDS * len(devices)
        try:
            wait_until(lambda: folded() == (total, total), 60, "every alert and LogLine in the store")
        except AssertionError:
            missing = [(e.device, e.type, e.seq) for e in stream if not watcher.seen(e.id)]
            raise AssertionError(f"never folded: {missing}; gaps: {watcher.gaps()}") from None
        print(
            f"folded before r1's restart: {before_restart[0]}/{total} alerts, {before_restart[1]}/{total}"
            f" LogLines; resends asked: {len(resender.asked)}"
        )
        monitor = [a for a in watcher.alerts() if a.source_component == "monitor"]
        assert {a.count for a in monitor} == {1}
        assert sorted((a.device, a.title) for a in monitor) == sorted(
            (d.device, f"Alert {i}") for d in devices for i in range(ROUNDS)
        )
        for dev in devices:
            state = watcher.device(dev.device)
            assert state is not None and state.chain_seq == ROUNDS and state.chain_verified is True
            firing = [h for h in watcher.history(dev.device) if h.kind == "alert" and h.change == "firing"]
            assert len(firing) == ROUNDS
        assert [a.title for a in watcher.alerts() if a.source_component == "console"] == []
        wait_until(lambda: watcher.gaps() == [], 10, "every gap closed")
        alert_changes = {(c.device, c.key) for c in heard if c.kind == "alert"}
        assert alert_changes == {(a.device, a.dedup_key) for a in monitor}
    finally:
        resender.close()
        publisher.close()
        watcher.close()
        for name in list(replicas.procs):
            replicas.kill(name)


def test_consoles_share_on_the_central_broker_and_a_device_cannot_read_their_turns(tmp_path: Path) -> None:
    """Replicas subscribe `$share/<group>/vv/+/alert/+` with the console certificate on the central
    broker (TLS, CN ACL) and take turns. mosquitto 2.0's ACL file cannot refuse a SUBSCRIBE: a
    device certificate may join the group; the ACL still refuses it every message, and mosquitto
    drops that turn rather than give it to a replica (README: the group name is a secret, and the
    console's gap check asks the device again)."""
    rig = FleetRig(tmp_path)
    try:
        rig.start_central()
        replicas = [rig.console_probe("$share/console/vv/+/alert/+") for _ in range(2)]
        a_home = rig.root / "A" / "keys" / "fleet"
        a_home.parent.mkdir(parents=True)
        rig.enroll("A").rename(a_home)
        device = rig.device_publisher("A")
        dev = SimDevice("A")

        def send(count: int) -> None:
            for _ in range(count):
                device.raw(*wire(dev.alert("Fan failed")))

        send(6)
        wait_until(lambda: sum(len(r.received) for r in replicas) == 6, 10, "every alert to a replica")
        assert [len(r.received) for r in replicas] == [3, 3]  # mosquitto's round robin

        intruder = Probe(rig.port, "", "", "$share/console/vv/+/alert/+", tls=bundle_tls(rig.enroll("B")))
        rig.clients.append(intruder)
        marker = rig.console_probe("vv/A/alert/#")  # a plain subscriber: when it has all, so has the broker
        send(6)
        wait_until(lambda: len(marker.received) == 6, 10, "the six alerts through the broker")
        wait_until(lambda: sum(len(r.received) for r in replicas) == 6 + 4, 10, "the replicas' turns")
        assert intruder.received == []  # the ACL holds for reading ...
        assert sum(len(r.received) for r in replicas) == 6 + 4  # ... and the intruder's turns are gone
    finally:
        rig.close()


def test_an_unreachable_database_is_a_clear_error(vv: VV) -> None:
    """`vv console` and `vv fleet` name the database they could not open (password hidden) and exit 1."""
    closed = free_port()
    env = {"VV_CONSOLE_DATABASE_URL": f"postgresql://vv:s3cret@127.0.0.1:{closed}/console"}
    console = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "console"],
        env={**vv.env, **env, "VV_CONSOLE_PORT": str(vv.broker.port)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert console.returncode == 1
    assert f"postgresql://vv:***@127.0.0.1:{closed}/console" in console.stderr
    assert "s3cret" not in console.stderr and "Traceback" not in console.stderr
    status = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "fleet", "status"],
        env={**vv.env, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 1
    assert "PostgreSQL unreachable" in status.stderr and "s3cret" not in status.stderr
