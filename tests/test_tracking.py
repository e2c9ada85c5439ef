"""The tracker and its filters on synthetic detections, then on a labelled clip with the real detector:
people crossing with an occlusion and a gap, thumbnails from scan, and a summarize that never decodes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import types
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import pytest
from clips import CROSSING, require_shared, street_truth, write_street

from bus.artifacts import write_artifact
from bus.config import ConfigError, Settings, load_settings
from bus.fsutil import sha256_file
from nodes.common.claims import ANALYTIC_NAME, StoredVideo, video_inputs
from nodes.scan.analyze import scan_video
from nodes.scan.detectors import make_detector
from nodes.scan.settings import FilterSettings, ScanSettings, TrackSettings
from nodes.scan.tracking import track_frames
from nodes.summarize.node import SummarizeNode
from nodes.summarize.summary import build_summary, describe, peak_in_view

WEIGHTS = "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
SIZE = (640, 480)


def det(label: str, x: float, confidence: float = 0.9, width: float = 60, y: float = 200) -> dict[str, Any]:
    return {"label": label, "confidence": confidence, "box": [x, y, x + width, y + 2.5 * width]}


def frame(t: float, *detections: dict[str, Any], inferred: bool = True) -> dict[str, Any]:
    return {
        "t": t,
        "index": round(t * 10),
        "motion": inferred,
        "inferred": inferred,
        "detections": list(detections),
    }


def run(frames: list[dict[str, Any]], **filters: Any) -> list[dict[str, Any]]:
    return track_frames(frames, TrackSettings(), FilterSettings(**filters), SIZE)


def sampled(start: float, seconds: float, *, skip: tuple[float, float] = (0, 0)) -> list[float]:
    """The times of the frames sampled at 5 fps, less those in `skip`."""
    return [
        round(start + i / 5, 3) for i in range(round(seconds * 5)) if not skip[0] <= start + i / 5 < skip[1]
    ]


def test_a_walker_missed_for_a_second_stays_one_track() -> None:
    times = sampled(0.0, 6.0, skip=(2.0, 3.2))  # behind something for 1.2 s
    frames = [frame(t, det("person", 20 + 80 * t)) if t in times else frame(t) for t in sampled(0.0, 6.0)]
    (track,) = run(frames)
    assert (track["first_seen"], track["last_seen"], track["reported"]) == (0.0, 5.8, True)
    assert track["hits"] == len(times)
    assert all(d["track"] == 1 for f in frames for d in f["detections"])


def test_two_people_crossing_keep_their_ids() -> None:
    frames = []
    for t in sampled(0.0, 6.0):
        frames.append(frame(t, det("person", 20 + 90 * t, y=190), det("person", 560 - 90 * t, y=210)))
    tracks = run(frames)
    assert [t["id"] for t in tracks] == [1, 2]
    assert all([d["track"] for d in f["detections"]] == [1, 2] for f in frames)


def test_frames_the_motion_gate_skipped_hold_what_was_in_view() -> None:
    frames = [
        frame(0.0, det("car", 100)),
        *(frame(t / 5, inferred=False) for t in range(1, 25)),
        frame(5.0, det("car", 100)),
    ]
    (track,) = run(frames)
    assert (track["first_seen"], track["last_seen"], track["hits"], track["frames"]) == (0.0, 5.0, 2, 26)
    assert track["reported"]
    # the same scene, then the car gone: the track lasts until the scene changed, then ends
    static = [frame(0.0, det("car", 100)), *(frame(t / 5, inferred=False) for t in range(1, 15)), frame(3.0)]
    (held,) = run(static)
    assert (held["last_seen"], held["frames"]) == (2.8, 15)


def test_a_track_lost_longer_than_max_lost_s_ends() -> None:
    frames = [frame(0.0, det("dog", 100)), frame(0.2, det("dog", 100)), frame(0.4, det("dog", 100))]
    frames += [frame(t, det("dog", 100)) for t in (3.0, 3.2, 3.4)]
    assert [t["id"] for t in run(frames)] == [1, 2]


def test_single_frame_and_low_score_detections_never_count() -> None:
    street = [frame(t, det("person", 20 + 80 * t)) for t in sampled(0.0, 3.0)]
    street[4]["detections"].append(det("skis", 400, 0.95))  # one frame, however confident
    for f in street[6:12]:
        f["detections"].append(det("bird", 500, 0.4))  # below min_score: never starts a track
    for f in street[0:10]:
        f["detections"].append(det("frisbee", 300, 0.55))  # steady, but its median is under 0.6
    tracks = run(street)
    assert {t["label"]: t["reported"] for t in tracks} == {"person": True, "skis": False, "frisbee": False}
    rejected = {t["label"]: t["rejected"] for t in tracks if not t["reported"]}
    assert rejected == {
        "skis": "in view 1 sampled frames < min_frames 3",
        "frisbee": "median score 0.55 < threshold 0.6",
    }
    assert not any("track" in d for f in street for d in f["detections"] if d["label"] == "bird")
    analytic = {"video": {}, "detector": {}, "tracks": tracks}
    summary = build_summary(analytic)
    assert summary["counts"] == {"person": 1} and summary["rejected"] == {"frisbee": 1, "skis": 1}
    assert summary["text"] == "1 person between 00:00 and 00:03."


def test_a_weak_detection_continues_a_track_but_never_starts_one() -> None:
    frames = [frame(t, det("person", 100, 0.9 if t < 1 else 0.35)) for t in sampled(0.0, 2.0)]
    (track,) = run(frames, threshold=0.3)
    assert track["hits"] == 10 and track["last_seen"] == 1.8


def test_class_flicker_is_one_track_with_its_most_confident_label() -> None:
    labels = ["horse", "cow", "horse", "elephant", "horse", "cow"]
    (track,) = run([frame(i / 5, det(label, 100 + 5 * i, 0.8)) for i, label in enumerate(labels)])
    assert track["label"] == "horse" and track["hits"] == 6


def test_area_filters_and_per_class_overrides() -> None:
    frames = [
        frame(t, det("person", 100, width=10), det("car", 300, 0.6, width=80)) for t in sampled(0.0, 2.0)
    ]
    assert {t["label"] for t in run(frames)} == {"person", "car"}
    tracks = run(frames, min_area=0.001, classes={"car": {"threshold": 0.5}})
    assert [(t["label"], t["reported"]) for t in tracks] == [("car", True)]  # 10x25 px is under 0.1%
    assert [t["label"] for t in run(frames, max_area=0.01)] == ["person"]  # the car is 5% of the frame


def test_filter_settings_from_toml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "vv.toml"
    config.write_text(
        "[filters]\nthreshold = 0.6\n[filters.classes.person]\nmin_score = 0.4\nmin_frames = 5\n"
    )
    settings = load_settings({"VV_CONFIG": str(config), "VV_TRACK_MAX_LOST_S": "3"})
    person, car = (
        settings.section(FilterSettings).for_label("person"),
        settings.section(FilterSettings).for_label("car"),
    )
    assert (person.min_score, person.min_frames, person.threshold) == (0.4, 5, 0.6)
    assert (car.min_score, car.min_frames, car.threshold) == (0.5, 3, 0.6)
    assert settings.section(TrackSettings).max_lost_s == 3.0
    env = load_settings({"VV_FILTERS_CLASSES": '{"dog": {"min_area": 0.01}}'})
    assert env.section(FilterSettings).for_label("dog").min_area == 0.01
    config.write_text("[filters.classes.person]\nmin_scor = 0.4\n")
    with pytest.raises(ConfigError, match=r"filters\.classes\.person\.min_scor: unknown setting"):
        load_settings({"VV_CONFIG": str(config)})
    with pytest.raises(ConfigError, match=r"filters\.classes\.person\.min_frames"):
        load_settings({"VV_FILTERS_CLASSES": '{"person": {"min_frames": "many"}}'})


def test_peak_in_view() -> None:
    spans = [(0.0, 5.0), (1.0, 2.0), (2.0, 3.0), (4.0, 6.0)]
    assert peak_in_view([{"first_seen": a, "last_seen": b} for a, b in spans]) == 3  # at 2.0
    assert peak_in_view([]) == 0


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> tuple[StoredVideo, dict[str, Any]]:
    """CROSSING stored as ingest would, scanned with the real detector (thumbnails capped at 3)."""
    weights = require_shared(WEIGHTS) / WEIGHTS
    home = tmp_path_factory.mktemp("home")
    clip = write_street(home / "crossing.mp4", CROSSING, size=SIZE)
    digest = hashlib.sha256(clip.read_bytes()).hexdigest()
    directory = Settings(home=home).paths.storage_for(digest[:32])
    directory.mkdir(parents=True)
    video = StoredVideo(digest[:32], digest, clip.stat().st_size, clip.rename(directory / "crossing.mp4"))
    settings = ScanSettings(model=str(weights))
    detector, reason = make_detector(settings, Path("unused"))
    assert reason is None
    analytic = scan_video(
        video.path, detector, settings, track=TrackSettings(thumbnails=3), thumbnails=directory / "thumbnails"
    )
    analytic["inputs"] = video_inputs(video)
    return video, analytic


def test_people_crossing_with_an_occlusion_and_a_gap_are_counted_once_each(
    crossing: tuple[StoredVideo, dict[str, Any]],
) -> None:
    _, analytic = crossing
    summary = build_summary(analytic)
    people = len(CROSSING.walkers)
    assert people - 1 <= summary["counts"]["person"] <= people + 1
    peak = max(len(street_truth(CROSSING, f["t"], SIZE)) for f in analytic["frames"])
    assert peak == 3 and summary["classes"]["person"]["peak_simultaneous"] == peak
    assert set(summary["counts"]) == {"person"}  # nothing else reached the summary
    assert "people (up to 3 at once)" in summary["text"]


def test_scan_writes_capped_thumbnails_of_the_best_reported_tracks(
    crossing: tuple[StoredVideo, dict[str, Any]],
) -> None:
    video, analytic = crossing
    reported = [t for t in analytic["tracks"] if t["reported"]]
    with_thumbs = [t for t in reported if "thumbnail" in t]
    assert len(with_thumbs) == 3 < len(reported)  # the cap
    best = sorted(reported, key=lambda t: (-t["best"]["confidence"], t["id"]))[:3]
    assert {t["id"] for t in with_thumbs} == {t["id"] for t in best}
    assert sorted(p.name for p in (video.directory / "thumbnails").iterdir()) == sorted(
        Path(ref["path"]).name for t in with_thumbs for ref in t["thumbnail"].values()
    )
    for track in with_thumbs:
        crop, full = (cv2.imread(track["thumbnail"][kind]["path"]) for kind in ("crop", "frame"))
        assert sha256_file(Path(track["thumbnail"]["crop"]["path"])) == track["thumbnail"]["crop"]["sha256"]
        assert full is not None and full.shape[:2] == (SIZE[1], SIZE[0])
        x1, y1, x2, y2 = track["best"]["box"]
        assert crop is not None and crop.shape[0] >= (y2 - y1) and crop.shape[1] >= (x2 - x1)


def test_summarize_never_decodes_the_video(
    crossing: tuple[StoredVideo, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    video, analytic = crossing
    home = video.path.parents[5]
    ref = write_artifact(video.directory, ANALYTIC_NAME, analytic)
    opened: list[Any] = []

    def no_decoding(*args: Any) -> None:
        opened.append(args)
        raise AssertionError("summarize opened the video")

    monkeypatch.setattr(cv2, "VideoCapture", no_decoding)
    emitted: list[tuple[str, dict[str, Any]]] = []

    async def emit(event_type: str, data: dict[str, Any], **_: Any) -> None:
        emitted.append((event_type, data))

    node = types.SimpleNamespace(
        paths=Settings(home=home).paths, settings=Settings(), describer=describe, emit=emit
    )
    stored = {
        "id": video.id,
        "path": str(video.path),
        "sha256": video.sha256,
        "bytes": video.bytes,
        "duration_s": 23.0,
    }
    event = types.SimpleNamespace(data={"video": stored, "analytic": ref}, subject=video.id)
    asyncio.run(SummarizeNode.summarize(node, event))  # type: ignore[arg-type]
    assert not opened
    ((event_type, data),) = emitted
    assert event_type == "summary.done" and data["counts"]["person"] >= 3
    assert len(data["thumbnails"]) == 6 and all(Path(t["path"]).exists() for t in data["thumbnails"])
    summary = json.loads(Path(data["summary"]["path"]).read_text())
    assert Counter(t["label"] for t in summary["tracks"]) == Counter(data["counts"])


def test_replaying_the_detections_gives_the_tracks_scan_wrote(
    crossing: tuple[StoredVideo, dict[str, Any]],
) -> None:
    """What bench/accuracy.py relies on: settings compared on the same detections."""
    _, analytic = crossing
    frames = json.loads(json.dumps(analytic["frames"]))
    replayed = track_frames(frames, TrackSettings(), FilterSettings(), SIZE)
    written = [{k: v for k, v in t.items() if k != "thumbnail"} for t in analytic["tracks"]]
    assert replayed == written
