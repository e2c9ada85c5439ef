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
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bus.alerts import Severity
from bus.backoff import Backoff
from bus.config import ConfigError, Settings
from bus.envelope import utc_now
from bus.node import Node
from nodes.dvr.settings import DvrSettings
from nodes.dvr.stream import Stream, StreamError, open_stream, record_segment, redact

log = logging.getLogger("vv.dvr")

T = TypeVar("T")


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
