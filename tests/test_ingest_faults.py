"""Ingest under the box's faults, with DEFAULT settings: a storage fault, a slow writer, a symlink."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clips import Scene, write_clip
from conftest import VV, Probe, wait_until
from test_ingest import drop, input_files


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.mp4", [Scene("", 2.0)])


def start(vv: VV, probe: Probe) -> None:
    vv.spawn("run", "ingest")
    probe.wait_health("ingest", "online")


def test_a_failed_ingest_leaves_the_file_and_retries_when_the_fault_clears(
    vv: VV, probe: Probe, clip: Path
) -> None:
    storage = vv.home / "storage"
    storage.parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes(b"")  # a file where the storage directory belongs: every write fails, root or not
    start(vv, probe)
    dropped = drop(vv, clip.read_bytes(), "cam.mp4")
    alert = probe.wait_event("alert.error", timeout=30)[0]["data"]
    assert alert["title"] == "Cannot ingest file" and "retried" in alert["message_details"]
    os.utime(dropped)  # the file "changes" (same bytes): it must not be taken for a duplicate of itself
    wait_until(
        lambda: any(h["details"].get("failed", 0) >= 2 for h in probe.health("ingest")),
        30,
        "a second failed attempt",
    )
    assert len(probe.events("alert.error")) == 1  # one alert for the file while it keeps failing
    assert input_files(vv) == ["cam.mp4"] and not probe.events("video.new")
    storage.unlink()  # the fault clears; the file itself does not change again
    event = probe.wait_event("video.new", timeout=60)[0]["data"]
    assert event["video"]["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert Path(event["video"]["path"]).read_bytes() == clip.read_bytes() and input_files(vv) == []
    resolved = probe.wait_event("alert.error", where=lambda e: e["data"]["status"] == "resolved")[0]["data"]
    assert resolved["alert_id"] == alert["alert_id"]


WRITER = """
import sys, time
source, target, pieces, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
data = open(source, "rb").read()
step = len(data) // pieces + 1
for n in range(pieces):
    with open(target, "ab") as out:  # open, append, close: nothing is held open during the pause
        out.write(data[n * step:(n + 1) * step])
    if n < pieces - 1:
        time.sleep(pause)  # the writer's own pace (a slow network copy), not test synchronisation
"""


def test_a_slow_writer_that_pauses_becomes_one_video_not_pieces(vv: VV, probe: Probe, clip: Path) -> None:
    start(vv, probe)
    target = vv.home / "input" / "slow.mp4"
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, str(clip), str(target), "5", "2.5"], timeout=60, check=True
    )
    assert writer.returncode == 0
    event = probe.wait_event("video.new", timeout=60)[0]["data"]
    assert event["video"]["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert not probe.events("video.quarantined") and len(probe.events("video.new")) == 1


def test_a_symlink_in_input_is_refused_with_an_alert_and_left_alone(
    vv: VV, probe: Probe, clip: Path, tmp_path: Path
) -> None:
    start(vv, probe)
    link = vv.home / "input" / "shadow.mp4"
    link.symlink_to(clip)
    alert = probe.wait_event("alert.error")[0]["data"]
    assert alert["title"] == "Entry in input/ refused" and "symbolic link" in alert["message_details"]
    drop(vv, write_clip(tmp_path / "marker.mp4", [Scene("", 1.0)]).read_bytes(), "marker.mp4")
    probe.wait_event("video.new")
    assert link.is_symlink() and clip.exists() and len(probe.events("video.new")) == 1
    assert len([a for a in probe.events("alert.error") if a["data"]["title"] == alert["title"]]) == 1
