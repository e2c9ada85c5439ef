"""Disk watch: thresholds with hysteresis, and the real node pausing and resuming ingest by configuration."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import VV, Probe, read_lines, wait_until

from nodes.disk.settings import DiskSettings
from nodes.disk.usage import GB, Usage, level_for, mount_point, next_level

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
        (150, 1000, "ok"),  # 15% of 1 TB: still above the 50 GB floor that caps the 20%
        (40, 1000, "warning"),  # under 50 GB
        (9, 1000, "critical"),  # under 10 GB
        (40, 100, "ok"),  # 40%: a small volume is judged by percent, not by GB it cannot have
        (15, 100, "warning"),  # 15%
        (0.049, 0.05, "ok"),  # a 50 MB volume 98% free is fine (it was critical by its GB)
        (0.004, 0.05, "critical"),  # 8% of 50 MB
        (0, 0, "critical"),  # an unreadable size counts as full
    ],
)
def test_levels_are_percent_of_the_volume_capped_by_the_floor(
    free_gb: float, total_gb: float, level: str
) -> None:
    assert level_for(usage(free_gb, total_gb), SETTINGS) == level


def test_levels_leave_only_past_the_hysteresis() -> None:
    assert next_level("ok", usage(9.9, 100), SETTINGS) == "critical"  # worse: at once
    assert next_level("critical", usage(11, 100), SETTINGS) == "critical"  # 11%: not clear by 2 points
    assert next_level("critical", usage(12.5, 100), SETTINGS) == "warning"  # clear of critical only
    assert next_level("warning", usage(21, 100), SETTINGS) == "warning"  # 21%: not clear of warning
    assert next_level("warning", usage(22.5, 100), SETTINGS) == "ok"
    assert next_level("critical", usage(50, 100), SETTINGS) == "ok"  # straight back when well clear


def test_mount_point_of_a_missing_path_is_its_parents(tmp_path: Path) -> None:
    assert mount_point(tmp_path / "not" / "yet") == mount_point(tmp_path)
    assert mount_point(Path("/")) == Path("/")


def test_critical_pauses_ingest_and_recovery_resolves_and_resumes(vv: VV, probe: Probe) -> None:
    """Thresholds above the real free space make it critical; thresholds at zero bring it back."""
    vv.spawn("run", "ingest")
    probe.wait_health("ingest", "online")
    fast = {"VV_DISK_INTERVAL_S": "0.2"}
    everything = {"VV_DISK_CRITICAL_PERCENT": "100", "VV_DISK_CRITICAL_FREE_GB": "1e9"}
    disk = vv.spawn("run", "disk", extra_env={**fast, **everything})
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


@pytest.fixture
def small_storage(vv: VV) -> Iterator[Path]:
    """VV_HOME/storage on its own 50 MB tmpfs (skips where mounting is not allowed)."""
    storage = vv.home / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(storage)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield storage
    subprocess.run(["umount", "-l", str(storage)], check=False)


def test_a_small_volume_with_room_is_fine_whatever_the_last_run_said(
    vv: VV, probe: Probe, small_storage: Path
) -> None:
    """DEFAULT thresholds on a 50 MB volume 100% free; the saved state of a previous run claims it
    was critical with ingest paused: the first look judges the disk as it is now."""
    state = vv.home / "state" / "nodes" / "disk"
    state.mkdir(parents=True, exist_ok=True)
    (state / "disk.json").write_text(json.dumps({"paused": True}))
    firing = {
        "severity": "CRITICAL",
        "title": "Disk space critically low",
        "context": {"mount": str(small_storage)},
    }
    (state / "alerts.json").write_text(json.dumps({f"critical:{small_storage}": firing}))
    vv.spawn("run", "disk")
    resolved = probe.wait_event("alert.critical", where=lambda e: e["data"]["status"] == "resolved")
    assert resolved[0]["data"]["context"]["mount"] == str(small_storage)
    probe.wait_event("cmd.ingest.resume")
    health = wait_until(
        lambda: next(
            (h for h in reversed(probe.health("disk")) if "storage" in h["details"].get("mounts", {})), None
        ),
        15,
        "disk health with its figures",
    )
    assert health["details"]["mounts"]["storage"]["level"] == "ok"
    assert health["details"]["ingest_paused"] is False
    assert not [e for e in probe.events("alert.critical") if e["data"]["status"] == "firing"]
    assert not probe.events("alert.warning")
