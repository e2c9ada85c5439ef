"""Reading a camera stream with OpenCV's FFmpeg backend and writing it into segments, bus aside (the
dvr node, nodes/dvr/node.py, retries, alerts and announces)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
from cv2.typing import MatLike

from bus.fsutil import fsync_dir
from nodes.dvr.settings import DvrSettings

Frame = MatLike


FALLBACK_FPS = 25.0  # when a live stream reports no usable frame rate


class StreamError(Exception):
    """The stream could not be opened or stopped delivering frames; the message says which."""


def redact(url: str) -> str:
    """The URL without its password, for logs, health and alerts."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def segment_name(camera: str, start: datetime) -> str:
    """`<camera>-<UTC stamp with ms>.mp4`: sorts by time, unique per camera."""
    return f"{camera}-{start:%Y%m%dT%H%M%S}{start.microsecond // 1000:03d}Z.mp4"


@dataclass
class Stream:
    """An open capture and the first frame it delivered (proof that it really works)."""

    capture: cv2.VideoCapture
    first: Frame | None
    fps: float
    size: tuple[int, int]  # width, height

    def release(self) -> None:
        self.capture.release()


def open_stream(url: str, open_timeout_s: float, read_timeout_s: float) -> Stream:
    """Open `url` with the FFmpeg backend and read one frame (blocking: run in a thread)."""
    source: str | int = int(url) if url.isdigit() else url  # a bare number is a local camera index
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        round(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        round(read_timeout_s * 1000),
    ]
    capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        capture.release()
        raise StreamError(
            "cannot open the stream (unreachable, refused, not a video, or authentication failed)"
        )
    ok, frame = capture.read()
    if not ok:
        capture.release()
        raise StreamError("the stream opened but delivered no frame")
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    if not 1.0 <= fps <= 240.0:
        fps = FALLBACK_FPS
    height, width = frame.shape[:2]
    return Stream(capture, frame, fps, (width, height))


@dataclass(frozen=True)
class Segment:
    path: Path | None  # the finished segment, or None when no frame was written
    frames: int
    error: str | None  # why the stream stopped, when it did


def record_segment(
    stream: Stream, directory: Path, camera: str, settings: DvrSettings, stopping: Callable[[], bool]
) -> Segment:
    """Write up to `segment_s` seconds of the stream as one file, finalised by rename (blocking).

    A segment cut short by a drop or a stop is kept if it holds frames, else removed.
    """
    start = datetime.now(UTC)
    final = directory / segment_name(camera, start)
    suffix = 1
    while final.exists():
        final = directory / f"{final.stem.split('~')[0]}~{suffix}{final.suffix}"
        suffix += 1
    temp = directory / f".{final.stem}.tmp{final.suffix}"  # a dotfile: ingest never takes it
    writer = cv2.VideoWriter(str(temp), cv2.VideoWriter.fourcc(*settings.codec), stream.fps, stream.size)
    if not writer.isOpened():
        temp.unlink(missing_ok=True)
        raise OSError(f"cannot write {temp} with codec {settings.codec!r}")
    target = max(1, round(settings.segment_s * stream.fps))
    frames, error = 0, None
    try:
        while frames < target and not stopping():
            frame, stream.first = stream.first, None
            if frame is None:
                ok, frame = stream.capture.read()
                if not ok:
                    error = "connection lost: the stream stopped delivering frames"
                    break
            if (frame.shape[1], frame.shape[0]) != stream.size:  # the camera changed resolution
                frame = cv2.resize(frame, stream.size)
            writer.write(frame)
            frames += 1
    finally:
        writer.release()
    if not frames:
        temp.unlink(missing_ok=True)
        return Segment(None, 0, error)
    os.replace(temp, final)
    fsync_dir(directory)
    return Segment(final, frames, error)
