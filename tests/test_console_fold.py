"""The console's fold, fast: alerts, dedupe, gaps, staleness, links and the chain witness, fed with
real envelopes (decoded as a 3.1.1 bridge delivers them: no content type) and real Ed25519 LogLines."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bus.envelope import Event, parse_time, rfc3339, utc_now
from bus.fleet import FleetRejected, decode_fleet
from bus.schemas import SchemaError, validate
from nodes.console.actions import (
    ActionError,
    command_event,
    find_alert,
    parse_duration,
    parse_matchers,
    record_ack,
    record_command,
    record_silence,
)
from nodes.console.fold import Fleet
from nodes.console.registry import Registry
from nodes.console.settings import ConsoleSettings
from nodes.console.store import ConsoleStore, SqliteStore
from nodes.fleet.sim import SimDevice, wire

SETTINGS = ConsoleSettings(reorder_timeout_s=5.0, resend_wait_s=30.0, link_debounce_s=15.0)
T0 = 1_800_000_000.0


class Console:
    """The fold over a store (opened by `opener`, SQLite or PostgreSQL), with a registry of the
    simulated devices in a temp dir."""

    def __init__(self, opener: Callable[[], ConsoleStore], tmp_path: Path, *devices: SimDevice) -> None:
        self.tmp_path = tmp_path
        registry = tmp_path / "devices.json"
        registry.write_text(json.dumps({"devices": {d.device: d.registry_entry() for d in devices}}))
        self.store = opener()
        self.fleet = Fleet(self.store, SETTINGS, Registry(registry))
        self.fleet.registry.refresh()

    def send(self, event: Event, now: float = T0) -> None:
        topic, payload = wire(event)
        self.fleet.receive(decode_fleet(topic, payload, None, False), now)

    def health(self, device: str, doc: dict[str, Any], now: float, retained: bool = False) -> None:
        self.fleet.receive(
            decode_fleet(f"vv/{device}/health/{doc['node']}", json.dumps(doc).encode(), None, retained), now
        )

    def link(self, device: str, up: bool, now: float) -> None:
        self.fleet.receive(decode_fleet(f"vv/{device}/bridge/state", b"1" if up else b"0", None, True), now)

    def console_alerts(self, title: str, status: str = "firing") -> list[Any]:
        return [
            a
            for a in self.store.alerts(status=status)
            if a.source_component == "console" and a.title == title
        ]

    def actions(self, kind: str) -> list[Any]:
        return [a for a in self.store.actions() if a.kind == kind]


@pytest.fixture
def dev() -> SimDevice:
    return SimDevice("edge-a")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], ConsoleStore]]:
    """Opens the test's store, the same one each time (a restart): both backends pass every test."""
    if request.param == "sqlite":
        target = tmp_path / "console.sqlite"
        make: Callable[[], ConsoleStore] = lambda: SqliteStore(target)  # noqa: E731
    else:
        dsn = request.getfixturevalue("postgres").database()  # skips without PostgreSQL or psycopg
        from nodes.console.store_pg import PgStore

        make = lambda: PgStore(dsn)  # noqa: E731
    opened: list[ConsoleStore] = []

    def open_store() -> ConsoleStore:
        opened.append(make())
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def console(opener: Callable[[], ConsoleStore], tmp_path: Path, dev: SimDevice) -> Console:
    return Console(opener, tmp_path, dev)


def test_alerts_fold_by_dedup_key_with_history(console: Console, dev: SimDevice) -> None:
    console.send(dev.alert("Disk almost full"), T0)
    console.send(dev.alert("Disk almost full"), T0 + 1)
    [alert] = console.store.alerts()
    assert (alert.status, alert.count, alert.first_seen, alert.last_seen) == ("firing", 2, T0, T0 + 1)
    console.send(dev.alert("Disk almost full", status="resolved"), T0 + 2)
    console.send(dev.alert("Disk almost full"), T0 + 3)
    [alert] = console.store.alerts()
    assert (alert.status, alert.count) == ("firing", 3)
    changes = [h.change for h in console.store.history() if h.kind == "alert"]
    assert changes == ["firing", "resolved", "refired"]


