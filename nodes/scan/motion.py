"""A cheap motion gate (Frigate's trick): skip inference on sampled frames where nothing changed.

The test costs about 0.1 ms (a 160-px-wide gray thumbnail, absdiff, blur, threshold),
against tens of milliseconds for a detector pass. The first frame always counts as motion and the
detector still runs every `max_skip_s`, so an object that sits still from the start is found.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2

from nodes.scan.detectors.base import Frame

_WIDTH = 160
_PIXEL_DELTA = 25  # gray levels: below this a pixel is sensor noise or compression, not change


@dataclass(frozen=True)
class GateDecision:
    motion: bool
    changed: float  # fraction of thumbnail pixels that changed
    infer: bool


class MotionGate:
    """Compares each sampled frame with the previous sampled one; decides whether to run the detector."""

    def __init__(self, threshold: float, max_skip_s: float, *, enabled: bool = True) -> None:
        self.threshold = threshold
        self.max_skip_s = max_skip_s
        self.enabled = enabled
        self._previous: Frame | None = None
        self._last_inferred_t: float | None = None

    def _thumbnail(self, frame: Frame) -> Frame:
        height, width = frame.shape[:2]
        size = (_WIDTH, max(1, round(height * _WIDTH / width)))
        # Nearest-neighbour sampling is 15x cheaper than INTER_AREA; the blur below absorbs its aliasing.
        gray = cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST), cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(gray, (5, 5), 0)

    def changed_fraction(self, frame: Frame) -> float:
        """Fraction of pixels that differ from the previous call's frame (1.0 for the first frame)."""
        thumb = self._thumbnail(frame)
        previous, self._previous = self._previous, thumb
        if previous is None or previous.shape != thumb.shape:
            return 1.0
        _, mask = cv2.threshold(cv2.absdiff(thumb, previous), _PIXEL_DELTA, 255, cv2.THRESH_BINARY)
        return float(cv2.countNonZero(mask)) / mask.size

    def step(self, frame: Frame, t: float) -> GateDecision:
        """Decide for the sampled frame at `t` seconds; frames must come in time order."""
        changed = self.changed_fraction(frame)
        motion = changed > self.threshold
        overdue = self._last_inferred_t is None or t - self._last_inferred_t >= self.max_skip_s
        infer = not self.enabled or motion or overdue
        if infer:
            self._last_inferred_t = t
        return GateDecision(motion=motion, changed=changed, infer=infer)
