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
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.config import Settings
from bus.envelope import Event, utc_now
from bus.fsutil import atomic_write_json
from bus.inputs import kind_of, shown
from bus.node import Node, on
from nodes.common.quarantine import QuarantineAlert, announce_quarantine
from nodes.ingest.files import (
    VIDEO_SUFFIXES,
    Ledger,
    Outcome,
    StillWriting,
    held_open,
    ingest_file,
    is_candidate,
    is_video_name,
    ledger_for,
)
from nodes.ingest.settings import IngestSettings
from nodes.ingest.watch import DirWatch

log = logging.getLogger("vv.ingest")


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
        alert = QuarantineAlert(
            "Unreadable video quarantined",
            f"{shown(outcome.path.name)}: {outcome.error.error_type}: {outcome.error}; "
            f"moved to {outcome.data['quarantine_path']}",
            {**context, "file": shown(outcome.path.name)},
            [
                f"Inspect {outcome.data['meta_path']} for the reason",
                "Re-export or re-record the video at its source, then drop the new file in input/",
                "Delete the quarantined file once it is no longer needed",
            ],
        )
        await announce_quarantine(node, outcome.data, alert, subject=outcome.video_id or None)


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
        self.paused_by = ""  # the command's author (an operator through the console) or its node
        self.paused_since: str | None = None
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
            saved = json.loads(self._pause_file.read_text())
            self._set_paused(True, saved.get("reason", ""), saved.get("by", ""), saved.get("since"))

    @on("cmd.ingest.pause")
    async def pause(self, event: Event) -> None:
        """Stop taking new files: from the disk node when critical, or an operator through the console
        (its `author` and `reason` show in health)."""
        reason = str(event.data.get("reason") or "by command")
        by, since = str(event.data.get("author") or event.node), utc_now()
        atomic_write_json(self._pause_file, {"reason": reason, "by": by, "since": since})
        self._set_paused(True, reason, by, since)

    @on("cmd.ingest.resume")
    async def resume(self, event: Event) -> None:
        self._pause_file.unlink(missing_ok=True)
        self._set_paused(False, "", str(event.data.get("author") or event.node))
        self._wake.set()

    def _set_paused(self, paused: bool, reason: str, by: str = "", since: str | None = None) -> None:
        self.paused, self.pause_reason = paused, reason
        self.paused_by, self.paused_since = (by, since) if paused else ("", None)
        log.info(
            "ingest %s%s%s",
            "paused" if paused else "resumed",
            f" by {by}" if by else "",
            f": {reason}" if reason else "",
        )
        if paused:
            self.set_status("degraded", f"paused by {by or 'command'} ({reason}): new files wait in input/")
        else:
            self.set_status("online")

    def health_details(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "paused_by": self.paused_by,
            "paused_since": self.paused_since,
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
                    self.settings.section(IngestSettings).settle_s
                    if self._looks
                    else self.settings.section(IngestSettings).poll_interval_s
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
        finally:
            if watch is not None:
                asyncio.get_running_loop().remove_reader(watch.fd)
                watch.close()

    def _start_watch(self) -> DirWatch | None:
        if not self.settings.section(IngestSettings).inotify:
            return None
        try:
            watch = DirWatch(self.paths.input)
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            log.info(
                "inotify unavailable (%s): polling input/ every %.1fs",
                exc,
                self.settings.section(IngestSettings).poll_interval_s,
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
        return (
            path.name in self._renamed_in
            or wall - signature[1] / 1e9 >= self.settings.section(IngestSettings).stable_s
        )

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
        settle = self.settings.section(IngestSettings).settle_s
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
        ingest = self.settings.section(IngestSettings)
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