def test_duplicates_by_event_id_are_ignored(console: Console, dev: SimDevice) -> None:
    event = dev.alert("Scan stalled")
    for when in (T0, T0 + 1, T0 + 2):  # a bridge resend and a journal replay
        console.send(event, when)
    [alert] = console.store.alerts()
    assert alert.count == 1 and console.fleet.duplicates == 2
    assert [h.change for h in console.store.history() if h.kind == "alert"] == ["firing"]


def test_a_restated_alert_is_old_news(console: Console, dev: SimDevice) -> None:
    """A resync re-publishes the firing alert's document unchanged: a new event id, not a new repeat."""
    first = dev.alert("Camera offline")
    console.send(first, T0)
    console.send(dev.event(first.type, first.data, "monitor"), T0 + 5)
    [alert] = console.store.alerts()
    assert alert.count == 1 and alert.last_seen == T0


def test_a_gap_is_asked_for_then_alerted_then_filled(console: Console, dev: SimDevice) -> None:
    one, two, three = (dev.alert(f"Problem {n}") for n in range(3))
    console.send(one, T0)
    console.send(three, T0)
    console.fleet.tick(T0 + 4)
    assert console.actions("cmd.journal.resend") == []  # within the reorder timeout: maybe late
    console.fleet.tick(T0 + 5)
    [resend] = console.actions("cmd.journal.resend")
    assert resend.args == {
        "type": "alert.error",
        "by": "seq",
        "source": "vv://edge-a/monitor",
        "epoch": 1,
        "first": 2,
        "last": 2,
    }
    assert resend.author == "console"
    console.fleet.tick(T0 + 35)
    [missing] = console.console_alerts("Events missing from a device")
    assert missing.severity == "WARNING"
    console.send(two, T0 + 36)  # the journal's re-send arrives
    assert console.store.gaps() == []
    assert console.console_alerts("Events missing from a device") == []
    assert len(console.store.alerts(status="firing")) == 3


def test_the_chain_is_witnessed_and_verified(console: Console, dev: SimDevice) -> None:
    for _ in range(3):
        console.send(dev.logline_event(dev.logline()))
    state = console.store.device("edge-a")
    assert state is not None
    assert (state.chain_seq, state.chain_verified, state.chain_base) == (3, True, 1)
    assert [e.verified for s in (1, 2, 3) for e in console.store.chain_at("edge-a", s)] == [True] * 3
    assert console.store.alerts(status="firing") == []


def test_a_removed_seq_raises_critical(console: Console, dev: SimDevice) -> None:
    lines = [dev.logline() for _ in range(4)]
    for line in (lines[0], lines[1], lines[3]):  # seq 3 was removed on the device
        console.send(dev.logline_event(line))
    console.fleet.tick(T0 + 5)
    [resend] = console.actions("cmd.journal.resend")
    assert resend.args == {"type": "logline.signed", "by": "chain", "first": 3, "last": 3}
    console.fleet.tick(T0 + 35)
    [missing] = console.console_alerts("LogLine missing from the chain")
    assert missing.severity == "CRITICAL" and "seq 3" in missing.details


def test_a_late_health_with_an_older_head_is_no_rewind(console: Console, dev: SimDevice) -> None:
    """Replicas fold a device's health and its LogLines apart: the sign node's health naming head 1,
    published before LogLine 2 was signed, may be folded after it. Published after it, it is a
    rewind."""
    console.send(dev.logline_event(dev.logline()))
    late = dev.sign_health(upto=1)
    line = dev.logline()
    late["time"] = rfc3339(datetime.fromtimestamp(parse_time(line["created_at"]).timestamp() - 1, UTC))
    console.send(dev.logline_event(line))
    console.health("edge-a", late, T0 + 1)
    assert console.console_alerts("LogLine chain rewound") == []
    console.health("edge-a", dev.sign_health(upto=1), T0 + 2)
    assert len(console.console_alerts("LogLine chain rewound")) == 1


def test_a_fork_raises_critical(console: Console, dev: SimDevice) -> None:
    for _ in range(2):
        console.send(dev.logline_event(dev.logline()))
    other = dev.logline(seq=2, text="another")  # links to seq 1 too: a second history
    console.send(dev.logline_event(other))
    [fork] = console.console_alerts("LogLine chain fork")
    assert fork.severity == "CRITICAL" and "two LogLines claim seq 2" in fork.details
    assert len(console.store.chain_at("edge-a", 2)) == 2  # both kept as evidence
    assert console.console_alerts("LogLine chain rewound") == []


