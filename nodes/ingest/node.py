"""The ingest node: turns files dropped in `input/` into stored videos announced by `video.new`.

A file named as a video (VIDEO_SUFFIXES) is taken only once complete (two looks agree on size and
mtime, and no process holds it open for writing); it is hashed (streamed), probed with OpenCV, and moved atomically into
`storage/YYYY/MM/DD/<video_id>/`. A file that is not a readable video goes to `corrupted/` with a
`<name>.meta.json`, an `alert.error` and `video.quarantined`. Nothing is deleted except an exact
duplicate of a video already taken in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import math
import os
import shutil
import stat
import struct
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2

from bus.config import Settings, VVPaths
from bus.envelope import Event, utc_now
from bus.fsutil import CHUNK, atomic_write_bytes, atomic_write_json, fsync_dir, iter_open_fds, sha256_file
from bus.inputs import kind_of, shown
from bus.node import Node, on
from nodes.common.video import FrameReader, capture_of

log = logging.getLogger("vv.ingest")

NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs)
META_SUFFIX = ".meta.json"
TEMP_ROOM = 14  # what a temporary name adds: ".<name>.<8 random>.tmp" (atomic writes), ".<name>.part"
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


# ----------------------------------------------------------------------------- pure functions
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


class UnreadableVideo(Exception):
    """The file is not a video OpenCV can decode from start to end; `error_type` names the case."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


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


def place_file(src: Path, dest: Path, *, copy: bool = False) -> None:
    """Move (or copy) `src` to `dest` so that `dest` is either absent or whole, across filesystems too."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            fsync_dir(dest.parent)
            fsync_dir(src.parent)
            return
    partial = dest.with_name(f".{dest.name}.part")  # fixed name: a retry after a crash overwrites it
    try:
        with src.open("rb") as reader, partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    if not copy:
        src.unlink()
        fsync_dir(src.parent)


def reserve_quarantine_name(directory: Path, name: str) -> Path:
    """A free name in `corrupted/`, claimed by creating its meta file exclusively (no overwrite, no race)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = fit_name(name, len(f"-{100_000}{META_SUFFIX}") + TEMP_ROOM)
    stem, suffix = os.path.splitext(name)
    for n in range(100_000):
        candidate = directory / (name if n == 0 else f"{stem}-{n}{suffix}")
        if candidate.exists():
            continue
        try:
            fd = os.open(meta_path_for(candidate), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"no free name for {name} in {directory}")


def meta_path_for(quarantined: Path) -> Path:
    return quarantined.with_name(quarantined.name + META_SUFFIX)


def fit_name(name: str, room: int = 0) -> str:
    """`name` with its stem cut (on a character boundary) so that `room` more bytes still fit in
    NAME_MAX: escaping lengthens a name, a quarantined one gets `-N` and `.meta.json`, and a
    255-byte name (85 CJK characters) is a legal one to arrive with."""
    excess = len(os.fsencode(name)) + room - NAME_MAX
    if excess <= 0:
        return name
    stem, suffix = os.path.splitext(name)
    encoded = os.fsencode(stem)
    return encoded[: max(0, len(encoded) - excess)].decode("utf-8", "ignore") + suffix


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
        return quarantine(path, paths, exc, digest, copy=copy, component=component)
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


def quarantine(
    path: Path,
    paths: VVPaths,
    error: UnreadableVideo,
    digest: str | None,
    *,
    copy: bool = False,
    component: str = "ingest",
    attempts: list[dict[str, str]] | None = None,
) -> Outcome:
    """Move the file to `corrupted/` beside a meta file saying where it came from and why."""
    target = reserve_quarantine_name(paths.corrupted, shown(path.name))
    meta_path = meta_path_for(target)
    try:
        place_file(path, target, copy=copy)
    except BaseException:
        meta_path.unlink(missing_ok=True)
        raise
    atomic_write_json(
        meta_path,
        {
            "original_path": shown(str(path.absolute())),
            "timestamp_corruption": utc_now(),
            "source_component": component,
            "error_type": error.error_type,
            "error_message": str(error),
            "original_hash_sha256": digest,
            **({"attempts": attempts} if attempts else {}),
        },
    )
    data = {
        "original_path": shown(str(path.absolute())),
        "quarantine_path": str(target),
        "meta_path": str(meta_path),
        "error_type": error.error_type,
        "error_message": str(error),
        "sha256": digest,
        "stage": component,
        **({"attempts": attempts} if attempts else {}),
    }
    return Outcome("quarantined", path, video_id_of(digest) if digest else "", data, error)


