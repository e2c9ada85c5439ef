"""What ingest does to one file, bus aside: which names are videos, whether a file is complete and
decodes, the ledger of videos taken in, and `ingest_file` (store, or quarantine) run in a thread.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2

from bus.config import VVPaths
from bus.envelope import utc_now
from bus.fsutil import atomic_write_bytes, atomic_write_json, iter_open_fds, sha256_file
from bus.inputs import shown
from nodes.common.files import TEMP_ROOM, fit_name, place_file
from nodes.common.quarantine import UnreadableVideo, quarantine
from nodes.common.video import FrameReader, capture_of

IGNORED_SUFFIXES = (".tmp", ".part")  # writers use temp + rename; these are never complete files


# What cameras, DVRs and NVRs write (any case): MP4/MOV, Matroska/WebM, AVI (MS-MPEG4, MJPEG, ...),
# MPEG-TS, raw H.264/H.265 elementary streams, MPEG-PS, FLV, ASF/WMV, 3GP. Anything else in input/
# (a DVR's .idx or .jpg beside its videos) is left alone with one alert, never probed: FFmpeg would
# happily read a JPEG snapshot as a one-frame "video".
VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".h264",
        ".264",
        ".h265",
        ".265",
        ".hevc",
        ".mpg",
        ".mpeg",
        ".flv",
        ".asf",
        ".wmv",
        ".3gp",
    ]
)


def is_candidate(name: str) -> bool:
    """Dotfiles and temp names are files still being written by someone else."""
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


def is_video_name(name: str) -> bool:
    """The name ends in one of VIDEO_SUFFIXES, in any case (DVRs often write CH01.AVI)."""
    return os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES


def video_id_of(sha256: str) -> str:
    """The same bytes are the same video, wherever and whenever they arrive."""
    return sha256[:32]


class StillWriting(Exception):
    """The file looks unfinished (it does not decode yet and was written moments ago): look again later."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return round(self.frames / self.fps, 3)