def test_a_rewind_raises_critical(console: Console, dev: SimDevice) -> None:
    for _ in range(4):
        console.send(dev.logline_event(dev.logline()))
    console.health("edge-a", dev.sign_health(upto=4), T0)
    assert console.console_alerts("LogLine chain rewound") == []
    console.health("edge-a", dev.sign_health(upto=2), T0 + 1)  # the device's head went back to 2
    [rewind] = console.console_alerts("LogLine chain rewound")
    assert rewind.severity == "CRITICAL" and "seq 2" in rewind.details


def test_a_will_with_an_old_head_is_no_rewind(console: Console, dev: SimDevice) -> None:
    """The sign node's will was built when it connected: its head is older than what it signed since."""
    for _ in range(3):
        console.send(dev.logline_event(dev.logline()))
    will = {**dev.sign_health(upto=1), "status": "offline"}
    console.health("edge-a", will, T0)
    assert console.console_alerts("LogLine chain rewound") == []
    for beat in range(3):  # the rewound head seen at every health beat is still one alert
        console.health("edge-a", dev.sign_health(upto=2), T0 + beat)
    [rewind] = console.console_alerts("LogLine chain rewound")
    assert rewind.count == 1


def test_a_wiped_device_cannot_rewrite_its_history(console: Console, dev: SimDevice) -> None:
    for _ in range(3):
        console.send(dev.logline_event(dev.logline()))
    fresh = SimDevice("edge-a")
    fresh.signer = dev.signer  # same key, storage wiped: it starts its chain again
    console.send(fresh.logline_event(fresh.logline()))
    assert console.console_alerts("LogLine chain fork") and console.console_alerts("LogLine chain rewound")
    state = console.store.device("edge-a")
    assert state is not None and state.chain_seq == 3  # the witnessed head stands


def test_a_bad_signature_raises_critical(console: Console, dev: SimDevice) -> None:
    line = dev.logline()
    tampered = {**line, "summary": {**line["summary"], "text": "nobody came"}}
    event = dev.logline_event(line)
    console.send(dev.event(event.type, {**event.data, "line": tampered}, "sign"))
    [bad] = console.console_alerts("LogLine signature does not verify")
    assert bad.severity == "CRITICAL" and "changed after signing" in bad.details
    impostor = SimDevice("edge-a")  # a key the registry does not hold for edge-a
    console.send(impostor.logline_event(impostor.logline(seq=2, prev=line["prev"])))
    assert [e.verified for e in console.store.chain_at("edge-a", 2)] == [False]


def test_a_silent_device_goes_stale_and_comes_back(console: Console, dev: SimDevice) -> None:
    console.health("edge-a", dev.health("monitor", interval_s=2.0), T0)
    console.fleet.tick(T0 + 5.9)
    assert console.console_alerts("Device stopped reporting") == []
    console.fleet.tick(T0 + 6.1)  # 3 x 2 s without a beat
    [stale] = console.console_alerts("Device stopped reporting")
    assert stale.severity == "ERROR" and "3 x its 2s interval" in stale.details
    state = console.store.device("edge-a")
    assert state is not None and state.stale
    console.health("edge-a", dev.health("monitor", interval_s=2.0), T0 + 7)
    assert console.console_alerts("Device stopped reporting") == []
    assert [h.change for h in console.store.history("edge-a") if h.title == "Health"] == ["stale", "fresh"]


def test_a_device_that_said_goodbye_is_not_stale(console: Console, dev: SimDevice) -> None:
    console.health("edge-a", dev.health("monitor", interval_s=1.0), T0)
    console.health("edge-a", dev.health("monitor", interval_s=1.0, status="offline"), T0 + 0.5)
    console.fleet.tick(T0 + 60)
    assert console.console_alerts("Device stopped reporting") == []


