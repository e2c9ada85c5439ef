"""The dvr node's `[dvr]` settings: the stream, its segments, retries and alerts."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import section


@section("dvr")
@dataclass(frozen=True)
class DvrSettings:
    url: str = ""  # RTSP/HTTP URL or a device path, read with OpenCV's FFmpeg backend
    camera: str = "cam1"  # segment names: input/<camera>-<UTC stamp>.mp4
    segment_s: float = 60.0
    codec: str = "mp4v"  # fourcc of the written segments
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    error_after_attempts: int = 5  # alert.error after this many failed attempts in a row
    critical_after_s: float = 900.0  # alert.critical when the stream is down this long
