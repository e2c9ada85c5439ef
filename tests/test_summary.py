"""Summary figures, peak in view, timeline and text from an analytic's tracks; a real clip for the outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clips import Scene, require_shared, write_clip
from jsonschema import Draft202012Validator

from nodes.scan.analyze import scan_video
from nodes.scan.detectors import make_detector
from nodes.scan.settings import ScanSettings
from nodes.summarize.summary import build_summary, describe, plural

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
VALIDATOR = Draft202012Validator(json.loads((REPO / "schemas" / "summary.schema.json").read_text()))
BOX = [10.0, 10.0, 110.0, 210.0]


def track(
    track_id: int, label: str, first: float, last: float, *, reported: bool = True, confidence: float = 0.9
) -> dict[str, Any]:
    """A track as scan writes it into the analytic."""
    document: dict[str, Any] = {
        "id": track_id,
        "label": label,
        "first_seen": first,
        "last_seen": last,
        "dwell_s": round(last - first, 3),
        "hits": max(1, round((last - first) * 5)),
        "frames": max(1, round((last - first) * 5)),
        "median_score": confidence,
        "best": {"t": first, "index": round(first * 10), "box": BOX, "confidence": confidence},
        "reported": reported,
    }
    if not reported:
        document["rejected"] = "median score 0.40 < threshold 0.7"
    return document


def analytic(*tracks: dict[str, Any]) -> dict[str, Any]:
    return {
        "video": {"fps": 10.0, "frames": 600, "duration_s": 60.0, "width": 640, "height": 480},
        "detector": {"backend": "darknet", "model": "m.weights", "runtime": "opencv"},
        "tracks": list(tracks),
    }


def test_summary_figures_timeline_and_text() -> None:
    summary = build_summary(
        analytic(
            track(1, "person", 12.0, 43.0),
            track(2, "car", 12.2, 29.8),
            track(3, "person", 50.0, 50.2),
            track(4, "person", 50.2, 52.0),
            track(5, "skis", 20.0, 20.0, reported=False, confidence=0.4),
            track(6, "person", 30.0, 30.4, reported=False, confidence=0.4),
        )
    )
    VALIDATOR.validate(summary)
    assert summary["counts"] == {"car": 1, "person": 3}
    assert summary["rejected"] == {"person": 1, "skis": 1}
    assert summary["classes"]["person"] == {
        "tracks": 3,
        "first_seen": 12.0,
        "last_seen": 52.0,
        "longest_dwell_s": 31.0,
        "peak_simultaneous": 2,
    }
    assert [t["id"] for t in summary["tracks"]] == [1, 2, 3, 4]
    assert summary["timeline"] == [
        {"start": 12.0, "end": 43.0, "labels": {"car": 1, "person": 1}},
        {"start": 50.0, "end": 52.0, "labels": {"person": 2}},
    ]
    assert (
        summary["text"]
        == "3 people (up to 2 at once) and 1 car between 00:12 and 00:52; one person stayed 31 s."
    )


def test_describe_edge_cases() -> None:
    empty = build_summary(analytic(track(1, "bird", 3.0, 3.0, reported=False)))
    VALIDATOR.validate(empty)
    assert empty["text"] == describe(empty) == "No objects detected." and empty["rejected"] == {"bird": 1}
    one = build_summary(analytic(track(1, "bus", 65.0, 65.2)))
    assert one["text"] == "1 bus at 01:05."
    hour = build_summary(
        analytic(track(1, "traffic light", 3725.0, 3725.2), track(2, "traffic light", 3725.0, 3725.2))
    )
    assert hour["text"] == "2 traffic lights at 1:02:05."  # both in view together: no "up to"
    custom = build_summary(
        analytic(track(1, "dog", 1.0, 2.0)), describer=lambda s: f"{len(s['tracks'])} track"
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
def person_then_dog(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    weights = require_shared(WEIGHTS) / WEIGHTS
    clip = write_clip(
        tmp_path_factory.mktemp("clip") / "person-then-dog.mp4", [Scene("person", 3), Scene("dog", 3)]
    )
    settings = ScanSettings(model=str(weights))
    detector, reason = make_detector(settings, Path("unused"))
    assert reason is None
    return scan_video(clip, detector, settings)


def test_person_then_dog_clip_summary(person_then_dog: dict[str, Any]) -> None:
    summary = build_summary(person_then_dog)
    VALIDATOR.validate(summary)
    person, dog, car = (summary["classes"][label] for label in ("person", "dog", "car"))
    assert summary["counts"]["person"] == 1 and summary["counts"]["car"] == 1
    assert person["first_seen"] == 0.0 and person["longest_dwell_s"] >= 2.0  # on screen 0..3 s
    assert dog["tracks"] == 2 and dog["first_seen"] == 0.0 and dog["peak_simultaneous"] == 1  # one per photo
    assert car["first_seen"] >= 3.0  # only dog.jpg has the car
    assert (
        summary["text"].startswith("2 dogs, 1 car, 1 person") and "between 00:00 and 00:06" in summary["text"]
    )
