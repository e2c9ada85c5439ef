"""The fleet link end to end: real mosquitto processes (one central broker rendered by `vv broker
--central`, edge brokers rendered by `vv broker` with the `[bridge]` of their `vv fleet enroll`
bundle), real TLS with certificates from `vv fleet`, default timings where recovery is proven.

mosquitto 2.0.11 facts these tests pin: the MQTT 3.1.1 bridge with cleansession false keeps its
session on the central broker across that broker's restart (a command published before the
bridge is back is delivered), and local_cleansession false keeps what waits to go out across the
edge broker's own restart; the central broker publishes the bridge's will (link down, retained)
as soon as the link dies, or after 1.5 x keepalive when the box hangs silently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES_DIR, REPO, Probe, Publisher, free_port, wait_until
from fleet import FleetRig, attempt, bundle_tls, checked, run_vv

from bus.alerts import build_alert
from bus.broker import secret_for
from bus.broker_central import DEV_USER
from bus.config import load_settings
from bus.envelope import Event, parse_time

pytestmark = pytest.mark.slow
OUTAGE_S = 20.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[FleetRig]:
    fleet = FleetRig(tmp_path)
    yield fleet
    for edge in fleet.edges.values():  # a test may leave an edge broker stopped (SIGSTOP)
        if edge.broker.proc and edge.broker.proc.poll() is None:
            edge.broker.proc.send_signal(signal.SIGCONT)
    fleet.close()


def alert_data(device: str, title: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES_DIR / "alert" / "valid-1.json").read_text())
    data.update(hostname=device, title=title, source_component="disk", severity="WARNING")
    return data


def raise_alert(publisher: Publisher, title: str) -> Event:
    event = publisher.event("alert.warning", alert_data(publisher.device, title))
    publisher.publish(event)
    return event


def raise_distinct_alert(publisher: Publisher, title: str) -> Event:
    """An alert of its own (its dedup_key from its title), as a node raises one per condition."""
    data = build_alert(severity="WARNING", title=title, details=title, source="disk", device=publisher.device)
    event = publisher.event("alert.warning", data)
    publisher.publish(event)
    return event


def silence(publisher: Publisher) -> Event:
    """The console's shape: the silence's end in args, the command's expiry (the same) at the top."""
    end = "2099-01-01T00:00:00Z"
    event = publisher.event(
        "cmd.alerter.silence",
        {"args": {"matcher": {"title": "noisy"}, "until": end}, "until": end, "reason": "test"},
    )
    publisher.publish(event)
    return event


def ids(probe: Probe, event_type: str) -> list[str]:
    return [e["id"] for e in probe.events(event_type)]


def link_states(probe: Probe, device: str) -> list[tuple[float, bytes, bool]]:
    return probe.payloads(f"vv/{device}/bridge/state")


def wait_link(probe: Probe, device: str, state: bytes, after: float = 0.0, timeout: float = 40) -> float:
    """When `device`'s link state `state` ("1" up, "0" down) arrived at `probe` after `after`."""

    def seen() -> float | None:
        return next(
            (at for at, payload, _ in link_states(probe, device) if at > after and payload == state), None
        )

    return float(wait_until(seen, timeout, f"vv/{device}/bridge/state = {state!r}"))


def test_alert_goes_up_and_a_command_comes_down(rig: FleetRig) -> None:
    rig.start_central()
    console = rig.console_probe()
    rig.add_edge("A")
    rig.add_edge("B")
    wait_link(console, "A", b"1")
    wait_link(console, "B", b"1")
    # the node's own credential on A's edge broker; the central copy keeps its topic, no remapping
    alert = raise_alert(rig.edge_publisher("A", "disk"), "disk filling")
    arrived = console.wait_event("alert.warning", where=lambda e: e["id"] == alert.id)
    assert arrived[0]["device"] == "A" and arrived[0]["data"]["title"] == "disk filling"
    assert any(t == "vv/A/alert/warning" for _, t, _, _ in console.received)

    b_alerter = rig.edge_probe("B", "vv/B/cmd/alerter/#", node="alerter")
    a_everything = rig.edge_probe("A", "vv/#")
    command = silence(rig.console_publisher("B"))
    assert b_alerter.wait_event("cmd.alerter.silence")[0]["id"] == command.id
    # A's marker goes through A's edge after the command was routed: A never got B's command
    marker = raise_alert(rig.edge_publisher("A", "disk"), "marker")
    a_everything.wait_event("alert.warning", where=lambda e: e["id"] == marker.id)
    assert ids(a_everything, "cmd.alerter.silence") == []
    # the link state is retained on central: a console that connects later sees both links up
    late = rig.console_probe("vv/+/bridge/state")
    wait_until(
        lambda: (
            {t for _, t, p, r in late.received if r and p == b"1"}
            >= {
                "vv/A/bridge/state",
                "vv/B/bridge/state",
            }
        ),
        10,
        "retained link states",
    )


