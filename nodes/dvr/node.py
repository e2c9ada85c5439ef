"""The dvr node: records a camera or DVR stream into segment files that ingest picks up from input/.

The stream (RTSP, HTTP, a device) is read with OpenCV's FFmpeg backend in a worker thread and
written segment by segment to `input/.<name>.tmp.mp4`, renamed to `input/<camera>-<UTC stamp>.mp4`
once closed, so ingest never sees a half-written segment. When the stream is lost it retries with
capped exponential backoff, raises `alert.error` after `error_after_attempts` failed attempts and
`alert.critical` once down for `critical_after_s`, and resolves both when the stream returns. The
firing alerts are kept in the node's state directory: one raised before a restart is resolved after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import cv2
from cv2.typing import MatLike

from bus.alerts import Severity
from bus.backoff import Backoff
from bus.config import ConfigError, Settings
from bus.envelope import utc_now
from bus.fsutil import fsync_dir
from bus.node import Node
from nodes.dvr.settings import DvrSettings

log = logging.getLogger("vv.dvr")

Frame = MatLike
T = TypeVar("T")
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


class DvrNode(Node):
    """Records `dvr.url` into `input/` segment by segment, surviving the stream going and coming back."""

    name = "dvr"

    def __init__(self, settings: Settings, instance: str = "") -> None:
        super().__init__(settings, instance)
        cfg = settings.section(DvrSettings)
        if not cfg.url:
            raise ConfigError("dvr.url: not set (an rtsp://, http:// URL, a device path or a camera index)")
        if len(cfg.codec) != 4:
            raise ConfigError(f"dvr.codec: {cfg.codec!r} is not a four-character code such as 'mp4v'")
        if not cfg.segment_s > 0 or not cfg.retry_min_s > 0 or cfg.retry_max_s < cfg.retry_min_s:
            raise ConfigError(
                "dvr.segment_s and dvr.retry_min_s must be > 0, dvr.retry_max_s >= dvr.retry_min_s"
            )
        if cfg.error_after_attempts < 1:
            raise ConfigError("dvr.error_after_attempts: must be at least 1")
        self.cfg = cfg
        self.camera = cfg.camera
        self.url = redact(cfg.url)
        self.state = "starting"
        self.segments = 0
        self.frames = 0
        self.failed_attempts = 0
        self.down_since: tuple[str, float] | None = None  # (UTC, monotonic)
        self.last_error = ""
        self.last_segment = ""

    def health_details(self) -> dict[str, Any]:
        return {
            "stream": self.url,
            "camera": self.camera,
            "state": self.state,
            "segments": self.segments,
            "frames": self.frames,
            "failed_attempts": self.failed_attempts,
            "down_since": self.down_since[0] if self.down_since else None,
            "last_error": self.last_error,
            "last_segment": self.last_segment,
        }

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        """Run blocking capture work in a thread; on cancellation, let it finish (it owns the capture)."""
        work = asyncio.ensure_future(asyncio.to_thread(func, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await work
            raise

    async def background(self) -> None:
        self.paths.input.mkdir(parents=True, exist_ok=True)
        backoff = Backoff(self.cfg.retry_min_s, self.cfg.retry_max_s)
        while not self.stopping:
            try:
                stream = await self._in_thread(
                    open_stream, self.cfg.url, self.cfg.open_timeout_s, self.cfg.read_timeout_s
                )
            except StreamError as exc:
                await self._attempt_failed(str(exc))
                await self.sleep(backoff.next_delay())
                continue
            await self._stream_up(stream)
            connected_at = time.monotonic()
            try:
                reason = await self._record(stream)
            finally:
                stream.release()
            if reason is None:  # stopping
                return
            if time.monotonic() - connected_at >= self.cfg.retry_max_s:
                backoff.reset()  # a stream that only flaps keeps backing off
            await self._attempt_failed(reason)
            await self.sleep(backoff.next_delay())

    async def _record(self, stream: Stream) -> str | None:
        """Record segments until the stream fails (the reason) or the node stops (None)."""
        while not self.stopping:
            try:
                segment = await self._in_thread(
                    record_segment, stream, self.paths.input, self.camera, self.cfg, lambda: self.stopping
                )
            except OSError as exc:
                return f"cannot write segments: {exc}"
            if segment.path is not None:
                self.segments += 1
                self.frames += segment.frames
                self.last_segment = segment.path.name
                log.info("segment %s: %d frames", segment.path.name, segment.frames)
            if segment.error:
                return segment.error
        return None

    async def _stream_up(self, stream: Stream) -> None:
        log.info("recording %s (%dx%d at %.1f fps)", self.url, *stream.size, stream.fps)
        back = (
            f"after {time.monotonic() - self.down_since[1]:.0f}s down"
            if self.down_since is not None
            else "(it went down before this node restarted)"
        )
        for key in self.alerts.firing("stream:"):
            await self.alerts.resolve(key, f"{self.camera} ({self.url}): the stream is back {back}")
        self.failed_attempts, self.down_since, self.state = 0, None, "recording"
        self.set_status("online")

    async def _attempt_failed(self, reason: str) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = (utc_now(), now)
        self.failed_attempts += 1
        self.last_error, self.state = reason, "down"
        down_s = now - self.down_since[1]
        log.warning("stream %s: %s (attempt %d, down %.0fs)", self.url, reason, self.failed_attempts, down_s)
        self.set_status(
            "degraded",
            f"stream down since {self.down_since[0]}: {reason} ({self.failed_attempts} failed attempts)",
        )
        details = f"{reason}; {self.failed_attempts} failed attempts, down for {down_s:.0f}s"
        if self.failed_attempts >= self.cfg.error_after_attempts:
            await self._alert("ERROR", details)
        if down_s >= self.cfg.critical_after_s:
            await self._alert("CRITICAL", details)

    async def _alert(self, severity: Severity, details: str) -> None:
        """Fire once per severity until the stream is back (`_stream_up` resolves it)."""
        await self.alerts.fire(
            f"stream:{severity}",
            severity,
            "Camera stream down" if severity == "ERROR" else "Camera stream down for too long",
            f"{self.camera} ({self.url}): {details}",
            context={"stream": self.url, "camera": self.camera},
            actions=[
                "Check that the camera or DVR is powered and reachable from this device",
                "Check the URL and the credentials in dvr.url",
                f"Nothing is recorded meanwhile; segments resume by themselves (retry up to every {self.cfg.retry_max_s:.0f}s)",
            ],
        )
