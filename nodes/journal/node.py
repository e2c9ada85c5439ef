"""The journal node: appends every event of its device to the segmented log, the source of truth."""

from __future__ import annotations

from typing import Any

from bus.envelope import Event, utc_now
from bus.node import Node, on
from bus.topics import topic_for
from nodes.journal.store import Journal


class JournalNode(Node):
    name = "journal"

    async def setup(self) -> None:
        settings = self.settings.journal
        self.journal = Journal.open(
            self.paths.journal,
            segment_bytes=settings.segment_bytes,
            fsync=settings.fsync,
            fsync_interval_s=settings.fsync_interval_s,
        )
        for report in self.journal.recovery:
            await self.raise_alert(
                "WARNING",
                "Journal recovered from a torn write",
                str(report),
                context={"path": str(self.paths.journal)},
                actions=["Nothing to do if the device lost power or crashed; otherwise check the disk"],
            )

    @on("#")
    async def record(self, event: Event) -> None:
        # Acked only after this returns: an event is on disk (or in the OS, per the fsync policy)
        # before the broker forgets it.
        self.journal.append(
            {"topic": topic_for(event.device, event.type), "received_at": utc_now(), "event": event.to_dict()}
        )

    async def background(self) -> None:
        """The interval policy syncs on append; this syncs a quiet tail too, within the interval."""
        if self.settings.journal.fsync != "interval":
            return
        interval = max(self.settings.journal.fsync_interval_s, 0.05)
        while not await self.sleep(interval):
            if self.journal.unsynced:
                self.journal.flush()

    async def teardown(self) -> None:
        self.journal.close()

    def health_details(self) -> dict[str, Any]:
        return {"journal": self.journal.stats()} if hasattr(self, "journal") else {}
