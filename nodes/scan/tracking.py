"""Multi-object tracking on the sampled frames, ByteTrack style, with Frigate-style false-positive filters.

One walking person must be one track, and a detector's single-frame guesses (skis on a street)
must never be counted. So each track carries a constant-velocity Kalman filter (its box is predicted
across missed detections and occlusions for `track.max_lost_s`), and each inferred frame is associated
in two stages by optimal assignment on IoU with the predicted boxes (another class's detection
counts at half its overlap, so label flicker stays on one track, which takes its most confident
label): detections at or above their class's `min_score` first (only they may start a track), then
the weaker ones, which may only continue a track that was in view (they keep it alive through a
partial occlusion). Time is in
seconds, not frames, so frames the motion gate skipped or a lower `detect_fps` do not break tracks:
a skipped frame shows the same scene as the inferred one before it, so what was in view stays in view.

A track is *reported* only when it passes its class's filters: the median of its scores reaches
`threshold`, and it was in view for at least `min_frames` sampled frames and `min_s` seconds.
`min_area`/`max_area` (fractions of the frame) drop a detection before it is tracked.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from nodes.scan.settings import FilterSettings, ObjectFilter, TrackSettings

Box = tuple[float, float, float, float]
Vector = npt.NDArray[np.float64]

# Kalman noise as fractions of the box height (ByteTrack's choice: a big box moves more pixels);
# the process noise grows with the time between inferred frames.
_POSITION_NOISE = 0.05
_VELOCITY_NOISE = 0.3
_MEASUREMENT_NOISE = 0.05
_INITIAL_VELOCITY = 1.0  # box heights per second: the first match decides the direction
_LOW_MATCH_IOU = 0.5  # a weak detection continues a track only where it clearly overlaps it
# A detection of another class than the track's counts at this share of its overlap: a weak model's
# label flicker stays on one track, while two overlapping objects of different classes (a person
# on a bicycle) each keep their own, as each one's own class matches better.
_OTHER_CLASS_WEIGHT = 0.5


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> Vector:
    """Pairwise intersection over union of (x1, y1, x2, y2) boxes."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    boxes_a, boxes_b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lt = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    rb = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(boxes_a[:, 2:] - boxes_a[:, :2], axis=1)
    area_b = np.prod(boxes_b[:, 2:] - boxes_b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class BoxFilter:
    """Constant-velocity Kalman filter over (cx, cy, w, h) and their rates, in seconds."""

    def __init__(self, box: Box, t: float) -> None:
        x1, y1, x2, y2 = box
        self.t = t
        self.mean: Vector = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0, 0, 0, 0], float)
        h = max(y2 - y1, 1.0)
        self.cov: Vector = np.diag(
            [(_MEASUREMENT_NOISE * h) ** 2] * 4 + [(_INITIAL_VELOCITY * h) ** 2] * 4
        ).astype(float)

    def predict(self, t: float) -> Box:
        """Move the state to `t` (no-op for t at or before the last update) and return the box."""
        dt = t - self.t
        if dt > 0:
            motion = np.eye(8)
            motion[:4, 4:] = np.eye(4) * dt
            h = max(self.mean[3], 1.0)
            noise = np.diag([(_POSITION_NOISE * h) ** 2] * 4 + [(_VELOCITY_NOISE * h) ** 2] * 4) * dt
            self.mean = motion @ self.mean
            self.cov = motion @ self.cov @ motion.T + noise
            self.mean[2:4] = np.maximum(self.mean[2:4], 1.0)
            self.t = t
        return self.box

    def stay(self, t: float) -> None:
        """The box did not move until `t` (the motion gate saw no change): predict onwards from there."""
        self.t = max(self.t, t)

    def update(self, box: Box) -> None:
        x1, y1, x2, y2 = box
        measured = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        h = max(y2 - y1, 1.0)
        innovation_cov = self.cov[:4, :4] + np.eye(4) * (_MEASUREMENT_NOISE * h) ** 2
        gain = self.cov[:, :4] @ np.linalg.inv(innovation_cov)
        self.mean = self.mean + gain @ (measured - self.mean[:4])
        self.cov = self.cov - gain @ self.cov[:4, :]

    @property
    def box(self) -> Box:
        cx, cy, w, h = (float(v) for v in self.mean[:4])
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


