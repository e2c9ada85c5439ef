"""Free space and the levels it puts a mount in (ok, warn, critical), with hysteresis: plain functions
the disk node (nodes/disk/node.py) applies each round."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nodes.disk.settings import DiskSettings

Level = Literal["ok", "warning", "critical"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "critical")


GB = 1_000_000_000


@dataclass(frozen=True)
class Usage:
    free_bytes: int
    total_bytes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def threshold_bytes(total_bytes: int, percent: float, floor_gb: float) -> float:
    """Free bytes below which a level is entered: a percent of the volume, capped by the absolute
    floor. A 50 MB volume or a 32 GB card is judged by percent; a 4 TB disk need not keep 400 GB
    free to be out of trouble: its floor (e.g. 10 GB) says when it is."""
    return min(total_bytes * percent / 100.0, floor_gb * GB)


def level_for(usage: Usage, settings: DiskSettings, margin: bool = False) -> Level:
    """The level these figures fall in; with `margin`, thresholds are raised by the hysteresis."""
    if usage.total_bytes <= 0:
        return "critical"  # an unreadable size counts as full
    extra = (
        threshold_bytes(usage.total_bytes, settings.hysteresis_percent, settings.hysteresis_gb)
        if margin
        else 0.0
    )
    total = usage.total_bytes
    if (
        usage.free_bytes
        < threshold_bytes(total, settings.critical_percent, settings.critical_free_gb) + extra
    ):
        return "critical"
    if usage.free_bytes < threshold_bytes(total, settings.warn_percent, settings.warn_free_gb) + extra:
        return "warning"
    return "ok"


def next_level(current: Level, usage: Usage, settings: DiskSettings) -> Level:
    """Worse levels are entered at once; a better one only once clear of the thresholds by the margin."""
    entered = level_for(usage, settings)
    if LEVELS.index(entered) >= LEVELS.index(current):
        return entered
    held = level_for(usage, settings, margin=True)
    return LEVELS[max(LEVELS.index(entered), min(LEVELS.index(current), LEVELS.index(held)))]


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (or its nearest existing parent)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def usage_of(path: Path) -> Usage:
    stats = os.statvfs(path)
    return Usage(stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize)
