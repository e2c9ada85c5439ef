"""Events are claims: what an event says about a file is checked against the filesystem first.

A node that reads, moves, writes beside or signs a file because an event named it calls these
checks before it touches anything. A video must be a regular file at
`storage/YYYY/MM/DD/<video_id>/<name>`, reached from the storage root without any symlink, with
the size and sha256 the event states, and its id must be the first 32 hex digits of the sha256
recomputed from its bytes. An artifact must sit in its video's directory under its fixed name,
match its sha256, and name the video (and, for a summary, the analytic) it was made from.
Anything else raises `RefusedClaim`: the node base dead-letters the event with `alert.critical`.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.fsutil import sha256_bytes, sha256_file
from bus.node import RefusedClaim

DATE_PARTS = (4, 2, 2)  # YYYY / MM / DD
ANALYTIC_NAME = "analytic.json"
SUMMARY_NAME = "summary.json"
MAX_ARTIFACT_BYTES = 256 << 20  # an analytic of hours of video is a few MB; more is not ours
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG)


@dataclass(frozen=True)
class StoredVideo:
    """A video whose claims held: `path` is the real file under the storage root."""

    id: str
    sha256: str
    bytes: int
    path: Path

    @property
    def directory(self) -> Path:
        """`storage/YYYY/MM/DD/<video_id>/`: the only place its artifacts may be."""
        return self.path.parent


def _refuse(what: str, reason: str) -> RefusedClaim:
    return RefusedClaim(f"{what}: {reason}")


def _lstat(path: Path, what: str) -> os.stat_result:
    """lstat, with a missing file as a refused claim; other errors (EIO, EACCES) stay OSError:
    they are the box's faults, to retry, not the event's."""
    try:
        return os.lstat(path)
    except OSError as exc:
        if exc.errno in _MISSING:
            raise _refuse(what, f"{path} does not exist") from None
        raise


def _place_in_storage(storage: Path, claimed: Any, video_id: str, name: str | None, what: str) -> Path:
    """The real path of `claimed` if it is `<storage>/YYYY/MM/DD/<video_id>/<file>` without a
    symlink on the way (and named `name` when given); else RefusedClaim."""
    if not isinstance(claimed, str) or not claimed or "\x00" in claimed:
        raise _refuse(what, f"path {claimed!r} is not a file path")
    path = Path(claimed)
    if not path.is_absolute() or ".." in path.parts:
        raise _refuse(what, f"path {claimed!r} is not an absolute path without '..'")
    root = storage.resolve()
    for base in (storage.absolute(), root):
        if path.is_relative_to(base):
            parts = path.relative_to(base).parts
            break
    else:
        raise _refuse(what, f"{claimed!r} is outside storage {storage}")
    if len(parts) != 5:
        raise _refuse(what, f"{claimed!r} is not storage/YYYY/MM/DD/<video id>/<file>")
    *date, directory, filename = parts
    if not all(part.isdigit() and len(part) == size for part, size in zip(date, DATE_PARTS, strict=True)):
        raise _refuse(what, f"{claimed!r} is not under a storage/YYYY/MM/DD/ directory")
    if directory != video_id:
        raise _refuse(what, f"{claimed!r} is not in the directory of video {video_id}")
    if name is not None and filename != name:
        raise _refuse(what, f"{claimed!r} is not the video's {name}")
    real = root
    for index, part in enumerate(parts):
        real = real / part
        mode = _lstat(real, what).st_mode
        if stat.S_ISLNK(mode):
            raise _refuse(what, f"{real} is a symlink: storage holds files, never links")
        wanted_dir = index < len(parts) - 1
        if wanted_dir and not stat.S_ISDIR(mode):
            raise _refuse(what, f"{real} is not a directory")
        if not wanted_dir and not stat.S_ISREG(mode):
            raise _refuse(what, f"{real} is not a regular file")
    return real


@functools.lru_cache(maxsize=4096)
def _cached_sha256(path: str, device: int, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """A video is hashed once per process while it stays the same file (inode, size, times)."""
    return sha256_file(Path(path))


def _sha256_of(path: Path) -> str:
    st = os.stat(path)
    return _cached_sha256(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_video(storage: Path, video: Mapping[str, Any]) -> StoredVideo:
    """The stored video an event's `video` object names, after checking every claim it makes."""
    video_id, digest, size = video.get("id"), video.get("sha256"), video.get("bytes")
    what = f"video {video_id!r}"
    if not isinstance(video_id, str) or not isinstance(digest, str) or not isinstance(size, int):
        raise _refuse(what, "id, sha256 and bytes are required")
    if digest[:32] != video_id:
        raise _refuse(what, f"id is not the first 32 hex digits of the claimed sha256 {digest}")
    path = _place_in_storage(storage, video.get("path"), video_id, None, what)
    actual_size = os.stat(path).st_size
    if actual_size != size:
        raise _refuse(what, f"{path} has {actual_size} bytes, the event claims {size}")
    actual = _sha256_of(path)
    if actual != digest:
        raise _refuse(what, f"{path} has sha256 {actual}, the event claims {digest}")
    return StoredVideo(id=video_id, sha256=digest, bytes=size, path=path)


def _load_artifact(storage: Path, video: StoredVideo, ref: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A JSON artifact of `video` named `name`, after its place and hash are checked."""
    what = f"{name} of video {video.id}"
    path = _place_in_storage(storage, ref.get("path"), video.id, name, what)
    if path.parent != video.directory:
        raise _refuse(what, f"{path} is not beside the video {video.path}")
    if os.stat(path).st_size > MAX_ARTIFACT_BYTES:
        raise _refuse(what, f"{path} is larger than {MAX_ARTIFACT_BYTES} bytes")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != ref.get("sha256"):
        raise _refuse(what, f"{path} has sha256 {actual}, the event claims {ref.get('sha256')!r}")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise _refuse(what, f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _refuse(what, f"{path} is not a JSON object")
    return document


def _check_inputs(document: Mapping[str, Any], expected: Mapping[str, str], what: str) -> None:
    inputs = document.get("inputs")
    found = {key: inputs.get(key) for key in expected} if isinstance(inputs, dict) else {}
    if found != dict(expected):
        raise _refuse(what, f"made from {found or 'nothing named'}, not from {dict(expected)}")


def video_inputs(video: StoredVideo) -> dict[str, str]:
    """The `inputs` an artifact made from `video` records, so it can be tied back to it."""
    return {"video_id": video.id, "video_sha256": video.sha256}


def check_analytic(storage: Path, video: StoredVideo, ref: Mapping[str, Any]) -> dict[str, Any]:
    """The analytic of `video` named by `ref`: beside the video, hash matching, made from it."""
    analytic = _load_artifact(storage, video, ref, ANALYTIC_NAME)
    _check_inputs(analytic, video_inputs(video), f"{ANALYTIC_NAME} of video {video.id}")
    return analytic


def check_summary(
    storage: Path, video: StoredVideo, analytic_ref: Mapping[str, Any], ref: Mapping[str, Any]
) -> dict[str, Any]:
    """The summary named by `ref`: beside the video, hash matching, made from that analytic."""
    summary = _load_artifact(storage, video, ref, SUMMARY_NAME)
    expected = {**video_inputs(video), "analytic_sha256": str(analytic_ref.get("sha256"))}
    _check_inputs(summary, expected, f"{SUMMARY_NAME} of video {video.id}")
    return summary