@dataclass
class Track:
    """One object followed over time; `best_*` is its highest-scoring sighting (for the thumbnail)."""

    id: int
    motion: BoxFilter
    first_t: float
    last_t: float  # last time it was seen, or held in view by a skipped (static) frame
    frames: int = 1  # sampled frames it was seen or held in
    scores: list[float] = field(default_factory=list)
    votes: dict[str, float] = field(default_factory=dict)  # summed scores per label the detector gave it
    best_t: float = 0.0
    best_index: int = 0
    best_box: Box = (0.0, 0.0, 0.0, 0.0)
    best_confidence: float = -1.0
    in_view: bool = True  # matched in the latest inferred frame

    def hit(self, t: float, index: int, label: str, box: Box, confidence: float) -> bool:
        """Record a matched detection; True when it is the track's best sighting so far."""
        if t > self.last_t:
            self.frames += 1
        self.last_t = t
        self.in_view = True
        self.scores.append(confidence)
        self.votes[label] = self.votes.get(label, 0.0) + confidence
        if confidence <= self.best_confidence:
            return False
        self.best_t, self.best_index, self.best_box, self.best_confidence = t, index, box, confidence
        return True

    @property
    def label(self) -> str:
        """The class the detector gave it most confidently over its life (a weak model flips horse,
        cow and elephant on one animal from frame to frame: that is one animal, not three)."""
        return min(self.votes, key=lambda label: (-self.votes[label], label))

    @property
    def dwell_s(self) -> float:
        return self.last_t - self.first_t

    @property
    def median_score(self) -> float:
        return statistics.median(self.scores)

    def rejection(self, rule: ObjectFilter) -> str:
        """Why the track is not reported under `rule`, or "" when it is."""
        if self.median_score < rule.threshold:
            return f"median score {self.median_score:.2f} < threshold {rule.threshold}"
        if self.frames < rule.min_frames:
            return f"in view {self.frames} sampled frames < min_frames {rule.min_frames}"
        if self.dwell_s < rule.min_s:
            return f"in view {self.dwell_s:.2f} s < min_s {rule.min_s}"
        return ""

    def to_json(self, rule: ObjectFilter) -> dict[str, Any]:
        reason = self.rejection(rule)
        track: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "first_seen": round(self.first_t, 3),
            "last_seen": round(self.last_t, 3),
            "dwell_s": round(self.dwell_s, 3),
            "hits": len(self.scores),
            "frames": self.frames,
            "median_score": round(self.median_score, 4),
            "best": {
                "t": round(self.best_t, 3),
                "index": self.best_index,
                "box": [round(max(v, 0.0), 1) for v in self.best_box],
                "confidence": round(self.best_confidence, 4),
            },
            "reported": not reason,
        }
        if reason:
            track["rejected"] = reason
        return track


def _assign(iou: Vector, min_iou: float) -> list[tuple[int, int]]:
    """Optimal (row, column) pairs by total IoU, keeping only pairs that overlap at least `min_iou`."""
    if iou.size == 0:
        return []
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]


