"""Tracks and thumbnails from the frames scan decodes anyway, so nothing decodes the video a second time.

Seeking back into a video for each thumbnail took summarize 78 s for 651 thumbnails of an 80 s
clip. Instead, while the scan runs, the frame of each track's best sighting is kept in memory (the
decoder hands out a new array per frame, so keeping one is a reference, not a copy); frames of
tracks that ended unreported are let go at once, and of the reported ones that ended only the
`track.thumbnails` best are kept. Memory is thus bounded by the objects in view plus the cap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2

from bus.artifacts import ArtifactRef, write_artifact
from nodes.scan.detectors.base import Frame
from nodes.scan.settings import FilterSettings, TrackSettings
from nodes.scan.tracking import Track, Tracker

THUMBNAIL_MARGIN = 0.1  # context around the box, as a fraction of its size
JPEG_QUALITY = 85
CROP_MAX_SIDE = 640
FRAME_MAX_SIDE = 1280
BOX_COLOUR = (0, 200, 255)  # BGR: the box drawn on the full-frame thumbnail


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "object"


def _jpeg(image: Frame, max_side: int) -> bytes:
    """JPEG, scaled down to `max_side` on its long side: a thumbnail of a 4K frame is for a glance."""
    scale = max_side / max(image.shape[:2])
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError("OpenCV cannot encode a JPEG thumbnail")
    return bytes(jpeg.tobytes())


def crop(frame: Frame, box: tuple[float, float, float, float]) -> Frame:
    """The box with a margin of context, clipped to the frame."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * THUMBNAIL_MARGIN, (y2 - y1) * THUMBNAIL_MARGIN
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(width, int(x2 + mx + 1)), min(height, int(y2 + my + 1))
    return frame[top : max(bottom, top + 1), left : max(right, left + 1)]


class ObjectTracker:
    """The tracker plus the best frame of each track that may still get a thumbnail."""

    def __init__(self, track: TrackSettings, filters: FilterSettings, frame_size: tuple[int, int]) -> None:
        self.tracker = Tracker(track, filters, frame_size)
        self.cap = track.thumbnails
        self.best_frames: dict[int, Frame] = {}
        self._ended_seen = 0

    def frame(self, t: float, index: int, image: Frame, detections: list[dict[str, Any]] | None) -> None:
        """One sampled frame; `detections` None when the detector skipped it. Tags detections with `track`."""
        if detections is None:
            self.tracker.hold(t)
            return
        self.tracker.update(t, index, detections)
        if self.cap:
            for track in self.tracker.improved:
                self.best_frames[track.id] = image
            self._release()

    def _release(self) -> None:
        """Let go of frames no thumbnail will be cut from."""
        newly_ended = self.tracker.ended[self._ended_seen :]
        self._ended_seen = len(self.tracker.ended)
        for track in newly_ended:
            if not self.tracker.reported(track):
                self.best_frames.pop(track.id, None)
        kept = [tr for tr in self.tracker.ended if tr.id in self.best_frames]
        for track in sorted(kept, key=_rank)[self.cap :]:
            del self.best_frames[track.id]

    def finish(self, thumbnails_dir: Path | None) -> list[dict[str, Any]]:
        """Every track for the analytic; with a directory, the best reported ones get thumbnails there."""
        documents = self.tracker.tracks_json()
        tracks = self.tracker.ended
        if thumbnails_dir is None or not self.cap:
            return documents
        chosen = sorted(
            (tr for tr in tracks if self.tracker.reported(tr) and tr.id in self.best_frames), key=_rank
        )
        by_id = {document["id"]: document for document in documents}
        written: set[str] = set()
        for track in chosen[: self.cap]:
            refs = self._write(thumbnails_dir, track, self.best_frames[track.id])
            by_id[track.id]["thumbnail"] = refs
            written.update(Path(ref["path"]).name for ref in refs.values())
        if thumbnails_dir.is_dir():  # a re-scan: thumbnails of an earlier attempt's tracks go
            for stale in thumbnails_dir.glob("track-*.jpg"):
                if stale.name not in written:
                    stale.unlink()
        self.best_frames.clear()
        return documents

    @staticmethod
    def _write(directory: Path, track: Track, image: Frame) -> Mapping[str, ArtifactRef]:
        name = f"track-{track.id:04d}-{_slug(track.label)}"
        full = image.copy()
        x1, y1, x2, y2 = (round(v) for v in track.best_box)
        cv2.rectangle(full, (x1, y1), (x2, y2), BOX_COLOUR, 2)
        return {
            "crop": write_artifact(
                directory, f"{name}.jpg", _jpeg(crop(image, track.best_box), CROP_MAX_SIDE)
            ),
            "frame": write_artifact(directory, f"{name}-frame.jpg", _jpeg(full, FRAME_MAX_SIDE)),
        }


def _rank(track: Track) -> tuple[float, int]:
    """Best sighting first; the older track wins a tie."""
    return (-track.best_confidence, track.id)
