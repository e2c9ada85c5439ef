"""Ingest: real files, a real broker and the node as a real process; the pure helpers on their own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clips import Scene, write_clip
from conftest import VV, Probe, Publisher, wait_until

from bus.config import VVPaths
from nodes.common.quarantine import UnreadableVideo, reserve_quarantine_name
from nodes.ingest.files import (
    held_open,
    ingest_file,
    is_candidate,
    ledger_for,
    probe_video,
)

FAST = {"VV_INGEST_SETTLE_S": "0.2", "VV_INGEST_POLL_INTERVAL_S": "0.5", "VV_INGEST_STABLE_S": "1"}


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 2 s, 10 fps, 320x240 mp4v clip: a person, then a dog."""
    return write_clip(tmp_path / "clip.mp4", [Scene("person", 1.0), Scene("dog", 1.0)])


def other_clip(tmp_path: Path, name: str = "other.mp4") -> Path:
    return write_clip(tmp_path / name, [Scene("horses", 1.5)])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def drop(vv: VV, data: bytes, name: str) -> Path:
    """Put a file in input/ the way well-behaved writers do: temp name, then rename."""
    inbox = vv.home / "input"
    inbox.mkdir(parents=True, exist_ok=True)
    temp = inbox / f".{name}.part"
    temp.write_bytes(data)
    os.replace(temp, inbox / name)
    return inbox / name


def start_ingest(vv: VV, probe: Probe, **env: str) -> None:
    vv.spawn("run", "ingest", extra_env={**FAST, **env})
    probe.wait_health("ingest", "online")


def input_files(vv: VV) -> list[str]:
    return sorted(p.name for p in (vv.home / "input").iterdir())


