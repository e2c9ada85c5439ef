"""A full disk: the node that watches it still alerts and pauses ingest through the bus, and
resolves and resumes when space returns, though its own state lives on the full disk."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import VV, Probe, wait_until


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")


@pytest.fixture
def small_volume(vv: VV, tmp_path: Path) -> Iterator[Path]:
    """One 16 MB tmpfs holding both VV_HOME/storage and the nodes' state (outboxes, dedupe)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(volume))
    binds = {volume / "storage": vv.home / "storage", volume / "nodes": vv.home / "state" / "nodes"}
    try:
        for source, target in binds.items():
            source.mkdir()
            target.mkdir(parents=True, exist_ok=True)
            mount("--bind", str(source), str(target))
        yield volume
    finally:
        for target in binds.values():
            subprocess.run(["umount", "-l", str(target)], check=False)
        subprocess.run(["umount", "-l", str(volume)], check=False)


def fill(volume: Path) -> Path:
    filler = volume / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def test_disk_full_alerts_and_pauses_through_the_bus_then_recovers(
    vv: VV, probe: Probe, small_volume: Path
) -> None:
    vv.spawn("run", "disk", extra_env={"VV_DISK_INTERVAL_S": "1"})  # thresholds: defaults
    wait_until(
        lambda: any(h["details"].get("mounts", {}).get("storage") for h in probe.health("disk")),
        15,
        "disk figures",
    )
    filler = fill(small_volume)
    critical = probe.wait_event("alert.critical", timeout=20)[0]["data"]
    assert critical["title"] == "Disk space critically low" and critical["status"] == "firing"
    probe.wait_event("cmd.ingest.pause")
    filler.unlink()
    probe.wait_event("alert.critical", where=lambda e: e["data"]["status"] == "resolved", timeout=20)
    probe.wait_event("cmd.ingest.resume")
    assert (
        probe.wait_health("disk", "online", after=len(probe.health("disk")))["details"]["ingest_paused"]
        is False
    )