@pytest.mark.parametrize("restart_edge", [False, True], ids=["central-down", "central-down-edge-restarted"])
def test_central_outage_loses_nothing(rig: FleetRig, restart_edge: bool) -> None:
    rig.start_central()
    console = rig.console_probe("vv/+/alert/#", session="console-probe")
    rig.add_edge("A")
    rig.add_edge("B")
    b_alerter = rig.edge_probe("B", "vv/B/cmd/alerter/#", node="alerter", session="alerter-B")
    b_link = rig.edge_probe("B", "vv/B/bridge/state")  # the bridge's own notification on B's broker
    wait_link(b_link, "B", b"1")
    a_disk = rig.edge_publisher("A", "disk")
    raise_alert(a_disk, "link check")
    console.wait_event("alert.warning")

    assert rig.central is not None
    rig.central.stop()
    down_at = time.monotonic()
    queued = raise_alert(a_disk, "raised while central is down")  # PUBACKed by A's edge broker
    if restart_edge:
        a_disk.close()
        rig.edges["A"].broker.stop()
        rig.edges["A"].broker.start()
        a_disk = rig.edge_publisher("A", "disk")
    time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))  # the outage itself, not a wait for state
    rig.central.start()

    # the console sends a command for B at once, while B's bridge is still backing off: the central
    # broker queues it in the bridge's persistent session (MQTT 3.1.1, cleansession false)
    command = silence(rig.console_publisher("B"))
    commanded_at = time.monotonic()
    assert b_alerter.wait_event("cmd.alerter.silence", timeout=60)[0]["id"] == command.id
    assert wait_link(b_link, "B", b"1", after=down_at) > commanded_at, (
        "B's bridge was back before the command"
    )

    console.wait_event("alert.warning", timeout=60, where=lambda e: e["id"] == queued.id)
    marker = raise_alert(a_disk, "after the outage")
    console.wait_event("alert.warning", timeout=30, where=lambda e: e["id"] == marker.id)
    assert ids(console, "alert.warning").count(queued.id) == 1
    assert ids(b_alerter, "cmd.alerter.silence").count(command.id) == 1


def test_link_down_when_an_edge_broker_dies(rig: FleetRig) -> None:
    rig.start_central()
    console = rig.console_probe("vv/+/bridge/state")
    edge = rig.add_edge("B")
    up = wait_link(console, "B", b"1")
    keepalive = edge.settings.bridge.keepalive_s
    edge.broker.kill()
    killed_at = time.monotonic()
    down = wait_link(console, "B", b"0", after=up, timeout=2 * keepalive)
    print(f"link down seen {down - killed_at:.2f}s after SIGKILL (keepalive {keepalive}s)")
    late = rig.console_probe("vv/+/bridge/state")
    wait_until(lambda: (b"0", True) in [(p, r) for _, p, r in link_states(late, "B")], 10, "retained down")
    edge.broker.start()
    wait_link(console, "B", b"1", after=down, timeout=60)