# ----------------------------------------------------------------------------- bus side
@dataclass
class IngestCounts:
    ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed: int = 0


async def announce(node: Node, ledger: Ledger, outcome: Outcome, counts: IngestCounts) -> None:
    """Publish what `ingest_file` did: `video.new`, or an `alert.error` plus `video.quarantined`."""
    if outcome.kind == "ingested":
        await node.emit("video.new", outcome.data, subject=outcome.video_id)
        ledger.commit(outcome.video_id)
        counts.ingested += 1
        log.info(
            "ingested %s as %s",
            shown(outcome.path.name),
            outcome.video_id,
            extra={"video": outcome.video_id},
        )
    elif outcome.kind == "duplicate":
        counts.duplicates += 1
        log.info(
            "%s is video %s, already ingested: duplicate %s",
            shown(outcome.path.name),
            outcome.video_id,
            "left in place" if outcome.path.exists() else "removed",
            extra={"video": outcome.video_id},
        )
    else:
        counts.quarantined += 1
        assert outcome.error is not None
        context = {"video": outcome.video_id} if outcome.video_id else {"path": shown(str(outcome.path))}
        await node.raise_alert(
            "ERROR",
            "Unreadable video quarantined",
            f"{shown(outcome.path.name)}: {outcome.error.error_type}: {outcome.error}; "
            f"moved to {outcome.data['quarantine_path']}",
            context={**context, "file": shown(outcome.path.name)},
            actions=[
                f"Inspect {outcome.data['meta_path']} for the reason",
                "Re-export or re-record the video at its source, then drop the new file in input/",
                "Delete the quarantined file once it is no longer needed",
            ],
        )
        await node.emit("video.quarantined", outcome.data, subject=outcome.video_id or None)


IN_MOVED_TO = 0x80
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


