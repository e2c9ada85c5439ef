"""The disk watch node: free space of the storage filesystem and of `/`, with ingest paused when critical.

Every `disk.interval_s` it reads the space available to the node (statvfs `f_bavail`, what a
non-root writer can use) on the filesystem holding `VV_HOME/storage` (or its nearest existing
parent) and on `/`; a filesystem holding both is watched once. Levels, per filesystem:
- `critical` when the free space is under `critical_percent` of the volume, capped at
  `critical_free_gb` (GB = 10^9 bytes) on large volumes: `alert.critical`, and ingest is paused
  (`cmd.ingest.pause`);
- `warning` likewise under `warn_percent` capped at `warn_free_gb`: `alert.warning`;
- a level is entered as soon as the free space crosses, and left only once it is above the
  threshold by the hysteresis (`hysteresis_percent`, capped at `hysteresis_gb`), so a disk hovering
  at a threshold does not flap. Leaving a level resolves its alert (`resolved=True`); when no
  filesystem is critical any more, ingest resumes (`cmd.ingest.resume`).
The pause is kept in the node's state directory and each level's alert with the node's firing
alerts (the levels are read back from those), so a restart neither alerts again for a known level
nor forgets to resume; the first look after a start judges the figures alone, never the saved level.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bus.alerts import Severity
from bus.config import Settings
from bus.fsutil import atomic_write_json
from bus.node import Node
from nodes.disk.settings import DiskSettings

log = logging.getLogger("vv.disk")

Level = Literal["ok", "warning", "critical"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "critical")
GB = 1_000_000_000
TITLES: dict[Level, tuple[Severity, str]] = {
    "warning": ("WARNING", "Disk space low"),
    "critical": ("CRITICAL", "Disk space critically low"),
}


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


class DiskNode(Node):
    """Watches free space; raises and resolves alerts; pauses and resumes ingest."""

    name = "disk"
    produces = ("cmd.ingest.pause", "cmd.ingest.resume")

    def __init__(self, settings: Settings, instance: str = "") -> None:
        super().__init__(settings, instance)
        self.config = settings.section(DiskSettings)
        self.watched = {"storage": self.paths.storage, "root": Path("/")}
        self.levels: dict[str, Level] = {}  # by mount point
        self.paused = False
        self.figures: dict[str, dict[str, Any]] = {}
        self._state_file = self.state_dir / "disk.json"
        self._looked = False

    async def setup(self) -> None:
        by_name: dict[str, Level] = {level: level for level in LEVELS}
        for key in self.alerts.firing():  # `<level>:<mount>`: which level's alert is firing
            name, _, mount = key.partition(":")
            if name in by_name:
                self.levels[mount] = by_name[name]
        try:
            self.paused = bool(json.loads(self._state_file.read_text())["paused"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("state %s unreadable (%s): starting from the current figures", self._state_file, exc)
            self.paused = True  # unknown: assume paused, so that ingest is resumed unless critical

    def _save(self) -> None:
        """Best effort: the disk this node watches may be the full one; it still alerts and pauses."""
        try:
            atomic_write_json(self._state_file, {"paused": self.paused})
        except OSError as exc:
            log.warning("state %s not saved: %s", self._state_file, exc)

    async def background(self) -> None:
        while True:
            await self.check()
            if await self.sleep(self.config.interval_s):
                return

    async def check(self) -> None:
        """One look at every watched filesystem; alerts and ingest commands on level changes."""
        mounts: dict[Path, list[str]] = {}
        try:
            for name, path in self.watched.items():
                mounts.setdefault(mount_point(path), []).append(name)
            usages = {mount: usage_of(mount) for mount in mounts}
        except OSError as exc:
            log.error("cannot read free space: %s", exc)
            self.set_status("degraded", f"cannot read free space: {exc}")
            return
        self.set_status("online")
        for gone in set(self.levels) - {str(m) for m in mounts}:
            level = self.levels.pop(gone)
            log.info("%s is no longer watched: its level %s is forgotten", gone, level)
            await self.alerts.resolve(f"{level}:{gone}", f"{gone} is no longer watched")
        for mount, names in mounts.items():
            usage = usages[mount]
            old = self.levels.get(str(mount), "ok")
            # The saved level says which alert is firing, never what the disk is now: the first look
            # after a start judges the figures alone (the volume may have changed while we were down).
            new = next_level(old, usage, self.config) if self._looked else level_for(usage, self.config)
            for name in names:
                self.figures[name] = {
                    "path": str(self.watched[name]),
                    "mount": str(mount),
                    "free_bytes": usage.free_bytes,
                    "total_bytes": usage.total_bytes,
                    "free_percent": round(usage.free_percent, 2),
                    "level": new,
                }
            if new != old:
                await self._change(mount, names, usage, old, new)
        self._looked = True
        critical = any(level == "critical" for level in self.levels.values())
        if critical != self.paused:
            await self._pause(critical)

    async def _change(self, mount: Path, names: list[str], usage: Usage, old: Level, new: Level) -> None:
        figures = (
            f"{mount}: {usage.free_bytes / GB:.1f} GB free ({usage.free_percent:.1f}%) of "
            f"{usage.total_bytes / GB:.1f} GB"
        )
        context = {
            "mount": str(mount),
            "watching": ", ".join(names),
            "free_bytes": usage.free_bytes,
            "free_percent": round(usage.free_percent, 2),
        }
        log.info("%s: %s -> %s", mount, old, new)
        if old != "ok":
            await self.alerts.resolve(f"{old}:{mount}", f"{figures}: back above the {old} level")
        if new != "ok":
            severity, title = TITLES[new]
            percent, gb = (
                (self.config.critical_percent, self.config.critical_free_gb)
                if new == "critical"
                else (self.config.warn_percent, self.config.warn_free_gb)
            )
            effect = " Ingest is paused until space returns." if new == "critical" else ""
            limit = threshold_bytes(usage.total_bytes, percent, gb) / GB
            await self.alerts.fire(
                f"{new}:{mount}",
                severity,
                title,
                f"{figures}; {new} below {limit:.2f} GB free ({percent:g}% of the volume, at most {gb:g} GB).{effect}",
                context=context,
                actions=[
                    f"See what grows: du -xh --max-depth=2 {mount} | sort -h | tail",
                    "Free space: vv cleanup --days N --dirs <dirs> --min-free-space 20%",
                    "Export and remove old logs: vv export",
                ],
            )
        self.levels[str(mount)] = new
        self._save()

    async def _pause(self, pause: bool) -> None:
        if pause:
            critical = [m for m, level in self.levels.items() if level == "critical"]
            reason = f"disk space critically low on {', '.join(critical)}"
            await self.emit("cmd.ingest.pause", {"args": {}, "reason": reason})
        else:
            await self.emit("cmd.ingest.resume", {"args": {}, "reason": "disk space is back"})
        log.warning(
            "ingest %s", "paused: disk space critically low" if pause else "resumed: disk space is back"
        )
        self.paused = pause
        self._save()

    def health_details(self) -> dict[str, Any]:
        worst = max((LEVELS.index(level) for level in self.levels.values()), default=0)
        return {"level": LEVELS[worst], "ingest_paused": self.paused, "mounts": self.figures}
