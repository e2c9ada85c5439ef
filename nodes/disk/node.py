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
from pathlib import Path
from typing import Any

from bus.alerts import Severity
from bus.config import Settings
from bus.fsutil import atomic_write_json
from bus.node import Node
from nodes.disk.settings import DiskSettings
from nodes.disk.usage import (
    GB,
    LEVELS,
    Level,
    Usage,
    level_for,
    mount_point,
    next_level,
    threshold_bytes,
    usage_of,
)

log = logging.getLogger("vv.disk")

TITLES: dict[Level, tuple[Severity, str]] = {
    "warning": ("WARNING", "Disk space low"),
    "critical": ("CRITICAL", "Disk space critically low"),
}


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
