"""Darknet YOLO through OpenCV's DNN module: no extra dependency, runs on any OpenCV 4.x box."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from nodes.scan.detectors.base import Detection, DetectorUnavailable, Frame, finish, thread_count


class DarknetDetector:
    """YOLO (v3/v4/fastest) Darknet weights; rows are (cx, cy, w, h, objectness, class scores...)."""

    name = "darknet"

    def __init__(
        self,
        weights: Path,
        cfg: Path,
        labels: Sequence[str],
        *,
        imgsz: int,
        confidence: float,
        threads: int,
    ) -> None:
        if imgsz % 32:
            raise DetectorUnavailable(
                f"scan.imgsz: {imgsz} is not a multiple of 32, which Darknet YOLO needs"
            )
        cv2.setNumThreads(thread_count(threads))
        try:
            self._net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        except cv2.error as exc:
            raise DetectorUnavailable(
                f"scan.model: OpenCV cannot load Darknet {weights} with {cfg}: {exc}"
            ) from exc
        self._net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self._outputs = self._net.getUnconnectedOutLayersNames()
        self._imgsz = imgsz
        self._confidence = confidence
        self.model = weights.name
        self.runtime = f"opencv {cv2.__version__}"
        self.labels = list(labels)

    def detect(self, frame_bgr: Frame) -> list[Detection]:
        height, width = frame_bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(
            frame_bgr, 1 / 255.0, (self._imgsz, self._imgsz), swapRB=True, crop=False
        )
        self._net.setInput(blob)
        rows = np.concatenate([out.reshape(-1, out.shape[-1]) for out in self._net.forward(self._outputs)])
        class_scores = rows[:, 5:]  # OpenCV's region layer already multiplies them by objectness
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), class_ids]
        keep = scores >= self._confidence
        centre = rows[keep, :4] * np.array([width, height, width, height], dtype=np.float32)
        boxes = np.concatenate([centre[:, :2] - centre[:, 2:] / 2, centre[:, :2] + centre[:, 2:] / 2], axis=1)
        return finish(boxes, scores[keep], class_ids[keep], self.labels, frame_bgr.shape)
