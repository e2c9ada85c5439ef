"""OpenCV's built-in HOG people detector: the fallback that needs no weights file at all.

It finds only upright people and is slow, but a box with no model configured (or offline) still
produces useful analytics instead of crashing; the scan node reports itself `degraded`.
"""

from __future__ import annotations

import cv2
import numpy as np

from nodes.scan.detectors.base import Detection, Frame, finish, thread_count

_WORK_WIDTH = 640  # HOG cost grows with pixels; people are 128 px tall windows at this scale


class HogDetector:
    """Daimler/INRIA-trained linear SVM over HOG features; SVM margins are mapped to (0, 1) by a sigmoid."""

    name = "hog"
    model = "opencv-hog-people"

    def __init__(self, *, confidence: float, threads: int) -> None:
        cv2.setNumThreads(thread_count(threads))
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))
        self._confidence = confidence
        self.labels = ["person"]
        self.runtime = f"opencv {cv2.__version__}"

    def detect(self, frame_bgr: Frame) -> list[Detection]:
        scale = min(1.0, _WORK_WIDTH / frame_bgr.shape[1])
        image = cv2.resize(frame_bgr, None, fx=scale, fy=scale) if scale < 1.0 else frame_bgr
        rects, weights = self._hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(rects) == 0:
            return []
        rects = np.asarray(rects, dtype=np.float32) / scale
        scores = (1.0 / (1.0 + np.exp(-np.asarray(weights, dtype=np.float32).reshape(-1)))).astype(np.float32)
        keep = scores >= self._confidence
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)[keep]
        return finish(boxes, scores[keep], np.zeros(int(keep.sum()), dtype=int), self.labels, frame_bgr.shape)
