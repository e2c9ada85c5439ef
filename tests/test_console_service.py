"""`vv console` as a real process on a real mosquitto (the central broker's plain listener), with
simulated devices publishing real envelopes as their bridges deliver them (MQTT 3.1.1: no content
type), and `vv fleet` queries run as real commands."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import VV, Publisher, wait_until

from bus.broker import ADMIN_USER, secret_for
from bus.config import ConfigError, load_settings
from bus.envelope import Event, parse_time, utc_now
from bus.fleet import FleetMessage, decode_fleet
from nodes.console.service import ConsoleService
from nodes.console.store import SqliteStore
from nodes.fleet.sim import SimDevice, wire


class Central:
    """The console process over the test broker, the devices' publisher, a probe on the commands."""

    def __init__(self, vv: VV, *devices: SimDevice) -> None:
        self.vv = vv
        registry = vv.home / "fleet" / "devices.json"
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text(json.dumps({"devices": {d.device: d.registry_entry() for d in devices}}))
        self.env = {
            "VV_CONSOLE_PORT": str(vv.broker.port),
            "VV_CONSOLE_USERNAME": ADMIN_USER,
            "VV_CONSOLE_PASSWORD": secret_for(vv.settings, ADMIN_USER),
            # gap figures shortened so a missing LogLine is called within seconds (not staleness)
            "VV_CONSOLE_REORDER_TIMEOUT_S": "0.5",
            "VV_CONSOLE_RESEND_WAIT_S": "1",
        }
        self.publisher = Publisher(vv.broker.port, *vv.admin())
        self.commands = vv.probe("vv/+/cmd/#")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.vv.spawn("console", extra_env=self.env)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0

    def send(self, event: Event) -> None:
        topic, payload = wire(event)
        self.publisher.raw(topic, payload)  # no content type, as a 3.1.1 bridge delivers it

    def retain(self, topic: str, payload: bytes) -> None:
        self.publisher.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)

    def health(self, doc: dict[str, Any]) -> None:
        self.retain(f"vv/{doc['device']}/health/{doc['node']}", json.dumps(doc).encode())

    def fleet(self, *args: str) -> Any:
        result = self.vv.vv("fleet", *args, "--json")
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    def alerts(self, *args: str) -> list[dict[str, Any]]:
        return self.fleet("alerts", *args)  # type: ignore[no-any-return]

    def device(self, device: str) -> dict[str, Any] | None:
        if not (self.vv.home / "console" / "console.sqlite").exists():
            return None
        return next((d for d in self.fleet("status") if d["device"] == device), None)

    def connect(self, dev: SimDevice) -> None:
        """Announce the device's link and wait until the console has it: the console is listening."""
        self.retain(f"vv/{dev.device}/bridge/state", b"1")
        wait_until(lambda: self.device(dev.device), 15, f"the console to see {dev.device}")

    def close(self) -> None:
        self.publisher.close()
        self.commands.close()


@pytest.fixture
def devices() -> tuple[SimDevice, SimDevice]:
    return SimDevice("edge-a"), SimDevice("edge-b")


@pytest.fixture
def central(vv: VV, devices: tuple[SimDevice, SimDevice]) -> Iterator[Central]:
    c = Central(vv, *devices)
    c.start()
    yield c
    c.close()


def _titles(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["title"] for a in alerts}


def test_an_alert_shows_in_fleet_alerts_within_2s(
    central: Central, devices: tuple[SimDevice, SimDevice]
) -> None:
    dev, _ = devices
    central.connect(dev)
    # a device seen for the first time is asked which alerts are firing
    central.commands.wait_event("cmd.alerter.resync", where=lambda e: e["device"] == "edge-a")
    started = time.monotonic()
    central.send(dev.alert("Disk almost full"))
    [alert] = wait_until(lambda: central.alerts("--device", "edge-a"), 2, "the alert in `vv fleet alerts`")
    print(f"alert visible in `vv fleet alerts --json` after {time.monotonic() - started:.2f}s")
    assert (alert["title"], alert["severity"], alert["status"], alert["count"]) == (
        "Disk almost full",
        "ERROR",
        "firing",
        1,
    )
    [status] = [d for d in central.fleet("status") if d["device"] == "edge-a"]
    assert status["link"] == "up" and status["firing"] == {"ERROR": 1}


