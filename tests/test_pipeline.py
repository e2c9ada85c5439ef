"""Video in, summary out: ingest, scan (real detector) and summarize as real processes on a real broker."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from clips import Scene, require_shared, write_clip
from conftest import VV, Probe, Publisher, store_video, wait_until

from nodes.ops.demo import synthetic_clip

FAST = {"VV_INGEST_SETTLE_S": "0.2", "VV_INGEST_POLL_INTERVAL_S": "0.3"}


@pytest.fixture
def detector_env() -> dict[str, str]:
    root = require_shared("models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights")
    return {
        "VV_SCAN_MODEL": str(root / "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"),
        "VV_SCAN_THREADS": "1",
    }


def drop(vv: VV, source: Path, name: str | None = None) -> Path:
    """Put a file in input/ the way well-behaved writers do: temp name, then rename."""
    inbox = vv.home / "input"
    inbox.mkdir(parents=True, exist_ok=True)
    temp = inbox / f".{name or source.name}.part"
    shutil.copyfile(source, temp)
    return Path(os.replace(temp, inbox / (name or source.name)) or inbox / (name or source.name))


def start(vv: VV, probe: Probe, env: dict[str, str], *nodes: str) -> None:
    for node in nodes:
        vv.spawn("run", node, extra_env={**FAST, **env})
    for node in nodes:
        probe.wait_health(node, "online")


def test_a_dropped_clip_becomes_a_summary_with_a_person_and_a_dog(
    vv: VV, probe: Probe, detector_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, detector_env, "journal", "ingest", "scan", "summarize")
    clip = write_clip(tmp_path / "yard.mp4", [Scene("person", 2.0), Scene("dog", 2.0)])
    drop(vv, clip)
    done = probe.wait_event("summary.done", timeout=60)[0]
    assert done["data"]["counts"].get("person", 0) >= 1 and done["data"]["counts"].get("dog", 0) >= 1
    assert ("person" in done["data"]["text"] or "people" in done["data"]["text"]) and "dog" in done["data"][
        "text"
    ]
    summary = json.loads(Path(done["data"]["summary"]["path"]).read_text())
    assert summary["timeline"] and {"person", "dog"} <= {t["label"] for t in summary["tracks"]}
    assert all(Path(t["path"]).exists() for t in done["data"]["thumbnails"])
    scan_done = probe.events("scan.done")[0]
    assert scan_done["data"]["backend"] == "darknet" and "degraded" not in scan_done["data"]
    # the journal saw it all: vv status reports the stage from disk
    wait_until(
        lambda: (
            json.loads(vv.vv("status", done["subject"], "--json").stdout or "{}").get("stage") == "summarized"
        ),
        15,
        "journal stage",
    )

    drop(vv, clip, "yard-again.mp4")  # the same bytes under another name: one video
    wait_until(
        lambda: not (vv.home / "input" / "yard-again.mp4").exists(), 20, "duplicate removed from input/"
    )
    assert len(probe.events("video.new")) == 1 and len(probe.events("summary.done")) == 1


def test_unreadable_files_are_quarantined_while_a_good_one_completes(
    vv: VV, probe: Probe, detector_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, detector_env, "ingest", "scan", "summarize")
    good = write_clip(tmp_path / "good.mp4", [Scene("horses", 1.5)])
    data = good.read_bytes()
    bad = {"empty.mp4": b"", "cut.mp4": data[: len(data) // 2], "notes.mp4": b"not a video\n" * 50}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        drop(vv, tmp_path / name)
    drop(vv, good)
    probe.wait_event("summary.done", timeout=60)
    quarantined = probe.wait_event("video.quarantined", count=3)
    assert {Path(q["data"]["original_path"]).name for q in quarantined} == set(bad)
    alerts = probe.wait_event("alert.error", count=3)
    assert all(a["data"]["severity"] == "ERROR" for a in alerts)
    for name in bad:
        meta = json.loads((vv.home / "corrupted" / f"{name}.meta.json").read_text())
        assert {
            "original_path",
            "timestamp_corruption",
            "source_component",
            "error_type",
            "error_message",
            "original_hash_sha256",
        } <= set(meta)


def test_scan_killed_mid_video_completes_exactly_once(
    vv: VV, probe: Probe, detector_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**detector_env, "VV_SCAN_MOTION_GATING": "false", "VV_SCAN_DETECT_FPS": "10"}
    start(vv, probe, env, "ingest", "summarize")
    scan = vv.spawn("run", "scan", extra_env=env)
    probe.wait_health("scan", "online")
    long_clip = write_clip(tmp_path / "long.mp4", [Scene("person", 20.0, slide="dog")], size=(640, 480))
    drop(vv, long_clip)
    wait_until(
        lambda: any(h["details"].get("current", {}).get("progress", 0) > 0 for h in probe.health("scan")),
        60,
        "scan in progress",
    )
    scan.send_signal(signal.SIGKILL)
    scan.wait(10)
    vv.spawn("run", "scan", extra_env=env, log_name="scan-2")
    done = probe.wait_event("summary.done", timeout=120)[0]
    assert done["data"]["counts"].get("person", 0) >= 1
    assert len(probe.events("scan.done")) == 1
    attempts = json.loads((vv.home / "state/nodes/scan/attempts.json").read_text())
    assert attempts == {}  # the interrupted attempt was retried and the success cleared the history


def test_two_scan_workers_share_ten_videos_none_twice(
    vv: VV, probe: Probe, detector_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, detector_env, "ingest")
    for instance in ("a", "b"):
        vv.spawn("run", "scan", "--instance", instance, extra_env=detector_env, log_name=f"scan-{instance}")
    probe.wait_health("scan-a", "online")
    probe.wait_health("scan-b", "online")
    photos = ["person", "dog", "horses", "giraffe"]
    for n in range(10):
        clip = write_clip(tmp_path / f"v{n}.mp4", [Scene(photos[n % 4], 0.5 + n * 0.1)])
        drop(vv, clip)
    done = probe.wait_event("scan.done", count=10, timeout=120)
    subjects = [d["subject"] for d in done]
    assert len(subjects) == len(set(subjects)) == 10

    def handled() -> dict[str, int]:
        return {
            node: (probe.health(node) or [{"details": {"handled": 0}}])[-1]["details"]["handled"]
            for node in ("scan-a", "scan-b")
        }

    wait_until(lambda: sum(handled().values()) >= 10, 15, "both workers' health to count all ten")
    counts = handled()
    assert sum(counts.values()) == 10 and min(counts.values()) >= 1, counts


def test_a_video_that_keeps_failing_is_quarantined_with_its_reasons(
    vv: VV, probe: Probe, publisher: Publisher, detector_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, {**detector_env, "VV_SCAN_MAX_ATTEMPTS": "2"}, "scan")
    data = store_video(vv, b"\x00" * 4096, "broken.mp4")
    broken = Path(data["video"]["path"])
    publisher.publish(publisher.event("video.new", data, subject=data["video"]["id"]))
    quarantined = probe.wait_event("video.quarantined", timeout=30)[0]["data"]
    assert quarantined["stage"] == "scan" and len(quarantined["attempts"]) == 2
    assert all("VideoError" in a["reason"] for a in quarantined["attempts"])
    assert Path(quarantined["quarantine_path"]).exists() and not broken.exists()
    alert = probe.wait_event("alert.error")[0]["data"]
    assert alert["title"] == "Video quarantined after repeated scan failures"


def test_without_weights_scan_degrades_to_hog_and_says_which_setting(
    vv: VV, probe: Probe, tmp_path: Path
) -> None:
    start(vv, probe, {"VV_SCAN_MODEL": ""}, "ingest")
    vv.spawn("run", "scan")
    health = probe.wait_health("scan", "degraded")
    assert "scan.model" in health["reason"]
    warning = probe.wait_event("alert.warning")[0]["data"]
    assert warning["title"] == "Scan runs a fallback detector" and any(
        "VV_SCAN_MODEL" in a for a in warning["suggested_actions"]
    )
    drop(vv, synthetic_clip(tmp_path / "walkers.mp4"))
    done = probe.wait_event("scan.done", timeout=60)[0]["data"]
    assert done["backend"] == "hog" and "scan.model" in done["degraded"]
    assert done["counts"].get("person", 0) >= 1


def test_offline_a_named_model_is_waited_for_briefly_then_hog_runs_and_no_video_is_lost(
    vv: VV, probe: Probe, silent_network: dict[str, str], tmp_path: Path
) -> None:
    """Default settings, a network that never answers: scan subscribes first, gives the download of
    yolo11n.pt scan.download_timeout_s, then runs HOG, degraded with the reason and one warning; the
    video announced while the model was loading is scanned (a download left unbounded hangs for minutes)."""
    env = {"VV_SCAN_MODEL": "yolo11n.pt", **silent_network}
    start(vv, probe, env, "ingest")
    vv.spawn("run", "scan", extra_env=env)
    assert probe.wait_health("scan", "online", timeout=30)["details"]["backend"] == "loading"
    drop(vv, synthetic_clip(tmp_path / "walkers.mp4"))
    announced = probe.wait_event("video.new")[0]
    health = probe.wait_health("scan", "degraded", timeout=60)
    assert "yolo11n.pt was not downloaded within 5s" in health["reason"]
    assert "HOG" in health["reason"] and health["details"]["backend"] == "hog"
    done = probe.wait_event("scan.done", timeout=60)[0]
    assert done["causationid"] == announced["id"] and done["data"]["backend"] == "hog"
    assert "scan.download_timeout_s" in done["data"]["degraded"]
    messages = [d for _, d in probe.messages if isinstance(d, dict)]
    ready = next(d for d in probe.health("scan") if d["status"] == "degraded")
    assert messages.index(announced) < messages.index(ready)  # announced before the detector was ready
    warnings = probe.events("alert.warning")
    assert [w["data"]["title"] for w in warnings] == ["Scan runs a fallback detector"]


def test_a_scan_over_its_time_budget_warns_then_quarantines(
    vv: VV, probe: Probe, detector_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**detector_env, "VV_SCAN_MAX_PROCESSING_S": "0.001", "VV_SCAN_MAX_ATTEMPTS": "2"}
    start(vv, probe, env, "ingest", "scan")
    drop(vv, write_clip(tmp_path / "slow.mp4", [Scene("person", 2.0)]))
    warnings = probe.wait_event(
        "alert.warning",
        count=2,
        timeout=60,
        where=lambda e: e["data"]["title"] == "Scan took longer than its budget",
    )
    assert all(w["data"]["context"]["video"] == warnings[0]["subject"] for w in warnings)
    quarantined = probe.wait_event("video.quarantined", timeout=30)[0]["data"]
    assert [a["reason"].split(":")[0] for a in quarantined["attempts"]] == ["ScanTimeout", "ScanTimeout"]
    assert not probe.events("scan.done")


def test_the_summary_text_generator_is_replaceable_by_config(
    vv: VV, probe: Probe, detector_env: dict[str, str], tmp_path: Path
) -> None:
    start(
        vv,
        probe,
        {**detector_env, "VV_SUMMARIZE_DESCRIBER": "describers:terse"},
        "ingest",
        "scan",
        "summarize",
    )
    drop(vv, write_clip(tmp_path / "g.mp4", [Scene("giraffe", 1.0)]))
    text = probe.wait_event("summary.done", timeout=60)[0]["data"]["text"]
    assert text.startswith("seen: ") and "giraffe" in text


def test_a_describer_that_cannot_load_stops_the_node_naming_the_setting(vv: VV) -> None:
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "run", "summarize"],
        env={**vv.env, "VV_SUMMARIZE_DESCRIBER": "no_such_module:describe"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "summarize.describer: cannot load 'no_such_module:describe'" in result.stderr
