"""Quarantine: a video that cannot go on is moved to `corrupted/` beside a `<name>.meta.json` saying
where it came from and why, then announced: one alert and `video.quarantined`.

Ingest (a file that does not decode), scan (a video that failed its attempts) and the reconciler (a
video stuck in a stage) all go through here, with one error handling: a file that cannot be moved
(storage full or read-only) raises OSError before anything is announced, and the caller's own
retry takes it again (ingest's backoff on the file in input/, the bus's redelivery of scan's event,
the reconciler's next pass). Nothing is announced as quarantined that is not in `corrupted/`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.alerts import Severity
from bus.config import VVPaths
from bus.envelope import Event, utc_now
from bus.fsutil import atomic_write_json
from bus.inputs import shown
from bus.node import Node
from nodes.common.files import TEMP_ROOM, fit_name, place_file

META_SUFFIX = ".meta.json"


class UnreadableVideo(Exception):
    """The file is not a video OpenCV can decode from start to end; `error_type` names the case."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class QuarantineAlert:
    """What the alert that goes with a quarantine says (its wording belongs to the stage that gave up)."""

    title: str
    details: str
    context: Mapping[str, Any]
    actions: Sequence[str]
    severity: Severity = "ERROR"


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


def quarantine(
    path: Path,
    paths: VVPaths,
    error: UnreadableVideo,
    digest: str | None,
    *,
    copy: bool = False,
    component: str = "ingest",
    attempts: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Move the file to `corrupted/` beside a meta file saying where it came from and why; returns
    the `video.quarantined` data. Raises OSError (nothing left in `corrupted/`) when it cannot move."""
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
    return {
        "original_path": shown(str(path.absolute())),
        "quarantine_path": str(target),
        "meta_path": str(meta_path),
        "error_type": error.error_type,
        "error_message": str(error),
        "sha256": digest,
        "stage": component,
        **({"attempts": attempts} if attempts else {}),
    }


async def announce_quarantine(
    node: Node,
    data: dict[str, Any],
    alert: QuarantineAlert,
    *,
    subject: str | None,
    cause: Event | None = None,
) -> None:
    """The alert, then `video.quarantined` with `data` (what `quarantine` returned, or a record of a
    video that was not moved because its claims do not hold)."""
    await node.raise_alert(
        alert.severity, alert.title, alert.details, context=alert.context, actions=alert.actions
    )
    await node.emit("video.quarantined", data, subject=subject, cause=cause)


async def quarantine_and_announce(
    node: Node,
    path: Path,
    error: UnreadableVideo,
    digest: str | None,
    alert: Callable[[Mapping[str, Any]], QuarantineAlert],
    *,
    subject: str,
    cause: Event,
    attempts: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Move a stored video to `corrupted/` and announce it; returns the `video.quarantined` data.

    `alert` words the alert from that data (where the file and its meta file went)."""
    data = await asyncio.to_thread(
        quarantine, path, node.paths, error, digest, component=node.name, attempts=attempts
    )
    await announce_quarantine(node, data, alert(data), subject=subject, cause=cause)
    return data