def test_chain_faults_each_raise_critical(central: Central, devices: tuple[SimDevice, SimDevice]) -> None:
    dev, _ = devices
    central.connect(dev)
    lines = [dev.logline() for _ in range(5)]
    for line in (lines[0], lines[1], lines[3], lines[4]):  # seq 3 removed
        central.send(dev.logline_event(line))
    central.send(dev.logline_event(dev.logline(seq=5, text="a second seq 5")))  # a fork
    central.health(dev.sign_health(upto=2))  # the device's signed head went back: a rewind

    def critical() -> set[str]:
        return _titles(central.alerts("--severity", "CRITICAL", "--device", "edge-a"))

    expected = {"LogLine missing from the chain", "LogLine chain fork", "LogLine chain rewound"}
    wait_until(lambda: critical() >= expected, 15, "the three CRITICAL alerts")
    [resend] = central.commands.wait_event("cmd.journal.resend")
    assert resend["data"]["args"] == {"type": "logline.signed", "by": "chain", "first": 3, "last": 3}
    [status] = [d for d in central.fleet("status") if d["device"] == "edge-a"]
    assert status["chain_head"]["seq"] == 5 and status["chain_head"]["verified"] is True


def test_duplicates_are_ignored_and_a_restart_loses_nothing(
    central: Central, devices: tuple[SimDevice, SimDevice]
) -> None:
    dev, other = devices
    central.connect(dev)
    first = dev.alert("Fan failed")
    central.send(first)
    central.send(first)  # a bridge resend: same event id
    central.send(dev.logline_event(dev.logline()))
    wait_until(lambda: central.alerts("--device", "edge-a"), 5, "the first alert")
    central.stop()
    central.send(first)  # redelivered while the console is down
    central.send(other.alert("Camera offline"))  # queued for the console's session meanwhile
    central.start()
    wait_until(lambda: central.alerts("--device", "edge-b"), 15, "the alert sent while the console was down")
    [fan] = central.alerts("--device", "edge-a")
    assert fan["count"] == 1
    history = central.fleet("history", "--since", "1h")
    firing = [h for h in history if h["kind"] == "alert" and h["change"] == "firing"]
    assert sorted(h["title"] for h in firing) == ["Camera offline", "Fan failed"]  # one page each
    [status] = [d for d in central.fleet("status") if d["device"] == "edge-a"]
    assert status["link"] == "up" and status["chain_head"]["seq"] == 1


def test_a_device_whose_health_stops_becomes_stale(
    central: Central, devices: tuple[SimDevice, SimDevice]
) -> None:
    dev, _ = devices
    central.connect(dev)
    interval = 1.0  # the device's own health interval (its documents say so); the console's default stays
    for beat in range(3):
        if beat:
            time.sleep(interval / 2)  # the simulated device's pace, not a synchronisation
        central.health(dev.health("monitor", interval_s=interval))
        last_beat = time.monotonic()
        assert not central.device("edge-a")["stale"]  # type: ignore[index]
    wait_until(lambda: central.device("edge-a")["stale"], 3 * interval + 2, "edge-a stale")  # type: ignore[index]
    assert time.monotonic() - last_beat >= 3 * interval
    [alert] = [a for a in central.alerts("--device", "edge-a") if a["source_component"] == "console"]
    assert alert["title"] == "Device stopped reporting"
    central.health(dev.health("monitor", interval_s=interval))
    wait_until(lambda: not central.device("edge-a")["stale"], 5, "edge-a fresh again")  # type: ignore[index]
    assert [a for a in central.alerts("--device", "edge-a") if a["source_component"] == "console"] == []