def test_link_down_when_an_edge_hangs_silently(tmp_path: Path) -> None:
    """A box that stops answering without closing its connection (power cut, cable pulled): only
    the keepalive tells, 1.5 x keepalive_s after its last packet, noticed by mosquitto 2.0's
    keepalive sweep that runs every 5-6 s (so the default 30 s is within 2 x keepalive: <= 51 s).
    5 s is mosquitto's least keepalive."""
    rig = FleetRig(tmp_path, {"VV_BRIDGE_KEEPALIVE_S": "5"})
    try:
        rig.start_central()
        console = rig.console_probe("vv/+/bridge/state")
        edge = rig.add_edge("B")
        up = wait_link(console, "B", b"1")
        assert edge.broker.proc is not None
        edge.broker.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        down = wait_link(console, "B", b"0", after=up, timeout=1.5 * 5 + 6 + 1)
        print(f"link down seen {down - stopped_at:.2f}s after the edge broker froze (keepalive 5s)")
        edge.broker.proc.send_signal(signal.SIGCONT)
        wait_link(console, "B", b"1", after=down, timeout=60)
    finally:
        for edge in rig.edges.values():
            if edge.broker.proc and edge.broker.proc.poll() is None:
                edge.broker.proc.send_signal(signal.SIGCONT)
        rig.close()


def test_a_device_certificate_speaks_only_for_its_device(rig: FleetRig) -> None:
    rig.start_central()
    rig.enroll("A")
    rig.enroll("B")
    a_home = rig.root / "A" / "keys" / "fleet"
    a_home.parent.mkdir(parents=True)
    os.rename(rig.home / "fleet" / "enrolled" / "A", a_home)
    console = rig.console_probe()
    a_cmds = Probe(rig.port, "", "", "vv/+/cmd/#", tls=bundle_tls(a_home))
    rig.clients.append(a_cmds)
    stolen = rig.device_publisher("A")
    for topic in (
        "vv/B/alert/warning",
        "vv/B/health/disk",
        "vv/B/bridge/state",
        "vv/B/cmd/alerter/silence",
        "vv/A/cmd/alerter/silence",
        "vv/A/video/new",
        "vv/A/logline/other",
    ):
        stolen.raw(topic, b'{"forged": true}', "application/json")
    marker = raise_alert(stolen, "marker")  # allowed: its own alerts, sent after the refused ones
    console.wait_event("alert.warning", where=lambda e: e["id"] == marker.id)
    forged = [t for _, t, p, _ in console.received if b"forged" in p]
    assert forged == []

    # and it reads only its own commands
    console_out = rig.console_publisher("B")
    silence(console_out)
    console_out.device = "A"
    mine = silence(console_out)
    a_cmds.wait_event("cmd.alerter.silence", where=lambda e: e["id"] == mine.id)
    assert [t for _, t, _, _ in a_cmds.received] == ["vv/A/cmd/alerter/silence"]


def test_the_console_credential_cannot_publish_device_topics(rig: FleetRig) -> None:
    rig.start_central()
    observer = rig.console_probe()
    console = rig.console_publisher("A")
    for topic in ("vv/A/alert/warning", "vv/A/health/disk", "vv/A/logline/signed", "vv/A/bridge/state"):
        console.raw(topic, b'{"forged": true}', "application/json")
    command = silence(console)  # what a console may send
    observer.wait_event("cmd.alerter.silence", where=lambda e: e["id"] == command.id)
    assert [t for _, t, _, _ in observer.received] == ["vv/A/cmd/alerter/silence"]


def test_nothing_anonymous_on_the_central_broker(rig: FleetRig, tmp_path: Path) -> None:
    dev_port = free_port()
    rig.start_central("--dev-listener", str(dev_port))
    assert attempt(rig.port, tls=rig.console_tls) == "connected"
    assert attempt(rig.port) != "connected"  # plain MQTT on the TLS port
    assert attempt(rig.port, ca_only=rig.console_tls.ca) != "connected"  # TLS without a certificate
    # a certificate from another CA with a device's name
    other = {**rig.env, "VV_HOME": str(tmp_path / "other")}
    checked(run_vv(other, "fleet", "ca", "init"))
    foreign = Path(checked(run_vv(other, "fleet", "enroll", "A", "--address", "127.0.0.1")))
    assert attempt(rig.port, tls=bundle_tls(foreign)) != "connected"
    # the development listener: loopback, a password login with a console's rights, no anonymous
    assert attempt(dev_port) != "connected"
    assert attempt(dev_port, login=(DEV_USER, "wrong")) != "connected"
    password = secret_for(load_settings(rig.env), DEV_USER)
    assert attempt(dev_port, login=(DEV_USER, password)) == "connected"


