"""Tracks, summary figures, text and thumbnails: synthetic analytics for the rules, a real clip for the outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import pytest
from clips import Scene, require_shared, write_clip
from jsonschema import Draft202012Validator

from bus.config import ScanSettings
from bus.fsutil import sha256_file
from nodes.scan.analyze import VideoError, scan_video
from nodes.scan.detectors import make_detector
from nodes.summarize import build_summary, describe, iou, link_tracks, plural, write_thumbnails

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
VALIDATOR = Draft202012Validator(json.loads((REPO / "schemas" / "summary.schema.json").read_text()))


def det(label: str, box: list[float], confidence: float = 0.9) -> dict[str, Any]:
    return {"label": label, "confidence": confidence, "box": box}


def frame(t: float, *detections: dict[str, Any], inferred: bool = True) -> dict[str, Any]:
    return {
        "t": t,
        "index": round(t * 10),
        "motion": inferred,
        "inferred": inferred,
        "detections": list(detections),
    }


def analytic(frames: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for f in frames:
        for label in {d["label"] for d in f["detections"]}:
            n = sum(d["label"] == label for d in f["detections"])
            entry = counts.setdefault(label, {"max_simultaneous": 0, "frames": 0})
            entry["max_simultaneous"] = max(entry["max_simultaneous"], n)
            entry["frames"] += 1
    return {
        "video": {"fps": 10.0, "frames": 600, "duration_s": 60.0, "width": 640, "height": 480},
        "detector": {"backend": "darknet", "model": "m.weights", "runtime": "opencv"},
        "frames": frames,
        "counts": counts,
    }


A = [10.0, 10.0, 110.0, 210.0]
A_MOVED = [20.0, 12.0, 120.0, 212.0]
B = [400.0, 100.0, 500.0, 300.0]


def test_iou() -> None:
    assert iou(A, A) == 1.0
    assert iou(A, B) == 0.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)


def test_tracks_follow_overlapping_boxes_per_label() -> None:
    tracks = link_tracks(
        [
            frame(0.0, det("person", A), det("person", B)),
            frame(0.2, det("person", A_MOVED), det("dog", B)),  # same place, other label: a new track
            frame(0.4, det("person", A_MOVED, 0.95)),
        ]
    )
    assert [(t.id, t.label, t.first_t, t.last_t, t.hits) for t in tracks] == [
        (1, "person", 0.0, 0.4, 3),
        (2, "person", 0.0, 0.0, 1),
        (3, "dog", 0.2, 0.2, 1),
    ]
    assert tracks[0].best_t == 0.4 and tracks[0].best_box == tuple(A_MOVED)


def test_a_gap_longer_than_max_gap_ends_a_track_but_skipped_frames_do_not() -> None:
    frames = [frame(0.0, det("car", A)), frame(3.0), frame(3.2, det("car", A))]
    assert len(link_tracks(frames, max_gap_s=2.0)) == 2
    gated = [
        frame(0.0, det("car", A)),
        *(frame(t / 5, inferred=False) for t in range(1, 25)),
        frame(5.0, det("car", A)),
    ]
    (track,) = link_tracks(gated, max_gap_s=2.0)
    assert (track.first_t, track.last_t, track.hits) == (0.0, 5.0, 2)


def test_a_static_stretch_extends_what_was_seen_until_the_scene_changes() -> None:
    frames = [frame(0.0, det("person", A)), *(frame(t / 5, inferred=False) for t in range(1, 15)), frame(3.0)]
    (track,) = link_tracks(frames)
    assert (track.first_t, track.last_t, track.hits) == (0.0, 2.8, 1)


def test_summary_figures_timeline_and_text() -> None:
    frames = [frame(12.0, det("person", A))]
    frames += [frame(t / 5, det("person", A), det("car", B)) for t in range(61, 150)]  # 12.2 .. 29.8
    frames += [frame(t / 5, det("person", A)) for t in range(150, 216)]  # .. 43.0
    frames += [frame(43.2), frame(50.0, det("person", B)), frame(50.2, det("person", B), det("person", A))]
    summary = build_summary(analytic(frames))
    VALIDATOR.validate(summary)
    assert summary["counts"] == {"car": 1, "person": 3}
    assert summary["classes"]["person"] == {
        "tracks": 3,
        "first_seen": 12.0,
        "last_seen": 50.2,
        "longest_dwell_s": 31.0,
        "peak_simultaneous": 2,
    }
    assert summary["classes"]["car"]["first_seen"] == 12.2
    assert summary["timeline"] == [
        {"start": 12.0, "end": 43.0, "labels": {"car": 1, "person": 1}},
        {"start": 50.0, "end": 50.2, "labels": {"person": 2}},
    ]
    assert summary["text"] == "3 people and 1 car between 00:12 and 00:50; one person stayed 31 s."


def test_describe_edge_cases() -> None:
    empty = build_summary(analytic([frame(0.0), frame(0.2)]))
    VALIDATOR.validate(empty)
    assert empty["text"] == describe(empty) == "No objects detected."
    one = build_summary(analytic([frame(65.0, det("bus", B))]))
    assert one["text"] == "1 bus at 01:05."
    hour = build_summary(
        analytic([frame(3725.0, det("traffic light", A)), frame(3725.2, det("traffic light", B))])
    )
    assert hour["text"] == "2 traffic lights at 1:02:05."
    custom = build_summary(
        analytic([frame(1.0, det("dog", A))]), describer=lambda s: f"{len(s['tracks'])} track"
    )
    assert custom["text"] == "1 track"


@pytest.mark.parametrize(
    ("label", "count", "expected"),
    [
        ("person", 1, "person"),
        ("person", 2, "people"),
        ("bus", 2, "buses"),
        ("sheep", 3, "sheep"),
        ("knife", 2, "knives"),
        ("wine glass", 2, "wine glasses"),
        ("teddy bear", 2, "teddy bears"),
        ("skis", 2, "skis"),
        ("toothbrush", 2, "toothbrushes"),
        ("mouse", 2, "mice"),
        ("hair drier", 2, "hair driers"),
        ("butterfly", 2, "butterflies"),
        ("toy", 2, "toys"),
    ],
)
def test_plural(label: str, count: int, expected: str) -> None:
    assert plural(label, count) == expected


@pytest.fixture(scope="module")
def person_then_dog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    weights = require_shared(WEIGHTS) / WEIGHTS
    clip = write_clip(
        tmp_path_factory.mktemp("clip") / "person-then-dog.mp4", [Scene("person", 3), Scene("dog", 3)]
    )
    settings = ScanSettings(model=str(weights))
    detector, reason = make_detector(settings, Path("unused"))
    assert reason is None
    return clip, scan_video(clip, detector, settings)


def test_person_then_dog_clip_summary(person_then_dog: tuple[Path, dict[str, Any]]) -> None:
    _, scanned = person_then_dog
    summary = build_summary(scanned)
    VALIDATOR.validate(summary)
    person, dog = summary["classes"]["person"], summary["classes"]["dog"]
    assert summary["counts"]["person"] >= 1 and summary["counts"]["dog"] >= 1
    assert person["first_seen"] == 0.0 and person["longest_dwell_s"] >= 2.0  # on screen 0..3 s
    assert dog["first_seen"] < 3.0 <= dog["last_seen"] <= 6.0  # dogs in both photos
    assert summary["classes"]["car"]["first_seen"] >= 3.0  # only dog.jpg has the car
    assert "people" in summary["text"] or "1 person" in summary["text"]
    assert summary["text"].endswith(".") and "00:00" in summary["text"]


def test_thumbnails_crop_each_tracks_best_frame(
    person_then_dog: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    clip, scanned = person_then_dog
    summary = build_summary(scanned)
    refs = write_thumbnails(clip, summary, tmp_path / "thumbs")
    assert [ref["track"] for ref in refs] == [track["id"] for track in summary["tracks"]]
    for ref, track in zip(refs, summary["tracks"], strict=True):
        assert sha256_file(Path(ref["path"])) == ref["sha256"]
        image = cv2.imread(ref["path"])
        x1, y1, x2, y2 = track["best"]["box"]
        assert image is not None
        assert image.shape[1] >= (x2 - x1) * 0.9 and image.shape[0] >= (y2 - y1) * 0.9
    with pytest.raises(VideoError):
        write_thumbnails(tmp_path / "gone.mp4", summary, tmp_path / "thumbs")