def bad_files(clip: Path, tmp_path: Path) -> dict[str, bytes]:
    """The unreadable kinds: empty, cut mp4 (index at the end lost), text renamed, cut faststart mp4."""
    data = clip.read_bytes()
    files = {"empty.mp4": b"", "cut.mp4": data[: len(data) // 2], "notes.mp4": b"just some text\n" * 40}
    if shutil.which("ffmpeg"):
        faststart = tmp_path / "faststart.mp4"
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-i",
                str(clip),
                "-c",
                "copy",
                "-movflags",
                "+faststart",
                str(faststart),
            ],
            check=True,
        )
        fs = faststart.read_bytes()
        files["cut-faststart.mp4"] = fs[: len(fs) * 6 // 10]  # header intact, later frames gone
    return files


# ----------------------------------------------------------------------------- pure functions
def test_probe_reads_figures_and_rejects_each_unreadable_kind(clip: Path, tmp_path: Path) -> None:
    info = probe_video(clip)
    assert (info.fps, info.frames, info.width, info.height, info.duration_s) == (10.0, 20, 320, 240, 2.0)
    expected = {
        "empty.mp4": "EmptyFile",
        "cut.mp4": "UnreadableVideo",
        "notes.mp4": "UnreadableVideo",
        "cut-faststart.mp4": "TruncatedVideo",
    }
    for name, data in bad_files(clip, tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnreadableVideo) as caught:
            probe_video(path)
        assert caught.value.error_type == expected[name], name


def test_candidates_skip_temp_and_hidden_names() -> None:
    assert is_candidate("cam1-20260101T000000000Z.mp4")
    assert not any(map(is_candidate, [".cam1.tmp.mp4", "clip.mp4.part", "clip.tmp", ".hidden"]))


def test_held_open_sees_writers_and_readers(tmp_path: Path) -> None:
    written, read, closed = tmp_path / "w.mp4", tmp_path / "r.mp4", tmp_path / "c.mp4"
    read.write_bytes(b"x")
    closed.write_bytes(b"x")
    with written.open("wb"), read.open("rb"):
        assert held_open([written, read, closed]) == {written, read}
    assert held_open([written, read]) == set()


def test_quarantine_names_never_overwrite(tmp_path: Path) -> None:
    first = reserve_quarantine_name(tmp_path, "bad.mp4")
    first.write_bytes(b"1")
    second = reserve_quarantine_name(tmp_path, "bad.mp4")
    third = reserve_quarantine_name(tmp_path, "bad.mp4")  # its meta file is reserved even before use
    assert [first.name, second.name, third.name] == ["bad.mp4", "bad-1.mp4", "bad-2.mp4"]


# ----------------------------------------------------------------------------- the node
@pytest.mark.parametrize("watch", ["inotify", "polling"])
def test_good_clips_are_stored_and_announced_including_those_present_at_start(
    vv: VV, probe: Probe, clip: Path, tmp_path: Path, watch: str
) -> None:
    early = drop(vv, clip.read_bytes(), "early.mp4")  # before the node starts
    start_ingest(vv, probe, VV_INGEST_INOTIFY=str(watch == "inotify"))
    late = other_clip(tmp_path)
    drop(vv, late.read_bytes(), "late.mp4")
    events = {e["data"]["original_name"]: e for e in probe.wait_event("video.new", 2)}
    assert not early.exists()
    for name, source, duration in (("early.mp4", clip, 2.0), ("late.mp4", late, 1.5)):
        event = events[name]
        video = event["data"]["video"]
        digest = sha256(source)
        assert video["sha256"] == digest and video["id"] == digest[:32] == event["subject"]
        assert video["duration_s"] == duration and video["fps"] == 10.0
        assert (video["width"], video["height"]) == (320, 240)
        stored = Path(video["path"])
        assert stored.name == name and stored.parent.name == video["id"]
        assert stored.parent.parent.parent.parent.parent == vv.home / "storage"  # storage/YYYY/MM/DD/<id>/
        assert sha256(stored) == digest
    assert input_files(vv) == []
    health = probe.wait_health("ingest", "online", after=len(probe.health("ingest")))
    assert health["details"]["ingested"] == 2 and health["details"]["watch"] == watch


def test_same_file_twice_is_processed_once(vv: VV, probe: Probe, clip: Path, tmp_path: Path) -> None:
    start_ingest(vv, probe)
    drop(vv, clip.read_bytes(), "first.mp4")
    first = probe.wait_event("video.new")[0]
    drop(vv, clip.read_bytes(), "again.mp4")
    drop(vv, other_clip(tmp_path).read_bytes(), "zz-marker.mp4")
    probe.wait_event("video.new", 2)
    wait_until(lambda: input_files(vv) == [], what="the duplicate removed from input/")
    ids = [e["subject"] for e in probe.events("video.new")]
    assert ids.count(first["subject"]) == 1 and len(ids) == 2
    assert Path(first["data"]["video"]["path"]).exists()  # the original stays
    health = probe.wait_health("ingest", "online", after=len(probe.health("ingest")))
    assert health["details"]["duplicates"] == 1


def test_unreadable_files_are_quarantined_and_a_good_one_behind_them_completes(
    vv: VV, probe: Probe, clip: Path, tmp_path: Path
) -> None:
    start_ingest(vv, probe)
    bad = bad_files(clip, tmp_path)
    for name, data in bad.items():
        drop(vv, data, name)
    drop(vv, clip.read_bytes(), "good.mp4")
    assert probe.wait_event("video.new")[0]["data"]["original_name"] == "good.mp4"
    quarantined = {e["data"]["original_path"]: e for e in probe.wait_event("video.quarantined", len(bad))}
    alerts = probe.wait_event("alert.error", len(bad))
    corrupted = vv.home / "corrupted"
    for name, data in bad.items():
        event = quarantined[str(vv.home / "input" / name)]
        digest = hashlib.sha256(data).hexdigest()
        assert event["subject"] == digest[:32] and event["data"]["sha256"] == digest
        assert (corrupted / name).read_bytes() == data
        meta = json.loads((corrupted / f"{name}.meta.json").read_text())
        assert meta["original_path"] == str(vv.home / "input" / name)
        assert meta["source_component"] == "ingest" and meta["original_hash_sha256"] == digest
        assert meta["error_type"] == event["data"]["error_type"] and meta["error_message"]
        assert meta["timestamp_corruption"].endswith("Z")
        alert = next(a["data"] for a in alerts if a["data"]["context"]["video"] == digest[:32])
        assert alert["severity"] == "ERROR" and name in alert["message_details"]
        assert alert["suggested_actions"]
    # the same name again: a suffix, nothing overwritten
    drop(vv, b"", "empty.mp4")
    probe.wait_event("video.quarantined", len(bad) + 1)
    assert (corrupted / "empty-1.mp4").exists() and (corrupted / "empty-1.mp4.meta.json").exists()
    assert input_files(vv) == []


def test_a_file_open_for_writing_waits_until_closed(vv: VV, probe: Probe, clip: Path) -> None:
    start_ingest(vv, probe)
    data = clip.read_bytes()
    inbox = vv.home / "input"
    with (inbox / "slow.mp4").open("wb") as writer:
        writer.write(data[:1000])
        writer.flush()
        # stable size and mtime, but still open: the node reports it waiting and leaves it alone
        seen = len(probe.health("ingest"))
        wait_until(
            lambda: any(h["details"].get("waiting_open") for h in probe.health("ingest")[seen:]),
            what="the node to see the open file",
        )
        assert input_files(vv) == ["slow.mp4"] and not probe.events("video.new")
        writer.write(data[1000:])
    event = probe.wait_event("video.new")[0]
    assert event["data"]["video"]["sha256"] == sha256(clip)
    assert probe.events("video.quarantined") == []


def test_pause_and_resume(vv: VV, probe: Probe, publisher: Publisher, clip: Path) -> None:
    start_ingest(vv, probe)
    publisher.publish(publisher.event("cmd.ingest.pause", {"args": {}, "reason": "disk critical"}))
    paused = probe.wait_health("ingest", "degraded")
    assert paused["details"]["paused"] is True and "disk critical" in paused["reason"]
    seen = len(probe.health("ingest"))
    drop(vv, clip.read_bytes(), "waiting.mp4")
    wait_until(
        lambda: any(h["details"]["queued"] == 1 for h in probe.health("ingest")[seen:]),
        what="the paused node to report the queued file",
    )
    assert input_files(vv) == ["waiting.mp4"] and not probe.events("video.new")
    publisher.publish(publisher.event("cmd.ingest.resume", {"args": {}}))
    assert probe.wait_event("video.new")[0]["data"]["original_name"] == "waiting.mp4"
    assert probe.wait_health("ingest", "online", after=seen)["details"]["paused"] is False


def test_pause_and_resume_from_the_console_show_who_and_why(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    """The console's commands carry `author` and `reason` (and `until`, their expiry): ingest's
    health says who paused it and why, and the pause outlives a restart with them."""
    start_ingest(vv, probe)
    [proc] = vv.procs
    pause = {"args": {}, "author": "carol", "reason": "disk swap", "until": "2099-01-01T00:00:00Z"}
    publisher.publish(publisher.event("cmd.ingest.pause", pause))
    paused = probe.wait_health("ingest", "degraded")
    assert paused["details"]["paused_by"] == "carol" and paused["details"]["pause_reason"] == "disk swap"
    assert "paused by carol (disk swap)" in paused["reason"] and paused["details"]["paused_since"]
    proc.terminate()
    assert proc.wait(15) == 0
    seen = len(probe.health("ingest"))
    vv.spawn("run", "ingest", log_name="ingest-2", extra_env=FAST)
    again = probe.wait_health("ingest", "degraded", after=seen)
    assert (again["details"]["paused_by"], again["details"]["paused_since"]) == (
        "carol",
        paused["details"]["paused_since"],
    )
    resume = {"args": {}, "author": "carol", "until": "2099-01-01T00:00:00Z"}
    publisher.publish(publisher.event("cmd.ingest.resume", resume))
    back = probe.wait_health("ingest", "online", after=seen)
    assert back["details"]["paused"] is False and back["details"]["paused_by"] == ""


def test_an_announcement_cut_by_a_crash_is_made_at_start(vv: VV, probe: Probe, clip: Path) -> None:
    """ingest_file stored the video, then the process died before announcing it: start repairs that."""
    paths = VVPaths(vv.home)
    source = drop(vv, clip.read_bytes(), "crash.mp4")
    outcome = ingest_file(source, paths, ledger_for(paths))
    assert outcome.kind == "ingested" and not source.exists()
    start_ingest(vv, probe)
    event = probe.wait_event("video.new")[0]
    assert event["subject"] == outcome.video_id and event["data"] == outcome.data
    assert ledger_for(paths).known(outcome.video_id) and not list(ledger_for(paths).pending())


# ----------------------------------------------------------------------------- vv ingest
def test_vv_ingest_exit_codes(vv: VV, probe: Probe, clip: Path, tmp_path: Path) -> None:
    moved = vv.vv("ingest", str(clip))
    assert moved.returncode == 0, moved.stderr
    event = probe.wait_event("video.new")[0]
    assert event["data"]["source"] == "vv ingest" and not clip.exists()
    assert Path(event["data"]["video"]["path"]).exists()

    kept = other_clip(tmp_path)
    copied = vv.vv("ingest", "--copy", "--json", str(kept))
    assert copied.returncode == 0, copied.stderr
    report: dict[str, Any] = json.loads(copied.stdout)
    assert report["result"] == "ingested" and kept.exists()
    again = vv.vv("ingest", "--copy", str(kept))
    assert again.returncode == 0 and "already ingested" in again.stdout

    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    failed = vv.vv("ingest", str(broken))
    assert failed.returncode == 1 and "QUARANTINED" in failed.stdout
    probe.wait_event("video.quarantined")
    probe.wait_event("alert.error")
    assert (vv.home / "corrupted" / "broken.mp4.meta.json").exists()

    missing = vv.vv("ingest", str(tmp_path / "nope.mp4"))
    assert missing.returncode == 2 and "nope.mp4" in missing.stderr
    assert len(probe.events("video.new")) == 2

    vv.broker.stop()  # no broker: nothing is touched, and the operator is told why
    offline = other_clip(tmp_path, "offline.mp4")
    refused = vv.vv("ingest", "--timeout", "1", str(offline))
    assert refused.returncode == 1 and "not reachable" in refused.stderr and offline.exists()
