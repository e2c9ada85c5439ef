"""scan_video on real clips with the shared Darknet model: labels, sampling, motion gating, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clips import Scene, photo, require_shared, write_clip
from jsonschema import Draft202012Validator

from nodes.scan.analyze import ScanTimeout, VideoError, open_video, scan_video
from nodes.scan.detectors import Detector, make_detector
from nodes.scan.motion import MotionGate
from nodes.scan.settings import ScanSettings

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
VALIDATOR = Draft202012Validator(json.loads((REPO / "schemas" / "analytic.schema.json").read_text()))


@pytest.fixture(scope="module")
def settings() -> ScanSettings:
    return ScanSettings(model=str(require_shared(WEIGHTS) / WEIGHTS), motion_gating=False)


@pytest.fixture(scope="module")
def detector(settings: ScanSettings) -> Detector:
    detector, reason = make_detector(settings, Path("unused"))
    assert reason is None
    return detector


@pytest.fixture(scope="module")
def zoo_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """person.jpg 2 s, dog.jpg 2 s, horses.jpg 2 s at 10 fps, 320x240."""
    path = tmp_path_factory.mktemp("clips") / "zoo.mp4"
    return write_clip(path, [Scene("person", 2), Scene("dog", 2), Scene("horses", 2)])


def labels_between(analytic: dict[str, Any], start: float, end: float) -> set[str]:
    return {d["label"] for f in analytic["frames"] if start <= f["t"] < end for d in f["detections"]}


def test_scan_finds_person_dog_horse_and_car(
    zoo_clip: Path, detector: Detector, settings: ScanSettings
) -> None:
    analytic = scan_video(zoo_clip, detector, settings)
    VALIDATOR.validate(analytic)
    assert analytic["video"] == {
        "fps": 10.0,
        "frames": 60,
        "duration_s": 6.0,
        "width": 320,
        "height": 240,
        "frames_damaged": 0,
    }
    assert analytic["detector"]["backend"] == "darknet"
    assert {"person", "dog", "horse", "car"} <= set(analytic["counts"])
    assert {"person", "dog"} <= labels_between(analytic, 0, 2)
    assert {"dog", "car"} <= labels_between(analytic, 2.2, 4)
    assert "horse" in labels_between(analytic, 4.2, 6)
    timing = analytic["timing"]
    assert timing["frames_decoded"] == 60
    assert timing["frames_sampled"] == 30 == len(analytic["frames"])  # detect_fps 5 of 10 fps
    assert timing["frames_inferred"] == 30  # gating off
    assert [f["index"] for f in analytic["frames"]] == list(range(0, 60, 2))
    assert timing["inference_s"] + timing["decode_s"] <= timing["total_s"]
    person_frames = analytic["counts"]["person"]["frames"]
    assert person_frames == sum(
        any(d["label"] == "person" for d in f["detections"]) for f in analytic["frames"]
    )


def test_motion_gate_skips_static_frames_but_still_detects(
    tmp_path: Path, detector: Detector, settings: ScanSettings
) -> None:
    clip = write_clip(tmp_path / "static.mp4", [Scene("person", 4), Scene("dog", 2)])
    gated = replace(settings, motion_gating=True, motion_max_skip_s=60.0)
    analytic = scan_video(clip, detector, gated)
    VALIDATOR.validate(analytic)
    inferred = [f for f in analytic["frames"] if f["inferred"]]
    assert analytic["timing"]["frames_sampled"] == 30
    assert analytic["timing"]["frames_inferred"] == len(inferred) <= 4  # first frame and the cut
    assert inferred[0]["t"] == 0.0 and "person" in {d["label"] for d in inferred[0]["detections"]}
    assert any(f["t"] >= 4.0 and "car" in {d["label"] for d in f["detections"]} for f in inferred)
    assert all(not f["motion"] and not f["detections"] for f in analytic["frames"] if not f["inferred"])


def test_motion_gate_still_infers_every_max_skip_seconds(
    tmp_path: Path, detector: Detector, settings: ScanSettings
) -> None:
    clip = write_clip(tmp_path / "still.mp4", [Scene("horses", 5)])
    gated = replace(settings, motion_gating=True, motion_max_skip_s=1.0)
    analytic = scan_video(clip, detector, gated)
    times = [f["t"] for f in analytic["frames"] if f["inferred"]]
    assert times[0] == 0.0 and len(times) < len(analytic["frames"])
    assert max(np.diff(times)) <= 1.0 + 1e-9
    assert all("horse" in {d["label"] for d in f["detections"]} for f in analytic["frames"] if f["inferred"])


def test_motion_gate_sees_a_sliding_object() -> None:
    gate = MotionGate(threshold=0.002, max_skip_s=1000.0)
    still = photo("giraffe", (320, 240))
    moving = still.copy()
    moving[180:, 100:200] = photo("dog", (100, 60))
    assert gate.step(still, 0.0).infer  # the first frame always counts
    quiet = gate.step(still.copy(), 0.2)
    assert not quiet.motion and not quiet.infer and quiet.changed == 0.0
    busy = gate.step(moving, 0.4)
    assert busy.motion and busy.infer and busy.changed > 0.002
    assert MotionGate(0.002, 1000.0, enabled=False).step(still, 0.0).infer


def test_progress_rises_to_one(zoo_clip: Path, detector: Detector, settings: ScanSettings) -> None:
    seen: list[float] = []
    scan_video(zoo_clip, detector, replace(settings, detect_fps=1.0), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 2


def test_deadline_raises_scan_timeout(zoo_clip: Path, detector: Detector, settings: ScanSettings) -> None:
    with pytest.raises(ScanTimeout, match="deadline"):
        scan_video(zoo_clip, detector, settings, deadline=time.monotonic() - 1)


def corrupt(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "truncated-faststart":  # index up front: it opens, then the data runs out
        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg is not installed: cannot build a faststart mp4")
        whole = tmp_path / "faststart.mp4"
        command = [
            "ffmpeg",
            "-loglevel",
            "error",
            "-i",
            str(good),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(whole),
        ]
        subprocess.run(command, check=True)
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    elif kind == "text":
        path.write_text("this is a shopping list, not a video\n" * 50)
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "truncated-faststart", "text", "missing"])
def test_unreadable_videos_raise_video_error(
    kind: str, tmp_path: Path, zoo_clip: Path, detector: Detector, settings: ScanSettings
) -> None:
    path = corrupt(kind, tmp_path, zoo_clip)
    with pytest.raises(VideoError, match=str(path.name)):
        scan_video(path, detector, settings)
    if kind != "truncated-faststart":  # that one opens fine; only decoding finds the gap
        with pytest.raises(VideoError), open_video(path):
            pass