def probe_video(path: Path) -> VideoInfo:
    """Read the stream's figures and check that it decodes from its first frame to its last.

    The last frame is reached by a seek. Where that fails (a raw H.264 stream, an MPEG-TS with one
    keyframe in a long GOP, a damaged stretch on the way) or the container has no frame count (a raw
    stream), every frame is decoded instead, which also counts them; too few decodable frames
    (nodes.common.video's rule) quarantine the file.
    """
    if path.stat().st_size == 0:
        raise UnreadableVideo("EmptyFile", "the file is empty (0 bytes)")
    with capture_of(path) as cap:
        if not cap.isOpened():
            raise UnreadableVideo("UnreadableVideo", "OpenCV/FFmpeg cannot open it as a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not 0 < fps < math.inf or width <= 0 or height <= 0:
            raise UnreadableVideo(
                "BadMetadata", f"no usable frame rate or size (fps {fps}, {width}x{height})"
            )
        if not cap.read()[0]:
            raise UnreadableVideo("UndecodableVideo", "cannot decode the first frame")
        if frames == 1 or (frames > 1 and cap.set(cv2.CAP_PROP_POS_FRAMES, frames - 1) and cap.read()[0]):
            return VideoInfo(fps=fps, frames=frames, width=width, height=height)
    with capture_of(path) as cap:
        reader = FrameReader(cap)
        while reader.grab():
            pass
    decoded = reader.result(frames)
    problem = decoded.problem()
    if problem is not None:
        raise UnreadableVideo("DamagedVideo" if decoded.refused else "TruncatedVideo", problem)
    return VideoInfo(fps=fps, frames=decoded.frames, width=width, height=height)


def held_open(paths: Collection[Path], proc: Path = Path("/proc")) -> set[Path]:
    """Those of `paths` that some process holds open, to write or to read, from one pass over
    /proc/*/fd: a copy in progress (cp, rsync, smbd) keeps its file open between its pauses.

    Only the fds of processes we may inspect are seen (all of them as root, our user's otherwise);
    without /proc the answer is empty and size/mtime stability alone decides.
    """
    wanted = {os.path.realpath(p): p for p in paths}
    found: set[Path] = set()
    if not wanted:
        return found
    for fd_path in iter_open_fds(proc):
        try:
            target = os.readlink(fd_path)
        except OSError:
            continue
        if target in wanted:
            found.add(wanted[target])
    return found


class Ledger:
    """Which videos were taken in, shared by the node and `vv ingest`; it outlives cleanup of storage.

    `begin` records the `video.new` data before the file moves and `commit` marks it done after the
    event is in the outbox, so a crash in between is repaired at start (`pending`), never lost.
    """

    def __init__(self, root: Path) -> None:
        self.done_dir = root / "done"
        self.pending_dir = root / "pending"

    def _done(self, video_id: str) -> Path:
        return self.done_dir / video_id[:2] / video_id

    def _pending(self, video_id: str) -> Path:
        return self.pending_dir / f"{video_id}.json"

    def known(self, video_id: str) -> bool:
        """Stored and announced. A pending entry is not: its file may still be the only copy."""
        return self._done(video_id).exists()

    def begin(self, video_id: str, data: dict[str, Any]) -> None:
        atomic_write_json(self._pending(video_id), data)

    def commit(self, video_id: str) -> None:
        atomic_write_bytes(self._done(video_id), b"")
        self.discard(video_id)

    def discard(self, video_id: str) -> None:
        self._pending(video_id).unlink(missing_ok=True)

    def pending(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.pending_dir.glob("*.json")):
            data: dict[str, Any] = json.loads(path.read_text())
            yield data


def ledger_for(paths: VVPaths) -> Ledger:
    return Ledger(paths.state / "nodes" / "ingest" / "ledger")


def stored_before(paths: VVPaths, video_id: str) -> bool:
    """A `storage/YYYY/MM/DD/<video_id>/` directory exists (the ledger may have been wiped)."""
    return any(paths.storage.glob(f"*/*/*/{video_id}"))


@dataclass
class Outcome:
    """What happened to one file; the caller announces it on the bus."""

    kind: Literal["ingested", "duplicate", "quarantined"]
    path: Path  # where the file was
    video_id: str
    data: dict[str, Any] = field(default_factory=dict)  # video.new or video.quarantined data
    error: UnreadableVideo | None = None


def ingest_file(
    path: Path,
    paths: VVPaths,
    ledger: Ledger,
    *,
    copy: bool = False,
    source: str = "input",
    component: str = "ingest",
    grace_s: float = 0.0,
) -> Outcome:
    """Hash, dedupe, probe, then store or quarantine one complete file (blocking: run in a thread).

    A file that does not decode and was written less than `grace_s` ago raises StillWriting: its
    writer may only have paused (the node passes a grace for files written in place).
    """
    digest = sha256_file(path)
    video_id = video_id_of(digest)
    if ledger.known(video_id) or stored_before(paths, video_id):
        if not copy:
            path.unlink()
        return Outcome("duplicate", path, video_id)
    try:
        info = probe_video(path)
    except UnreadableVideo as exc:
        age = time.time() - path.stat().st_mtime
        if age < grace_s:
            raise StillWriting(f"{path.name} does not decode yet ({exc}); written {age:.0f}s ago") from exc
        data = quarantine(path, paths, exc, digest, copy=copy, component=component)
        return Outcome("quarantined", path, video_id_of(digest), data, exc)
    dest = paths.storage_for(video_id) / fit_name(shown(path.name), TEMP_ROOM)
    data = {
        "video": {
            "id": video_id,
            "path": str(dest),
            "sha256": digest,
            "bytes": path.stat().st_size,
            "duration_s": info.duration_s,
            "fps": info.fps,
            "frames": info.frames,
            "width": info.width,
            "height": info.height,
        },
        "original_name": shown(path.name),
        "ingested_at": utc_now(),
        "source": source,
    }
    ledger.begin(video_id, data)
    try:
        place_file(path, dest, copy=copy)
    except BaseException:
        ledger.discard(video_id)  # not stored: the file in input/ is still the video, retried later
        raise
    return Outcome("ingested", path, video_id, data)
