"""Nodes that fail on purpose, the way real ones do, for tests/test_failures.py."""

from __future__ import annotations

import errno
from pathlib import Path

from bench.relay_node import fake_scan_done
from bus.envelope import Event
from bus.node import Node, RejectedMessage, on


class Fragile(Node):
    """Writes a row to its own store and answers each video.new; `refused.mp4` is refused half-way,
    and while `<home>/locked` exists a `locked*.mp4` meets a lock held by someone else (transient)."""

    name = "fragile"
    produces = ("scan.done",)

    async def setup(self) -> None:
        self.store.execute("CREATE TABLE IF NOT EXISTS notes (event_id TEXT PRIMARY KEY, name TEXT NOT NULL)")

    @on("video.new")
    async def note(self, event: Event) -> None:
        name = event.data["original_name"]
        self.store.execute("INSERT INTO notes(event_id, name) VALUES (?, ?)", (event.id, name))
        await self.emit("scan.done", fake_scan_done(event, "fragile"), cause=event)
        if name == "refused.mp4":
            raise RejectedMessage("refused on purpose, after writing a row and emitting scan.done")
        if name.startswith("locked") and Path(self.settings.home, "locked").exists():
            raise BlockingIOError(errno.EAGAIN, "resource temporarily locked (on purpose)")


class BackgroundCrash(Node):
    """Its background job crashes once, after connecting (the marker file makes the next start healthy)."""

    name = "bgcrash"

    async def background(self) -> None:
        await self.wait_connected()
        marker = Path(self.settings.home, "bgcrash-crashed")
        if not marker.exists():
            marker.touch()
            raise RuntimeError("watcher broke on purpose")
        await self.sleep(3600)