class DirWatch:
    """inotify on one directory through libc: any event only means "look again" (no event parsing)."""

    _MASK = 0x08 | IN_MOVED_TO | 0x100 | 0x04  # IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ATTRIB

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(directory), self._MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch({directory}) failed")
        self.fd: int = fd

    def drain(self) -> set[str]:
        """Read every pending event; returns the names renamed into the directory (IN_MOVED_TO):
        a writer that renames a finished file in has told us it is complete."""
        moved_in: set[str] = set()
        try:
            while chunk := os.read(self.fd, 65536):
                offset = 0
                while offset + _EVENT.size <= len(chunk):
                    _, mask, _, length = _EVENT.unpack_from(chunk, offset)
                    name = chunk[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                    if mask & IN_MOVED_TO and name:
                        moved_in.add(os.fsdecode(name))
                    offset += _EVENT.size + length
        except BlockingIOError:
            pass
        return moved_in

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class _Look:
    signature: tuple[int, int]  # (size, mtime_ns)
    since: float  # monotonic time the signature was first seen


@dataclass
class _Retry:
    """A file not taken yet: retried when it changes or at `at` (monotonic), whichever comes first."""

    signature: tuple[int, int]
    at: float
    delay: float


class IngestNode(Node):
    """Watches `input/`; each complete file becomes a stored video (`video.new`) or a quarantined one."""

    name = "ingest"
    produces = ("video.new", "video.quarantined")

    def __init__(self, settings: Settings, instance: str = "") -> None:
        super().__init__(settings, instance)
        self.ledger = ledger_for(self.paths)
        self.counts = IngestCounts()
        self.paused = False
        self.pause_reason = ""
        self.queued = 0  # candidate files seen in input/ at the last look
        self.waiting_open = 0  # of those, complete-looking but still held open by some process
        self.watch_mode = "polling"
        self._looks: dict[Path, _Look] = {}
        self._retry: dict[Path, _Retry] = {}  # failed (storage fault) or unfinished files
        self._refused: dict[Path, str] = {}  # entries of input/ that are not regular files, alerted once
        self._renamed_in: set[str] = set()  # names renamed into input/: complete by the writer's word
        self._wake = asyncio.Event()
        self._pause_file = self.state_dir / "paused.json"

    async def setup(self) -> None:
        self.paths.input.mkdir(parents=True, exist_ok=True)
        if self._pause_file.exists():  # a pause (disk full) outlives a restart
            self._set_paused(True, json.loads(self._pause_file.read_text()).get("reason", ""))

    @on("cmd.ingest.pause")
    async def pause(self, event: Event) -> None:
        reason = str(event.data.get("reason") or "by command")
        atomic_write_json(self._pause_file, {"reason": reason, "since": utc_now()})
        self._set_paused(True, reason)

    @on("cmd.ingest.resume")
    async def resume(self, event: Event) -> None:
        self._pause_file.unlink(missing_ok=True)
        self._set_paused(False, "")
        self._wake.set()

    def _set_paused(self, paused: bool, reason: str) -> None:
        self.paused, self.pause_reason = paused, reason
        log.info("ingest %s%s", "paused" if paused else "resumed", f": {reason}" if reason else "")
        if paused:
            self.set_status("degraded", f"paused ({reason}): new files wait in input/")
        else:
            self.set_status("online")

    def health_details(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "watch": self.watch_mode,
            "queued": self.queued,
            "waiting_open": self.waiting_open,
            "ingested": self.counts.ingested,
            "duplicates": self.counts.duplicates,
            "quarantined": self.counts.quarantined,
            "failed": self.counts.failed,
        }

    async def background(self) -> None:
        await self._recover()
        watch = self._start_watch()
        try:
            while not self.stopping:
                await self._look()
                timeout = (
                    self.settings.ingest.settle_s if self._looks else self.settings.ingest.poll_interval_s
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
        finally:
            if watch is not None:
                asyncio.get_running_loop().remove_reader(watch.fd)
                watch.close()

    def _start_watch(self) -> DirWatch | None:
        if not self.settings.ingest.inotify:
            return None
        try:
            watch = DirWatch(self.paths.input)
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            log.info(
                "inotify unavailable (%s): polling input/ every %.1fs",
                exc,
                self.settings.ingest.poll_interval_s,
            )
            return None

        def wake() -> None:
            self._renamed_in |= watch.drain()
            self._wake.set()

        asyncio.get_running_loop().add_reader(watch.fd, wake)
        self.watch_mode = "inotify"
        return watch

    async def _recover(self) -> None:
        """Finish what a crash interrupted between moving a file and announcing it."""
        for data in self.ledger.pending():
            video_id = data["video"]["id"]
            if Path(data["video"]["path"]).exists():
                log.warning("announcing %s, stored before a crash but not yet announced", video_id)
                await self.emit("video.new", data, subject=video_id)
                self.ledger.commit(video_id)
            else:  # the move never happened: the file is still in input/ and is taken again
                self.ledger.discard(video_id)

    def _scan_input(self) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
        """Video files of input/ with their (size, mtime_ns); and what is there but is not one, with why."""
        found: dict[Path, tuple[int, int]] = {}
        refused: dict[Path, str] = {}
        with os.scandir(self.paths.input) as entries:
            for entry in entries:
                if not is_candidate(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    refused[Path(entry.path)] = f"is {kind_of(st.st_mode)}, not a regular file"
                elif not is_video_name(entry.name):
                    refused[Path(entry.path)] = (
                        "is not named as a video (" + " ".join(sorted(VIDEO_SUFFIXES)) + ")"
                    )
                else:
                    found[Path(entry.path)] = (st.st_size, st.st_mtime_ns)
        return found, refused

    async def _refuse(self, refused: dict[Path, str]) -> None:
        """Say once, per entry, that something in input/ is not a file we take (a link could point
        anywhere: /etc/shadow, a device); it stays where it is, untouched."""
        for path, why in refused.items():
            if self._refused.get(path) == why:
                continue
            # A link or a device in the drop zone is someone's mistake or attack; a sidecar that a
            # DVR writes beside every clip (.idx) is routine, and must not page anyone.
            await self.raise_alert(
                "ERROR" if "not a regular file" in why else "WARNING",
                "Entry in input/ refused",
                f"{shown(path.name)} {why}: it is not ingested and left as it is",
                context={"path": shown(str(path))},
                actions=[
                    "Put only video files in input/ (temp name, then rename); move this entry elsewhere"
                ],
            )
        self._refused = refused

    def _complete(self, path: Path, signature: tuple[int, int], wall: float) -> bool:
        """Renamed in (its writer's word that it is whole), or unmodified for `stable_s`: a writer
        that pauses (a slow network copy) has not finished just because two looks agree."""
        return path.name in self._renamed_in or wall - signature[1] / 1e9 >= self.settings.ingest.stable_s

    async def _look(self) -> None:
        """One look at input/: remember new signatures, take the files that are complete."""
        files, refused = self._scan_input()
        await self._refuse(refused)
        self.queued = len(files)
        self._renamed_in &= {path.name for path in files}
        self._retry = {p: r for p, r in self._retry.items() if p in files}
        if self.paused:
            return
        now, wall = time.monotonic(), time.time()
        settle = self.settings.ingest.settle_s
        looks: dict[Path, _Look] = {}
        stable: list[Path] = []
        for path, signature in sorted(files.items(), key=lambda item: item[1][1]):  # oldest first
            retry = self._retry.get(path)
            if retry is not None and retry.signature == signature and now < retry.at:
                continue
            look = self._looks.get(path)
            if look is None or look.signature != signature:
                looks[path] = _Look(signature, now)
            elif now - look.since >= settle and self._complete(path, signature, wall):
                stable.append(path)
            else:
                looks[path] = look
        busy = await asyncio.to_thread(held_open, stable) if stable else set()
        self.waiting_open = len(busy)
        for path in busy:
            looks[path] = self._looks[path]
        self._looks = looks
        for path in (p for p in stable if p not in busy):
            if self.paused or self.stopping:
                self._looks[path] = _Look(files[path], now)
                continue
            await self._take(path, files[path])

    async def _take(self, path: Path, signature: tuple[int, int]) -> None:
        ingest = self.settings.ingest
        grace = 0.0 if path.name in self._renamed_in else ingest.incomplete_grace_s
        alert = f"input:{shown(str(path))}"  # the file's "Cannot ingest file" alert
        try:
            outcome = await asyncio.to_thread(
                ingest_file, path, self.paths, self.ledger, component=self.name, grace_s=grace
            )
        except FileNotFoundError:  # taken away meanwhile (by `vv ingest`, or its writer): nothing to do
            await self.alerts.resolve(alert, f"{shown(path.name)} was taken away from input/")
            return
        except StillWriting as exc:
            log.info("%s: looking again in %.0fs", exc, ingest.stable_s)
            self._retry[path] = _Retry(signature, time.monotonic() + ingest.stable_s, ingest.stable_s)
            return
        except OSError as exc:
            self.counts.failed += 1
            previous = self._retry.get(path)
            delay = min(ingest.retry_max_s, previous.delay * 2) if previous else ingest.retry_min_s
            self._retry[path] = _Retry(signature, time.monotonic() + delay, delay)
            await self.alerts.fire(
                alert,
                "ERROR",
                "Cannot ingest file",
                f"{shown(path.name)}: {type(exc).__name__}: {exc}; it stays in input/ and is retried "
                f"in {delay:.0f}s (or when it changes)",
                context={"path": shown(str(path))},
                actions=["Check the permissions and the free space of VV_HOME (storage/)"],
            )
            return
        self._retry.pop(path, None)
        await self.alerts.resolve(alert, f"{shown(path.name)} was ingested after all")
        await announce(self, self.ledger, outcome, self.counts)
