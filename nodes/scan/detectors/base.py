"""The one small interface every detector backend implements, plus the helpers they share.

Backends differ only in how a frame becomes raw boxes; labels, thresholds, clipping and
class-aware NMS are done here once so every backend reports detections the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import numpy.typing as npt
from cv2.typing import MatLike

Box = tuple[float, float, float, float]
Frame = MatLike  # a BGR image as OpenCV returns it
FloatArray = npt.NDArray[np.float32]

NMS_IOU = 0.45


class DetectorUnavailable(Exception):
    """A backend cannot be set up; the message names the setting to fix (used as the degradation reason)."""


@dataclass(frozen=True)
class Detection:
    """One object found in a frame; `box` is (x1, y1, x2, y2) in pixels of the input frame."""

    label: str
    confidence: float
    box: Box

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "box": [round(v, 1) for v in self.box],
        }


@runtime_checkable
class Detector(Protocol):
    """What the scan loop needs from a backend: a name for the artifact and one call per frame."""

    @property
    def name(self) -> str:
        """The backend: darknet, onnx, ultralytics, hog."""

    @property
    def model(self) -> str:
        """The model the backend loaded, as the operator named it."""

    @property
    def runtime(self) -> str:
        """The inference engine and its version, for the artifact and benchmarks."""

    @property
    def labels(self) -> Sequence[str]:
        """Class names, indexed by class id."""

    def detect(self, frame_bgr: Frame) -> list[Detection]: ...


@runtime_checkable
class BatchDetector(Detector, Protocol):
    """A backend that infers several frames in one call (the ONNX engines)."""

    def detect_batch(self, frames: Sequence[Frame]) -> list[list[Detection]]: ...


def detect_frames(detector: Detector, frames: Sequence[Frame]) -> list[list[Detection]]:
    """Detections per frame: in one batched call where the backend has one, else frame by frame."""
    if isinstance(detector, BatchDetector):
        return detector.detect_batch(frames)
    return [detector.detect(frame) for frame in frames]


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def agreement(
    reference: Sequence[Sequence[Detection]],
    other: Sequence[Sequence[Detection]],
    *,
    min_iou: float = 0.5,
    labels: bool = True,
) -> float:
    """Share of `reference` detections that `other` finds in the same frame too: IoU >= min_iou and,
    with `labels`, the same label; each match used once (greedy, best confidence first). How an int8
    model or another engine is judged against fp32, frame by frame (lists of per-frame detections)."""
    matched = total = 0
    for wanted, found in zip(reference, other, strict=True):
        unused = list(found)
        total += len(wanted)
        for ref in wanted:
            candidates = [
                (iou(ref.box, o.box), i) for i, o in enumerate(unused) if not labels or o.label == ref.label
            ]
            best = max(candidates, default=(0.0, -1))
            if best[0] >= min_iou:
                unused.pop(best[1])
                matched += 1
    return matched / total if total else 1.0


def thread_count(threads: int) -> int:
    """`scan.threads`, with 0 meaning one per core."""
    return threads if threads > 0 else (os.cpu_count() or 1)


def read_labels(path: Path) -> list[str]:
    """A class-names file, one per line (Darknet's coco.names format)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DetectorUnavailable(f"scan.labels: cannot read {path}: {exc.strerror or exc}") from exc
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise DetectorUnavailable(f"scan.labels: {path} holds no class names")
    return labels


def label_for(labels: Sequence[str], class_id: int) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else f"class{class_id}"


def finish(
    boxes_xyxy: FloatArray,
    scores: FloatArray,
    class_ids: npt.NDArray[np.integer[Any]],
    labels: Sequence[str],
    frame_shape: tuple[int, ...],
    iou: float = NMS_IOU,
) -> list[Detection]:
    """Clip boxes to the frame, run class-aware NMS, and turn the survivors into detections."""
    if len(scores) == 0:
        return []
    height, width = frame_shape[:2]
    boxes = boxes_xyxy.astype(np.float32, copy=True)
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.astype(float).tolist(), class_ids.astype(int).tolist(), 0.0, iou
    )
    order = sorted(np.asarray(keep, dtype=int).reshape(-1).tolist(), key=lambda i: -float(scores[i]))
    return [
        Detection(
            label=label_for(labels, int(class_ids[i])),
            confidence=float(scores[i]),
            box=(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
        )
        for i in order
        if boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]
    ]