def test_a_retained_health_is_as_old_as_its_time(console: Console, dev: SimDevice) -> None:
    doc = dev.health("monitor", interval_s=1.0)
    doc["time"] = "2020-01-01T00:00:00.000Z"
    console.health("edge-a", doc, T0, retained=True)
    console.fleet.tick(T0)
    assert console.console_alerts("Device stopped reporting")


def test_link_flaps_are_debounced(console: Console, dev: SimDevice) -> None:
    console.link("edge-a", True, T0)
    console.link("edge-a", False, T0 + 1)
    console.fleet.tick(T0 + 10)
    console.link("edge-a", True, T0 + 11)  # back within 15 s: a flap
    console.fleet.tick(T0 + 40)
    assert console.console_alerts("Device link down") == []
    console.link("edge-a", False, T0 + 50)
    console.fleet.tick(T0 + 64)
    assert console.console_alerts("Device link down") == []
    console.fleet.tick(T0 + 65)
    assert console.console_alerts("Device link down")
    resyncs = len(console.actions("cmd.alerter.resync"))
    console.link("edge-a", True, T0 + 70)
    assert console.console_alerts("Device link down") == []
    assert len(console.actions("cmd.alerter.resync")) == resyncs + 1  # what fired meanwhile?
    changes = [h.change for h in console.store.history("edge-a") if h.title == "Bridge link"]
    assert changes == ["link up", "link down", "link up", "link down", "link up"]


def test_the_console_asks_every_device_for_its_firing_alerts_at_start(
    opener: Callable[[], ConsoleStore], tmp_path: Path
) -> None:
    enrolled, seen = SimDevice("edge-a"), SimDevice("edge-b")
    console = Console(opener, tmp_path, enrolled)
    console.send(seen.alert("Old"), T0)
    console.store.close()
    restarted = Console(opener, tmp_path, enrolled)
    before = {a.id for a in restarted.actions("cmd.alerter.resync")}
    restarted.fleet.start(T0 + 10)
    asked = sorted(a.device for a in restarted.actions("cmd.alerter.resync") if a.id not in before)
    assert asked == ["edge-a", "edge-b"]


