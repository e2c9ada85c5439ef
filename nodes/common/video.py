"""Reading video as cameras and DVRs write it: a damaged frame costs that frame, not the rest.

OpenCV's `grab()` returns False both at the end of a stream and when the decoder refuses one
damaged packet; a later `grab()` goes on with the next packet. `FrameReader` tells the two apart
by trying again a bounded number of times, and counts what it skipped. A refused packet keeps its
frame's place in the timeline, so the times of the frames after it stay right. Ingest, scan and
the thumbnails read frames the same way, so a frame index means the same frame to all of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2

# Consecutive refused packets taken as the end of the stream: 10 s at 25 fps. A grab() at the end
# costs microseconds, so trying this often there is cheap.
MAX_REFUSED_RUN = 250
# A video with fewer of its frames decodable is quarantined rather than signed: a LogLine that says
# "nothing seen" about a video mostly unreadable would mislead. Container frame counts can be
# estimates (duration x fps), which this margin also absorbs.
MIN_DECODED_FRACTION = 0.9


@contextlib.contextmanager
def capture_of(path: Path) -> Iterator[cv2.VideoCapture]:
    """A capture on `path` opened through /proc/self/fd: OpenCV gets an ASCII name whatever the
    file is called (it crashes on a name that is not UTF-8, and never sees `$`, `*` or quotes)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    capture = cv2.VideoCapture()
    try:
        capture.open(f"/proc/self/fd/{fd}", cv2.CAP_FFMPEG)
        yield capture
    finally:
        capture.release()
        os.close(fd)


@dataclass(frozen=True)
class Decoded:
    """How much of a stream decoded; `expected` is the container's frame count (0: it has none)."""

    expected: int
    decoded: int
    refused: int  # packets the decoder refused between decodable frames

    @property
    def frames(self) -> int:
        """The stream's length in frames: the container's count, or what was read when that is more."""
        return max(self.expected, self.decoded + self.refused)

    @property
    def damaged(self) -> int:
        """Frames that did not decode: refused by the decoder, or dropped by the demuxer (damaged
        container data) and so missing from the container's count."""
        return self.frames - self.decoded

    def problem(self) -> str | None:
        """Why this stream is too damaged to sign, or None."""
        if self.decoded == 0:
            return "no decodable frames"
        if self.decoded < MIN_DECODED_FRACTION * self.frames:
            return (
                f"only {self.decoded} of {self.frames} frames decode "
                f"({self.refused} refused by the decoder, the rest missing: damaged or cut short)"
            )
        return None


class FrameReader:
    """Sequential grab() over damaged packets; `index` is the frame slot of the last grabbed frame."""

    def __init__(self, capture: cv2.VideoCapture) -> None:
        self.capture = capture
        self.index = -1
        self.decoded = 0
        self.refused = 0

    def grab(self) -> bool:
        """Advance to the next decodable frame; False at the end of the stream."""
        for run in range(MAX_REFUSED_RUN + 1):
            if self.capture.grab():
                self.refused += run
                self.decoded += 1
                self.index += run + 1
                return True
        return False

    def result(self, expected: int) -> Decoded:
        return Decoded(expected=max(expected, 0), decoded=self.decoded, refused=self.refused)
