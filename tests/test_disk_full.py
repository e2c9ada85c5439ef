"""A full disk: the node that watches it still alerts and pauses ingest through the bus, and
resolves and resumes when space returns, though its own state lives on the full disk."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES_DIR, VV, Probe, Publisher, read_lines, wait_until

from nodes.journal.store import iter_records


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")


@pytest.fixture
def small_volume(vv: VV, tmp_path: Path) -> Iterator[Path]:
    """One 16 MB tmpfs holding VV_HOME/storage, the journal and the nodes' state (outboxes, dedupe)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(volume))
    binds = {
        volume / "storage": vv.home / "storage",
        volume / "nodes": vv.home / "state" / "nodes",
        volume / "journal": vv.home / "journal",
    }
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


def test_the_journal_rides_out_a_full_disk_and_records_every_event_once(
    vv: VV, probe: Probe, publisher: Publisher, small_volume: Path
) -> None:
    """DEFAULT retry settings. It crash-looped to FATAL before: now its appends and its store wait,
    one alert says so and is resolved, and nothing is lost or recorded twice."""
    journal = vv.spawn("run", "journal")
    probe.wait_health("journal", "online")
    filler = fill(small_volume)
    data = json.loads((FIXTURES_DIR / "video.new" / "valid-1.json").read_text())
    sent = [publisher.event("video.new", data, subject=data["video"]["id"]) for _ in range(3)]
    for event in sent:
        publisher.publish(event)
    firing = probe.wait_event(
        "alert.error", where=lambda e: e["data"]["title"] == "Message keeps failing, retrying", timeout=60
    )[0]["data"]
    assert journal.poll() is None  # alive, not crash-looping
    filler.unlink()
    probe.wait_event(
        "alert.error",
        where=lambda e: e["data"]["alert_id"] == firing["alert_id"] and e["data"]["status"] == "resolved",
        timeout=60,
    )
    ids = [e.id for e in sent]

    def journaled() -> list[str]:
        found = [r["event"]["id"] for r in iter_records(vv.home / "journal") if r.get("event")]
        return [i for i in found if i in ids]

    recorded = wait_until(
        lambda: (got := journaled()) and len(set(got)) == 3 and got, 30, "3 events journaled"
    )
    assert sorted(recorded) == sorted(ids)  # each once
    assert journal.poll() is None
    assert not read_lines(vv.home / "state" / "deadletter" / "journal.jsonl")