class Tracker:
    """Feed it every sampled frame in time order: `update` for inferred frames, `hold` for skipped ones."""

    def __init__(self, track: TrackSettings, filters: FilterSettings, frame_size: tuple[int, int]) -> None:
        self.settings = track
        self.filters = filters
        self.frame_area = float(frame_size[0] * frame_size[1])
        self.active: list[Track] = []
        self.ended: list[Track] = []
        self.improved: list[Track] = []  # tracks whose best sighting is in the latest inferred frame
        self._next_id = 1

    def _admissible(self, detection: Mapping[str, Any]) -> bool:
        rule = self.filters.for_label(detection["label"])
        x1, y1, x2, y2 = _box(detection["box"])
        area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0) / self.frame_area
        return rule.min_area <= area <= rule.max_area

    def hold(self, t: float) -> None:
        """A frame the motion gate skipped: the scene did not change, so what was in view still is."""
        for track in self.active:
            if track.in_view and t > track.last_t:
                track.last_t = t
                track.frames += 1
                track.motion.stay(t)

    def update(self, t: float, index: int, detections: Sequence[dict[str, Any]]) -> None:
        """Associate one inferred frame's detections; each one tracked gets its track's id as `track`."""
        self._expire(t)
        assigned: list[int | None] = [None] * len(detections)
        improved: list[Track] = []
        candidates = [i for i, d in enumerate(detections) if self._admissible(d)]
        strong = [i for i in candidates if detections[i]["confidence"] >= self._min_score(detections[i])]
        weak = [i for i in candidates if i not in strong]
        predicted = {track.id: track.motion.predict(t) for track in self.active}
        unmatched = list(self.active)
        for stage, pool, min_iou in (
            (strong, list(self.active), self.settings.match_iou),
            (weak, [tr for tr in self.active if tr.in_view], _LOW_MATCH_IOU),
        ):
            pool = [track for track in pool if track in unmatched]
            overlap = iou_matrix(
                [predicted[tr.id] for tr in pool], [_box(detections[i]["box"]) for i in stage]
            )
            labels = [detections[i]["label"] for i in stage]
            same_class = np.array([[tr.label == label for label in labels] for tr in pool], bool)
            affinity = np.where(same_class.reshape(overlap.shape), overlap, overlap * _OTHER_CLASS_WEIGHT)
            for row, col in _assign(affinity, min_iou):
                track, detection = pool[row], detections[stage[col]]
                box = _box(detection["box"])
                track.motion.update(box)
                if track.hit(t, index, detection["label"], box, float(detection["confidence"])):
                    improved.append(track)
                unmatched.remove(track)
                assigned[stage[col]] = track.id
        for track in unmatched:
            track.in_view = False
        for i in strong:
            if assigned[i] is None:
                track = self._start(t, index, detections[i])
                improved.append(track)
                assigned[i] = track.id
        self.improved = improved
        for detection, track_id in zip(detections, assigned, strict=True):
            if track_id is None:
                detection.pop("track", None)
            else:
                detection["track"] = track_id

    def _min_score(self, detection: Mapping[str, Any]) -> float:
        return self.filters.for_label(detection["label"]).min_score

    def _start(self, t: float, index: int, detection: Mapping[str, Any]) -> Track:
        box = _box(detection["box"])
        track = Track(self._next_id, BoxFilter(box, t), first_t=t, last_t=t)
        self._next_id += 1
        track.hit(t, index, detection["label"], box, float(detection["confidence"]))
        self.active.append(track)
        return track

    def _expire(self, t: float) -> None:
        """Tracks lost longer than `max_lost_s` end; until then they can be found again."""
        for track in [tr for tr in self.active if t - tr.last_t > self.settings.max_lost_s]:
            self.active.remove(track)
            self.ended.append(track)

    def close(self) -> list[Track]:
        """End every track; all tracks in id order."""
        self.ended.extend(self.active)
        self.active = []
        return sorted(self.ended, key=lambda track: track.id)

    def reported(self, track: Track) -> bool:
        return not track.rejection(self.filters.for_label(track.label))

    def tracks_json(self) -> list[dict[str, Any]]:
        """Every track (reported or with the reason it is not), for the analytic."""
        return [track.to_json(self.filters.for_label(track.label)) for track in self.close()]


def _box(values: Sequence[float]) -> Box:
    return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))


def track_frames(
    frames: Iterable[Mapping[str, Any]],
    track: TrackSettings,
    filters: FilterSettings,
    frame_size: tuple[int, int],
) -> list[dict[str, Any]]:
    """Tracks of an analytic's `frames`, re-tagging its detections (replays another setting on the same
    detections, as the accuracy benchmark does)."""
    tracker = Tracker(track, filters, frame_size)
    for frame in frames:
        if frame["inferred"]:
            tracker.update(float(frame["t"]), int(frame["index"]), frame["detections"])
        else:
            tracker.hold(float(frame["t"]))
    return tracker.tracks_json()
