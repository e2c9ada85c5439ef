"""`vv fleet sim` as a real command against a real central broker (`vv broker --central`, TLS) and
`vv console` as a real process: the simulated devices connect with their own enrolled
certificates, and the console's store sees every one of them, their health, alerts and chains."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, device_env, free_port, wait_until
from fleet import Console, FleetRig

pytestmark = pytest.mark.slow
DEVICES = 12


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[FleetRig]:
    fleet = FleetRig(tmp_path)
    yield fleet
    fleet.close()


def sim(rig: FleetRig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", "fleet", "sim", "--port", str(rig.port), *args],
        env=rig.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_console_sees_every_simulated_device(rig: FleetRig) -> None:
    rig.start_central()
    console = Console(rig)
    try:
        wait_until(lambda: (rig.home / "console" / "console.sqlite").exists(), 30, "the console's store")
        quick = ("--health-interval", "0.5", "--video-interval", "1", "--burst-every", "1")
        result = sim(rig, "--devices", str(DEVICES), "--duration", "6", *quick, "--outages", "0", "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["connected"] == DEVICES and summary["never_connected"] == []
        assert summary["ended_by"] == "duration"
        assert {"health", "alert", "logline", "link"} <= set(summary["published"])
        # the console asks each new device for its firing alerts: those resyncs reach the devices over
        # their own `cmd/#` subscriptions (how many within the run depends on the machine's load)
        assert summary["commands"] > 0

        names = {f"sim-{i:02d}" for i in range(1, DEVICES + 1)}
        registry = json.loads((rig.home / "fleet" / "devices.json").read_text())["devices"]
        assert names <= set(registry) and all(registry[n]["tags"] == ["sim"] for n in names)
        status = wait_until(
            lambda: (rows := console.fleet("status")) and {r["device"] for r in rows} >= names and rows,
            15,
            "every simulated device in `vv fleet status`",
        )
        rows = {r["device"]: r for r in status}
        # their nodes' health and their LogLine chains, each signature checked against the registry
        assert all(rows[n]["nodes_total"] == 8 for n in names)
        assert all(rows[n]["chain_head"] and rows[n]["chain_head"]["verified"] for n in names)
        alerts = console.fleet("alerts", "--all")
        assert {a["device"] for a in alerts if a["source_component"] != "console"} & names
        # nothing the simulated fleet did looks like tampering to the central witness
        assert [a for a in alerts if a["severity"] == "CRITICAL" and a["source_component"] == "console"] == []

        # a second run resumes each device's key and chain: still no fork or rewind
        again = sim(rig, "--devices", "3", "--duration", "3", *quick, "--outages", "0", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["connected"] == 3
        later = console.fleet("alerts", "--all")
        assert [a for a in later if a["severity"] == "CRITICAL" and a["source_component"] == "console"] == []
    finally:
        console.close()


def test_simulated_links_go_down_and_come_back(rig: FleetRig) -> None:
    rig.start_central()
    console = Console(rig)
    try:
        wait_until(lambda: (rig.home / "console" / "console.sqlite").exists(), 30, "the console's store")
        result = sim(
            rig, "--devices", "3", "--duration", "6", "--health-interval", "0.5", "--outages", "1",
            "--outage", "1", "--prefix", "flaky-", "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["outages"] == 3 and summary["connected"] == 3

        def changes() -> list[str]:
            return [
                e["change"] for e in console.fleet("history", "--device", "flaky-1") if e["kind"] == "device"
            ]

        # up, down for the outage, up again, and down when the run ends (each device's last word)
        seen = wait_until(
            lambda: (c := changes()).count("link down") >= 2 and c, 20, "flaky-1's link changes"
        )
        assert seen.count("link up") >= 2
    finally:
        console.close()


def test_sim_refuses_without_a_fleet_ca(tmp_path: Path) -> None:
    env = device_env(tmp_path / "empty", "central", free_port())
    result = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "fleet", "sim", "--devices", "2", "--duration", "1"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "vv fleet ca init" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "fleet", "sim", "--devices", "0", "--duration", "1"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--devices" in bad.stderr
