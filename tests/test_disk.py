"""Disk watch: thresholds with hysteresis, and the real node pausing and resuming ingest by configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import VV, Probe, read_lines

from bus.config import DiskSettings
from nodes.disk import GB, Usage, level_for, mount_point, next_level

SETTINGS = DiskSettings(
    warn_percent=20,
    warn_free_gb=50,
    critical_percent=10,
    critical_free_gb=10,
    hysteresis_percent=2,
    hysteresis_gb=2,
)
TB = 1000 * GB


def usage(free_gb: float, total_gb: float = 1000) -> Usage:
    return Usage(int(free_gb * GB), int(total_gb * GB))


@pytest.mark.parametrize(
    ("free_gb", "total_gb", "level"),
    [
        (500, 1000, "ok"),
        (150, 1000, "warning"),  # 15%: under the percent threshold
        (40, 100, "warning"),  # 40%, but under 50 GB: either figure is enough
        (90, 1000, "critical"),  # 9%
        (9, 50, "critical"),  # 18%, but under 10 GB
        (0, 0, "critical"),  # an unreadable size counts as full
    ],
)
def test_levels_enter_when_either_figure_crosses(free_gb: float, total_gb: float, level: str) -> None:
    assert level_for(usage(free_gb, total_gb), SETTINGS) == level


def test_levels_leave_only_past_the_hysteresis() -> None:
    assert next_level("ok", usage(99), SETTINGS) == "critical"  # worse: at once
    assert next_level("critical", usage(110), SETTINGS) == "critical"  # 11%: not clear by 2 points
    assert next_level("critical", usage(125), SETTINGS) == "warning"  # 12.5%: clear of critical only
    assert next_level("warning", usage(210), SETTINGS) == "warning"  # 21%: not clear of warning
    assert next_level("warning", usage(225), SETTINGS) == "ok"
    assert next_level("critical", usage(500), SETTINGS) == "ok"  # straight back when well clear


def test_mount_point_of_a_missing_path_is_its_parents(tmp_path: Path) -> None:
    assert mount_point(tmp_path / "not" / "yet") == mount_point(tmp_path)
    assert mount_point(Path("/")) == Path("/")


def test_critical_pauses_ingest_and_recovery_resolves_and_resumes(vv: VV, probe: Probe) -> None:
    """Thresholds above the real free space make it critical; thresholds at zero bring it back."""
    vv.spawn("run", "ingest")
    probe.wait_health("ingest", "online")
    fast = {"VV_DISK_INTERVAL_S": "0.2"}
    disk = vv.spawn("run", "disk", extra_env={**fast, "VV_DISK_CRITICAL_PERCENT": "100"})
    firing = probe.wait_event("alert.critical", where=lambda e: e["data"]["source_component"] == "disk")
    alert = firing[0]["data"]
    assert alert["status"] == "firing" and alert["title"] == "Disk space critically low"
    assert alert["context"]["mount"] == str(mount_point(vv.home))
    assert "Ingest is paused" in alert["message_details"] and alert["suggested_actions"]
    logged = [
        line for line in read_lines(vv.home / "logs" / "app.log") if line.get("alert_id") == alert["alert_id"]
    ]
    assert logged and logged[0]["level"] == "ERROR" and logged[0]["node"] == "disk"  # CRITICAL is in app.log
    pause = probe.wait_event("cmd.ingest.pause")[0]["data"]
    assert "disk space critically low" in pause["reason"]
    assert "paused" in probe.wait_health("ingest", "degraded")["reason"]
    health = probe.wait_health("disk", "online", after=len(probe.health("disk")))
    assert health["details"]["level"] == "critical" and health["details"]["ingest_paused"] is True
    assert set(health["details"]["mounts"]) == {"storage", "root"}
    assert health["details"]["mounts"]["root"]["free_bytes"] > 0

    disk.terminate()
    assert disk.wait(15) == 0
    zero = {
        f"VV_DISK_{key}": "0"
        for key in ("WARN_PERCENT", "WARN_FREE_GB", "CRITICAL_PERCENT", "CRITICAL_FREE_GB")
    }
    seen_ingest = len(probe.health("ingest"))
    vv.spawn("run", "disk", extra_env={**fast, **zero}, log_name="disk-2")
    resolved = probe.wait_event("alert.critical", where=lambda e: e["data"]["status"] == "resolved")[0][
        "data"
    ]
    assert resolved["dedup_key"] == alert["dedup_key"]  # the same alert, so the alerter closes it
    probe.wait_event("cmd.ingest.resume")
    probe.wait_health("ingest", "online", after=seen_ingest)
    # firing was raised once per filesystem, not again after the restart
    assert len([e for e in probe.events("alert.critical") if e["data"]["status"] == "firing"]) == len(
        {e["data"]["context"]["mount"] for e in probe.events("alert.critical")}
    )
