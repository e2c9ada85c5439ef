"""Link per-frame detections into tracks: greedy IoU association per label across inferred frames.

A frame the motion gate skipped shows the same scene as the inferred frame before it, so the
objects seen there are still present: their tracks last through it. Only inferred frames can end
a track: it closes when an inferred frame more than `max_gap_s` after its last sighting misses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]

IOU_THRESHOLD = 0.3
MAX_GAP_S = 2.0


@dataclass
class Track:
    """One object followed over time; `best_*` is its highest-confidence sighting (for the thumbnail)."""

    id: int
    label: str
    first_t: float
    last_t: float
    box: Box
    hits: int
    best_t: float
    best_index: int
    best_box: Box
    best_confidence: float

    @classmethod
    def start(cls, track_id: int, label: str, t: float, index: int, box: Box, confidence: float) -> Track:
        return cls(track_id, label, t, t, box, 1, t, index, box, confidence)

    @property
    def dwell_s(self) -> float:
        return self.last_t - self.first_t

    def add(self, t: float, index: int, box: Box, confidence: float) -> None:
        self.last_t = t
        self.box = box
        self.hits += 1
        if confidence > self.best_confidence:
            self.best_t, self.best_index, self.best_box, self.best_confidence = t, index, box, confidence


def _box(values: Sequence[float]) -> Box:
    return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_tracks(
    frames: Iterable[dict[str, Any]], *, iou_threshold: float = IOU_THRESHOLD, max_gap_s: float = MAX_GAP_S
) -> list[Track]:
    """Tracks from the analytic's `frames` (time order), sorted by first sighting."""
    open_tracks: list[Track] = []
    closed: list[Track] = []
    present: list[Track] = []  # seen in the latest inferred frame
    next_id = 1
    for frame in frames:
        t, index = float(frame["t"]), int(frame["index"])
        if not frame["inferred"]:
            for track in present:
                track.last_t = t
            continue
        detections = frame["detections"]
        matched_tracks: set[int] = set()
        matched_detections: set[int] = set()
        pairs = sorted(
            (
                (iou(track.box, det["box"]), ti, di)
                for ti, track in enumerate(open_tracks)
                for di, det in enumerate(detections)
                if track.label == det["label"]
            ),
            reverse=True,
        )
        for overlap, ti, di in pairs:
            if overlap < iou_threshold:
                break
            if ti in matched_tracks or di in matched_detections:
                continue
            matched_tracks.add(ti)
            matched_detections.add(di)
            det = detections[di]
            open_tracks[ti].add(t, index, _box(det["box"]), float(det["confidence"]))
        still_open = []
        for ti, track in enumerate(open_tracks):
            if ti in matched_tracks or t - track.last_t <= max_gap_s:
                still_open.append(track)
            else:
                closed.append(track)
        for di, det in enumerate(detections):
            if di in matched_detections:
                continue
            still_open.append(
                Track.start(next_id, det["label"], t, index, _box(det["box"]), float(det["confidence"]))
            )
            next_id += 1
        present = [track for track in still_open if track.last_t == t]
        open_tracks = still_open
    return sorted(closed + open_tracks, key=lambda track: track.id)
