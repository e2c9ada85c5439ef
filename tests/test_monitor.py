"""The monitor: pure probes, then the node on a real broker (restarts, FATAL, vital signs, jobs)."""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
from conftest import DEVICE, VV, Probe, Publisher, wait_until

from bus.client import publish_properties
from bus.envelope import JSON, Event, utc_now
from nodes.journal.store import Journal
from nodes.monitor.checks import (
    graceful_offline,
    is_job,
    job_overdue,
    last_log_lines,
    liveness,
    probe_storage,
)

MONITOR_ENV = {
    "VV_BUS_HEALTH_INTERVAL_S": "0.3",
    "VV_MONITOR_CHECK_INTERVAL_S": "0.1",
    "VV_MONITOR_STARTUP_GRACE_S": "0.6",
    "VV_MONITOR_FAILURE_THRESHOLD": "3",
    "VV_MONITOR_MAX_RESTART_ATTEMPTS": "3",
    "VV_MONITOR_BACKOFF_MIN_S": "0.05",
    "VV_MONITOR_BACKOFF_MAX_S": "0.1",
    "VV_MONITOR_JOURNAL_CHECK_S": "0.2",
}
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- pure probes
def test_liveness_separates_will_missed_beats_and_alive() -> None:
    assert (
        liveness("offline", "connection lost (last will)", 0.1, 1.0, 3)
        == "offline: connection lost (last will)"
    )
    assert liveness("online", "", 3.0, 1.0, 3) is None  # exactly three intervals: not yet missed
    missed = liveness("online", "", 3.5, 1.0, 3)
    assert missed is not None and missed.startswith("missed 3 heartbeats")
    assert liveness("degraded", "camera down", 0.5, 1.0, 3) is None  # health is a separate probe
    assert graceful_offline({"status": "offline"})
    assert not graceful_offline({"status": "offline", "reason": "connection lost (last will)"})


def test_job_overdue_by_last_success_and_period() -> None:
    fresh = {"period_s": 3600, "last_success": (NOW - timedelta(minutes=80)).isoformat()}
    old = {"period_s": 3600, "last_success": (NOW - timedelta(hours=2)).isoformat()}
    assert is_job(fresh) and not is_job({"period_s": True}) and not is_job({})
    assert job_overdue(fresh, 0, NOW, grace=1.5) is None  # 80 min < 90 min
    overdue = job_overdue(old, 0, NOW, grace=1.5)
    assert overdue is not None and "2h00m ago" in overdue
    never = {"period_s": 60, "last_success": None}
    assert job_overdue(never, 60, NOW, 1.5) is None
    assert job_overdue(never, 91, NOW, 1.5) == "no success in 1m31s, expected every 1m00s"
    bad = job_overdue({"period_s": 60, "last_success": "yesterday"}, 0, NOW, 1.5)
    assert bad is not None and "not an RFC 3339 time" in bad


def test_storage_probe(tmp_path: Path) -> None:
    assert probe_storage(tmp_path / "storage") is None
    assert list((tmp_path / "storage").iterdir()) == []  # the probe file is removed
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    error = probe_storage(blocker / "storage")
    assert error is not None and "Not a directory" in error


def test_last_log_lines_of_one_node(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    with log.open("w") as handle:
        for i in range(50):
            node = "scan" if i % 2 else "ingest"
            handle.write(
                json.dumps({"time": f"t{i}", "level": "INFO", "node": node, "message": f"m{i}"}) + "\n"
            )
        handle.write("not json\n")
        handle.write(
            json.dumps(
                {
                    "time": "t50",
                    "level": "ERROR",
                    "node": "scan",
                    "message": "boom",
                    "exc": "Tb\nValueError: x",
                }
            )
        )
    lines = last_log_lines(log, "scan", 3)
    assert lines == ["t47 INFO m47", "t49 INFO m49", "t50 ERROR boom | ValueError: x"]
    assert last_log_lines(log, "scan", 100, max_bytes=200)[-1].startswith(
        "t50"
    )  # a cut first line is skipped
    assert last_log_lines(tmp_path / "missing.log", "scan", 3) == []


# ----------------------------------------------------------------------------- on the bus
def retain_health(publisher: Publisher, node: str, status: str, **extra: Any) -> None:
    """Publish a retained health document as a node (or its last will) would."""
    doc = {"node": node, "device": DEVICE, "status": status, "time": utc_now(), "pid": 999_999, **extra}
    info = publisher.client.publish(
        f"vv/{DEVICE}/health/{node}", json.dumps(doc), qos=1, retain=True, properties=publish_properties(JSON)
    )
    info.wait_for_publish(10)
    assert info.rc == paho.MQTT_ERR_SUCCESS


def alerts(probe: Probe, severity: str, title: str, status: str = "firing") -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in probe.events(f"alert.{severity}")
        if e["data"]["title"] == title and e["data"]["status"] == status
    ]