def test_ack_and_silence_go_out_as_commands(central: Central, devices: tuple[SimDevice, SimDevice]) -> None:
    dev, _ = devices
    central.connect(dev)
    central.send(dev.alert("Disk almost full"))
    [alert] = wait_until(lambda: central.alerts("--device", "edge-a"), 5, "the alert")
    result = central.vv.vv("fleet", "ack", alert["ref"], "--author", "alice", "--comment", "on it")
    assert result.returncode == 0, result.stderr
    [ack] = central.commands.wait_event("cmd.alerter.ack")
    assert ack["device"] == "edge-a" and ack["data"]["author"] == "alice"
    assert ack["data"]["args"] == {"dedup_key": alert["dedup_key"], "comment": "on it"}
    assert parse_time(ack["data"]["until"]).timestamp() > time.time()
    wait_until(
        lambda: central.alerts("--device", "edge-a")[0]["muted"].get("acked_by") == "alice", 5, "acked"
    )

    central.stop()  # a silence given while the service is down goes out when it is back
    result = central.vv.vv(
        "fleet", "silence", "title=Disk almost full", "device=edge-a", "--for", "2h", "--comment", "maintenance",
        "--author", "bob",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    central.start()
    [silence] = central.commands.wait_event("cmd.alerter.silence")
    assert silence["data"]["author"] == "bob" and silence["data"]["reason"] == "maintenance"
    assert silence["data"]["args"]["matcher"] == {"title": "Disk almost full"}
    end = parse_time(silence["data"]["until"]).timestamp()
    assert end == parse_time(silence["data"]["args"]["until"]).timestamp()
    assert 7100 < end - time.time() <= 7200
    [shown] = central.alerts("--device", "edge-a")
    assert shown["muted"]["silenced_by"] == "bob"


def test_bad_usage_exits_2(central: Central, devices: tuple[SimDevice, SimDevice]) -> None:
    central.connect(devices[0])
    for args in (
        ("ack", "edge-a:0123456789ab"),  # names no alert
        ("ack", "nonsense"),
        ("silence", "severity=ERROR", "--for", "1h", "--comment", "x"),
        ("silence", "title=x", "--for", "soon", "--comment", "x"),
        ("history", "--since", "yesterday"),
    ):
        result = central.vv.vv("fleet", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.strip()


def test_garbage_and_forgeries_are_dropped_and_counted(
    central: Central, devices: tuple[SimDevice, SimDevice]
) -> None:
    dev, _ = devices
    central.connect(dev)
    central.publisher.raw("vv/edge-a/alert/error", b"\xc1garbage")
    topic, payload = wire(dev.alert("Spoofed"))
    central.publisher.raw(topic.replace("edge-a", "edge-b"), payload)  # edge-a's event under edge-b
    # times of the right shape that no calendar has: they passed the schemas and stopped the fold
    impossible = dev.health("scan")
    impossible["time"] = "2026-02-30T00:00:00Z"
    central.publisher.raw("vv/edge-a/health/scan", json.dumps(impossible).encode())
    late = dev.alert("Offset of 25 hours")
    late.data["timestamp"] = "2026-01-01T00:00:00+25:00"
    central.publisher.raw(*wire(late))
    central.send(dev.alert("Real"))
    wait_until(lambda: central.alerts("--device", "edge-a"), 5, "the real alert")
    assert _titles(central.alerts()) == {"Real"}
    assert central.proc is not None and central.proc.poll() is None
    log = (central.vv.home / "logs" / "app.log").read_text()
    dropped = [json.loads(line) for line in log.splitlines() if "dropped a message" in line]
    assert len(dropped) == 4 and "(4 dropped so far)" in dropped[-1]["message"]
    assert "not an RFC 3339 time: '2026-02-30T00:00:00Z'" in dropped[2]["message"]


def test_a_message_the_fold_cannot_take_is_dropped_and_its_batch_kept(tmp_path: Path) -> None:
    """The service folds a batch in one transaction; a message that breaks the fold (whatever gets
    past the checks) is retried alone, logged and counted, and the rest of its batch is kept."""
    settings = load_settings({"VV_HOME": str(tmp_path), "VV_DEVICE": "central"})
    store = SqliteStore(tmp_path / "console.sqlite")
    service = ConsoleService(settings, store)
    dev = SimDevice("edge-a")
    before, after = (decode_fleet(*wire(dev.alert(title)), None, False) for title in ("Before", "After"))
    broken = FleetMessage("edge-a", "health.scan", False, health={"node": "scan", "time": utc_now()})
    try:
        service.fold([before, broken, after], time.time())
        assert {a.title for a in store.alerts()} == {"Before", "After"}
        assert service.rejected == 1 and service.web.ingestion.rejected == 1
    finally:
        store.close()


def test_a_receive_maximum_outside_mqtt_is_a_config_error(tmp_path: Path) -> None:
    env = {"VV_HOME": str(tmp_path), "VV_DEVICE": "central", "VV_CONSOLE_RECEIVE_MAXIMUM": "70000"}
    with pytest.raises(ConfigError, match=r"console\.receive_maximum: 70000 is not within 1-65535"):
        load_settings(env)