def test_outage_alert_once_and_the_consoles_silence_reaches_bs_alerter_and_expires(rig: FleetRig) -> None:
    """The issue's end to end: `vv console` as a real process (TLS, its enrolled certificate), B's
    alerter as a real node with default settings, the central broker down for 20 s while A raises an
    alert and an operator silences B (`vv fleet silence`, recorded while the link is down). After
    central returns the alert is in the console's store once, and the silence reaches B's alerter
    with its author and comment and expires when it said (the bridge reconnects with its default
    backoff, so the silence is long enough to arrive first)."""
    rig.start_central()
    console_env = {
        **rig.env,
        "VV_CONSOLE_PORT": str(rig.port),
        "VV_CONSOLE_CA": str(rig.console_tls.ca),
        "VV_CONSOLE_CERT": str(rig.console_tls.cert),
        "VV_CONSOLE_KEY": str(rig.console_tls.key),
    }
    log = (rig.root / "console.out").open("ab")
    console = subprocess.Popen(
        [sys.executable, "-m", "nodes.cli", "console"], env=console_env, cwd=REPO, stdout=log, stderr=log
    )
    try:
        probe = rig.console_probe("vv/+/alert/#", session="console-probe")
        rig.add_edge("A")
        b = rig.add_edge("B")
        b_health = rig.edge_probe("B", "vv/B/health/alerter")
        b.spawn("run", "alerter")
        b_health.wait_health("alerter", "online")
        b_link = rig.edge_probe("B", "vv/B/bridge/state")
        wait_link(b_link, "B", b"1")
        a_disk = rig.edge_publisher("A", "disk")
        raise_distinct_alert(a_disk, "link check")

        def fleet_alerts(device: str) -> list[dict[str, Any]]:
            result = run_vv(rig.env, "fleet", "alerts", "--device", device, "--json")
            return json.loads(result.stdout) if result.returncode == 0 else []  # type: ignore[no-any-return]

        wait_until(lambda: fleet_alerts("A"), 30, "the console to fold A's first alert")

        assert rig.central is not None
        rig.central.stop()
        down_at = time.monotonic()
        queued = raise_distinct_alert(a_disk, "raised while central is down")
        checked(
            run_vv(
                rig.env, "fleet", "silence", "title=Noisy", "device=B", "--for", "90s",
                "--comment", "camera swap", "--author", "bob",
            )
        )  # fmt: skip
        time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))  # the outage itself, not a wait for state
        rig.central.start()

        shown = wait_until(
            lambda: next((h for h in b_health.health("alerter") if h["details"]["alerts"]["silences"]), None),
            90,
            "the silence in B's alerter",
        )
        [silence] = shown["details"]["alerts"]["silences"]
        assert (silence["matcher"], silence["author"], silence["reason"]) == (
            {"title": "Noisy"},
            "bob",
            "camera swap",
        )
        [arrived] = wait_until(
            lambda: [a for a in fleet_alerts("A") if a["title"] == "raised while central is down"],
            60,
            "the alert raised during the outage in the console's store",
        )
        assert arrived["count"] == 1
        # the probe's own session reconnects with paho's backoff: wait for it, then count
        wait_until(lambda: queued.id in ids(probe, "alert.warning"), 60, "the probe's copy of the alert")
        assert ids(probe, "alert.warning").count(queued.id) == 1

        end = parse_time(silence["until"]).timestamp()
        index = b_health.health("alerter").index(shown)
        gone = wait_until(
            lambda: next(
                (h for h in b_health.health("alerter")[index:] if not h["details"]["alerts"]["silences"]),
                None,
            ),
            120,
            "the silence to expire in B's alerter",
        )
        assert end <= parse_time(gone["time"]).timestamp() <= end + 2.0
        assert gone["details"]["expired_commands"] == 0
    finally:
        console.terminate()
        console.wait(15)
        log.close()