def test_state_survives_a_restart(opener: Callable[[], ConsoleStore], tmp_path: Path, dev: SimDevice) -> None:
    console = Console(opener, tmp_path, dev)
    event = dev.alert("Fan failed")
    console.send(event, T0)
    console.send(dev.logline_event(dev.logline()))
    console.store.close()
    again = Console(opener, tmp_path, dev)
    again.send(event, T0 + 1)  # the broker's redelivery after the restart
    [alert] = again.store.alerts()
    assert alert.count == 1 and again.fleet.duplicates == 1
    state = again.store.device("edge-a")
    assert state is not None and state.chain_seq == 1


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        ("vv/edge-a/alert/error", b"\xff\x00garbage", "not valid"),
        ("vv/edge-a/alert/error", b"[1, 2]", "not an object"),
        ("vv/edge-a/bridge/state", b"up", "not '0' or '1'"),
        ("other/edge-a/x", b"{}", "not a vv topic"),
        ("vv/edge-a/health/monitor", b'{"node": "monitor"}', "health"),
        (
            "vv/edge-a/health/monitor",
            b'{"node": "monitor", "device": "edge-a", "status": "online", "time": "2026-02-30T00:00:00Z"}',
            "not an RFC 3339 time: '2026-02-30T00:00:00Z'",
        ),
    ],
)
def test_garbage_is_refused_with_a_reason(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(FleetRejected, match=why):
        decode_fleet(topic, payload, None, False)


def test_a_forged_prefix_is_refused(dev: SimDevice) -> None:
    topic, payload = wire(dev.alert("Spoofed"))
    with pytest.raises(FleetRejected, match="does not belong"):
        decode_fleet(topic.replace("edge-a", "edge-b"), payload, None, False)
    health = json.dumps(dev.health("monitor")).encode()
    with pytest.raises(FleetRejected, match="health of monitor@edge-a"):
        decode_fleet("vv/edge-b/health/monitor", health, None, False)


def test_pipeline_events_decode_without_a_content_type(dev: SimDevice) -> None:
    event = dev.logline_event(dev.logline())
    topic, payload = wire(event)  # msgpack, as a 3.1.1 bridge delivers it: no content type
    message = decode_fleet(topic, payload, None, False)
    assert message.event is not None and message.event.id == event.id


def test_ack_and_silence_become_commands_with_author_and_until(console: Console, dev: SimDevice) -> None:
    console.send(dev.alert("Disk almost full"), T0)
    alert = find_alert(console.store, f"edge-a:{console.store.alerts()[0].dedup_key[:8]}")
    ack_id = record_ack(console.store, alert, "alice", "on it", T0, 3600)
    matcher, devices = parse_matchers(["title=Disk almost full", "device=edge-a"])
    [silence_id] = record_silence(
        console.store, matcher, devices, parse_duration("2h"), "bob", "maintenance", T0
    )
    actions = {a.id: a for a in console.store.actions(pending=True)}
    ack = command_event(actions[ack_id], epoch=1, seq=1)
    silence = command_event(actions[silence_id], epoch=1, seq=1)
    for event in (ack, silence):
        validate("envelope", event.to_dict())
        validate("cmd", event.data)
    assert (ack.type, ack.device, ack.data["author"]) == ("cmd.alerter.ack", "edge-a", "alice")
    assert ack.data["args"] == {"dedup_key": alert.dedup_key, "comment": "on it"}
    assert parse_time(ack.data["until"]).timestamp() == T0 + 3600
    assert (silence.type, silence.data["author"], silence.data["reason"]) == (
        "cmd.alerter.silence",
        "bob",
        "maintenance",
    )
    assert silence.data["args"]["matcher"] == {"title": "Disk almost full"}
    assert (
        parse_time(silence.data["until"]).timestamp()
        == T0 + 7200
        == parse_time(silence.data["args"]["until"]).timestamp()
    )
    assert console.fleet.acked("edge-a", alert.dedup_key, "alice", T0 + 1)
    console.send(dev.alert("Disk almost full", status="resolved"), T0 + 2)
    [resolved] = console.store.alerts()
    assert resolved.acked_by is None  # an ack lasts until the alert resolves


def test_pause_and_resume_ingest_are_recorded_with_their_author(console: Console) -> None:
    pause = record_command(console.store, "cmd.ingest.pause", "edge-a", {}, "carol", "disk swap", T0, 600)
    resume = record_command(console.store, "cmd.ingest.resume", "edge-a", {}, "carol", "", T0 + 60, 600)
    actions = {a.id: a for a in console.store.actions(pending=True)}
    event = command_event(actions[pause], epoch=2, seq=7)
    assert (event.type, event.data["author"], event.data["reason"]) == (
        "cmd.ingest.pause",
        "carol",
        "disk swap",
    )
    assert parse_time(event.data["until"]).timestamp() == T0 + 600
    assert command_event(actions[resume], epoch=2, seq=1).data == {
        "args": {},
        "until": actions[resume].until,
        "author": "carol",
    }
    with pytest.raises(SchemaError):
        record_command(console.store, "cmd.ingest.pause", "edge-a", {"now": True}, "carol", "", T0, 600)


@pytest.mark.parametrize(
    ("matchers", "why"),
    [
        (["device=edge-a"], "needs a matcher"),
        (["severity=ERROR"], "not one of"),
        (["title=~Disk"], "only equality"),
    ],
)
def test_bad_matchers_are_refused(matchers: list[str], why: str) -> None:
    with pytest.raises(ActionError, match=why):
        parse_matchers(matchers)


def test_command_args_follow_the_schema(console: Console) -> None:
    action_id = console.store.add_action(
        T0,
        "console",
        "cmd.journal.resend",
        "edge-a",
        {"type": "alert.error", "by": "seq", "first": 1, "last": 2},
        utc_now(),
        "",
    )
    [action] = [a for a in console.store.actions() if a.id == action_id]
    with pytest.raises(SchemaError, match="source"):
        command_event(action, 1, 1)


def test_history_is_kept_for_its_retention_only(console: Console, dev: SimDevice) -> None:
    console.send(dev.alert("Old"), T0)
    console.send(dev.alert("New"), T0 + 40 * 86400)
    assert console.store.prune(T0 + 40 * 86400 - SETTINGS.history_days * 86400) >= 2  # history and seen id
    assert [h.title for h in console.store.history()] == ["New"]


def test_impossible_times_in_events_are_refused(dev: SimDevice) -> None:
    """The schemas check a time's shape; a calendar-impossible one would stop the fold."""
    alert = dev.alert("Offset of 25 hours")
    alert.data["timestamp"] = "2026-01-01T00:00:00+25:00"
    with pytest.raises(FleetRejected, match=r"\+25:00"):
        decode_fleet(*wire(alert), None, False)
    line = dev.logline()
    line["created_at"] = "2026-02-30T00:00:00Z"
    with pytest.raises(FleetRejected, match="2026-02-30"):
        decode_fleet(*wire(dev.logline_event(line)), None, False)


def _mixed_traffic(a: SimDevice, b: SimDevice) -> list[Any]:
    """Links, beats, alerts firing/resolving, a duplicate, LogLines with a gap and a late fill."""
    msgs: list[Any] = []
    for dev in (a, b):
        msgs.append(decode_fleet(f"vv/{dev.device}/bridge/state", b"1", None, True))
        for node in ("monitor", "scan", "sign"):
            msgs.append(
                decode_fleet(
                    f"vv/{dev.device}/health/{node}", json.dumps(dev.health(node, 2.0)).encode(), None, False
                )
            )
    fire = a.alert("Disk almost full")
    msgs += [decode_fleet(*wire(event), None, False) for event in (fire, fire, b.alert("Fan failed"))]
    msgs.append(decode_fleet(*wire(a.alert("Disk almost full", status="resolved")), None, False))
    lines = [a.logline_event(a.logline()) for _ in range(4)]
    for event in (lines[0], lines[2], lines[3], lines[1]):  # seq 2 arrives last: a gap, then filled
        msgs.append(decode_fleet(*wire(event), None, False))
    msgs.append(decode_fleet("vv/edge-b/bridge/state", b"0", None, True))
    return msgs


def _contents(store: ConsoleStore) -> tuple[Any, ...]:
    history = [(h.at, h.device, h.kind, h.key, h.change) for h in store.history()]
    actions = [(x.device, x.kind, x.args) for x in store.actions()]
    chain = [(c.seq, c.hash, c.verified) for c in store.chain_at("edge-a", 2) + store.chain_at("edge-a", 4)]
    return store.devices(), store.alerts(), store.health(), store.gaps(), history, actions, chain


def test_a_batch_folds_as_its_messages_one_by_one(tmp_path: Path) -> None:
    """The service folds what arrived together in one transaction: the same outcome as one each."""
    a, b = SimDevice("edge-a"), SimDevice("edge-b")
    msgs = _mixed_traffic(a, b)
    singly = Console(lambda: SqliteStore(tmp_path / "singly.sqlite"), tmp_path, a, b)
    batched = Console(lambda: SqliteStore(tmp_path / "batched.sqlite"), tmp_path, a, b)
    for message in msgs:
        singly.fleet.receive(message, T0)
    batched.fleet.receive_batch(msgs, T0)
    for console in (singly, batched):
        console.fleet.tick(T0 + 1)
    assert _contents(batched.store) == _contents(singly.store)
    assert len(batched.store.alerts()) == 2 and batched.store.gaps() == []
    assert [d.link for d in batched.store.devices()] == ["up", "down"]


def test_a_beat_that_changes_no_tile_is_not_streamed(console: Console, dev: SimDevice) -> None:
    """800 beats a second at 1,000 devices: a page hears of a device only when its tile changes."""
    heard: list[Any] = []
    console.fleet.on_change = heard.append
    console.health("edge-a", dev.health("monitor", 2.0), T0)
    assert [(c.kind, c.device) for c in heard] == [("device", "edge-a")]
    for n in range(1, 4):
        console.health("edge-a", dev.health("monitor", 2.0), T0 + n)
    assert len(heard) == 1
    console.health("edge-a", dev.health("monitor", 2.0, status="degraded"), T0 + 5)
    console.link("edge-a", False, T0 + 6)
    assert [c.kind for c in heard] == ["device", "device", "device"]
    assert heard[-1].data == {"link": "down", "stale": False}
    state = console.store.device("edge-a")
    assert state is not None and state.health_at == T0 + 5 and state.last_seen == T0 + 5