def wait_alert(
    probe: Probe, severity: str, title: str, status: str = "firing", timeout: float = 15
) -> dict[str, Any]:
    found = wait_until(
        lambda: alerts(probe, severity, title, status), timeout, f"{status} {severity} {title!r}"
    )
    return found[0]  # type: ignore[no-any-return]


def restart_requests(probe: Probe, node: str) -> list[dict[str, Any]]:
    return [
        e["data"]["args"] for e in probe.events("cmd.supervisor.restart") if e["data"]["args"]["node"] == node
    ]


def monitor_round(probe: Probe, pid: int, rounds: int, where: Any = None) -> dict[str, Any]:
    """The monitor's health once it has judged `rounds` rounds (observed, not slept on)."""

    def found() -> dict[str, Any] | None:
        for doc in reversed(probe.health("monitor")):
            details = doc.get("details", {})
            if (
                doc.get("pid") == pid
                and details.get("rounds", 0) >= rounds
                and (where is None or where(details))
            ):
                return doc
        return None

    return wait_until(found, 15, f"monitor pid {pid} after {rounds} rounds")  # type: ignore[no-any-return]


def test_fatal_after_max_restarts_raises_one_critical_and_survives_a_monitor_restart(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    vv.settings.paths.logs.mkdir(parents=True, exist_ok=True)
    with (vv.settings.paths.logs / "app.log").open("w") as handle:
        handle.write(
            json.dumps({"time": "t1", "level": "ERROR", "node": "ghost", "message": "disk quota hit"}) + "\n"
        )
    retain_health(publisher, "ghost", "offline", reason="connection lost (last will)")  # its last will
    monitor = vv.spawn("run", "monitor", extra_env=MONITOR_ENV)

    critical = wait_alert(probe, "critical", "Node unhealthy, restarts exhausted")
    assert critical["context"]["node"] == "ghost"
    assert "offline: connection lost (last will)" in critical["message_details"]
    assert "disk quota hit" in critical["message_details"]  # its last lines from logs/app.log
    requests = restart_requests(probe, "ghost")
    assert len(requests) == 3 and all(r["pid"] == 999_999 for r in requests)
    assert "attempt 3/3" in requests[-1]["reason"]
    warning = alerts(probe, "warning", "Node unhealthy, restarting")
    assert len(warning) == 1  # one per incident, not one per attempt

    # FATAL persists: a restarted monitor neither restarts ghost again nor pages again
    monitor.send_signal(signal.SIGTERM)
    assert monitor.wait(15) == 0
    again = vv.spawn("run", "monitor", extra_env=MONITOR_ENV, log_name="monitor2")
    monitor_round(probe, again.pid, 5, lambda d: d["nodes"].get("ghost", {}).get("state") == "fatal")
    assert len(restart_requests(probe, "ghost")) == 3
    assert len(alerts(probe, "critical", "Node unhealthy, restarts exhausted")) == 1

    # back online: the CRITICAL resolves and ghost is watched afresh
    retain_health(publisher, "ghost", "online")
    resolved = wait_alert(probe, "critical", "Node unhealthy, restarts exhausted", "resolved")
    assert resolved["alert_id"] == critical["alert_id"]


def test_hung_node_is_restarted_through_vv_up(vv: VV, probe: Probe) -> None:
    env = {**MONITOR_ENV, "VV_SUPERVISOR_STOP_TIMEOUT_S": "1", "VV_SUPERVISOR_STARTUP_GRACE_S": "0.5"}
    up = vv.spawn("up", "--nodes", "echo_node:Echo,monitor", log_name="up", extra_env=env)
    echo = probe.wait_health("echo", "online")
    monitor = probe.wait_health("monitor", "online")
    monitor_round(probe, monitor["pid"], 1, lambda d: d["nodes"].get("echo", {}).get("state") == "up")

    os.kill(echo["pid"], signal.SIGSTOP)  # alive but silent: only missed heartbeats tell
    request = wait_until(lambda: restart_requests(probe, "echo"), 15, "a restart request for echo")[0]
    assert request["pid"] == echo["pid"] and "missed" in request["reason"]
    back = wait_until(
        lambda: next(
            (d for d in probe.health("echo") if d["status"] == "online" and d["pid"] != echo["pid"]), None
        ),
        20,
        "echo online from a new process",
    )
    assert not psutil.pid_exists(echo["pid"]) or psutil.Process(echo["pid"]).status() == psutil.STATUS_ZOMBIE
    assert wait_alert(probe, "warning", "Node unhealthy, restarting", "resolved")["context"]["node"] == "echo"
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
    assert not psutil.pid_exists(back["pid"])


def test_stuck_video_error_from_the_journal_resolves_when_it_moves_on(vv: VV, probe: Probe) -> None:
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    stuck_id, done_id = "a" * 32, "b" * 32

    def record(event_type: str, subject: str, when: str) -> dict[str, Any]:
        event = Event(
            type=event_type,
            source=f"vv://{DEVICE}/test",
            device=DEVICE,
            epoch=1,
            seq=1,
            data={},
            subject=subject,
            time=when,
        )
        return {"topic": f"vv/{DEVICE}/x", "received_at": when, "event": event.to_dict()}

    with Journal.open(vv.settings.paths.journal) as journal:
        journal.append(record("video.new", stuck_id, old))
        journal.append(record("video.new", done_id, old))
        journal.append(record("logline.signed", done_id, old))
    vv.spawn("run", "monitor", extra_env={**MONITOR_ENV, "VV_MONITOR_STUCK_INGESTED_S": "60"})

    error = wait_alert(probe, "error", "Video stuck in pipeline")
    assert error["context"] == {"video": stuck_id, "stage": "ingested"}
    assert "ingested for 1h00m" in error["message_details"]
    with Journal.open(vv.settings.paths.journal) as journal:
        journal.append(record("scan.done", stuck_id, utc_now()))
    resolved = wait_alert(probe, "error", "Video stuck in pipeline", "resolved")
    assert resolved["alert_id"] == error["alert_id"]
    assert len(alerts(probe, "error", "Video stuck in pipeline")) == 1  # never for the signed video


def test_unwritable_storage_is_critical_until_writable_again(vv: VV, probe: Probe) -> None:
    # chmod cannot make a directory unwritable for root (tests may run as root), so the probe points at
    # a path that cannot be created for anyone: below a regular file (ENOTDIR).
    blocker = vv.home / "blocker"
    vv.home.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a regular file where a directory should be")
    env = {**MONITOR_ENV, "VV_MONITOR_STORAGE_PROBE": str(blocker / "storage")}
    vv.spawn("run", "monitor", extra_env=env)

    critical = wait_alert(probe, "critical", "Storage not writable")
    assert "Not a directory" in critical["message_details"]
    blocker.unlink()
    blocker.mkdir()
    resolved = wait_alert(probe, "critical", "Storage not writable", "resolved")
    assert resolved["alert_id"] == critical["alert_id"]
    assert len(alerts(probe, "critical", "Storage not writable")) == 1


def test_job_overdue_and_degraded_health_raise_and_resolve(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    retain_health(publisher, "export", "online", details={"period_s": 3600, "last_success": two_hours_ago})
    retain_health(publisher, "dvr", "degraded", reason="stream unreachable")
    vv.spawn("run", "monitor", extra_env=MONITOR_ENV)

    overdue = wait_alert(probe, "error", "Scheduled job overdue")
    assert overdue["context"] == {"job": "export"} and "2h00m ago" in overdue["message_details"]
    degraded = wait_alert(probe, "warning", "Node degraded")
    assert degraded["context"] == {"node": "dvr"} and "stream unreachable" in degraded["message_details"]

    retain_health(publisher, "export", "online", details={"period_s": 3600, "last_success": utc_now()})
    retain_health(publisher, "dvr", "online")
    assert wait_alert(probe, "error", "Scheduled job overdue", "resolved")["alert_id"] == overdue["alert_id"]
    assert wait_alert(probe, "warning", "Node degraded", "resolved")["alert_id"] == degraded["alert_id"]


def test_sustained_memory_use_warns(vv: VV, probe: Probe) -> None:
    env = {**MONITOR_ENV, "VV_MONITOR_MEMORY_PERCENT": "0.001", "VV_MONITOR_RESOURCE_SUSTAIN_S": "0.3"}
    vv.spawn("run", "echo_node:Echo", extra_env=env)
    vv.spawn("run", "monitor", extra_env=env)
    warning = wait_until(
        lambda: [a for a in alerts(probe, "warning", "High memory use") if a["context"]["node"] == "echo"],
        15,
        "a memory WARNING for echo",
    )[0]
    assert warning["context"]["key"] == "memory" and warning["context"]["percent"] > 0.001
