"""The journal node: appends every event of its device to the segmented log, the source of truth."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bus.envelope import Event, utc_now
from bus.node import Node, on
from bus.topics import topic_for
from nodes.journal.retention import apply_retention
from nodes.journal.store import Journal, JournalError

log = logging.getLogger("vv.journal")


class JournalNode(Node):
    name = "journal"

    async def setup(self) -> None:
        settings = self.settings.journal
        self.retention: dict[str, int] = {}  # the last retention pass, for health
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
        await asyncio.gather(self._sync_quiet_tail(), self._retain())

    async def _sync_quiet_tail(self) -> None:
        """The interval policy syncs on append; this syncs a quiet tail too, within the interval."""
        if self.settings.journal.fsync != "interval":
            return
        interval = max(self.settings.journal.fsync_interval_s, 0.05)
        while not await self.sleep(interval):
            if self.journal.unsynced:
                self.journal.flush()

    async def _retain(self) -> None:
        """Retention (`retention.py`) beside the appends, in a thread: it folds the index and hashes."""
        while True:
            try:
                report = await asyncio.to_thread(
                    apply_retention, self.journal, self.paths, self.settings.journal
                )
            except (JournalError, OSError) as exc:
                log.warning("journal retention skipped: %s", exc)
            else:
                self.retention = report.summary()
            if await self.sleep(self.settings.journal.retention_interval_s):
                return

    async def teardown(self) -> None:
        self.journal.close()

    def health_details(self) -> dict[str, Any]:
        if not hasattr(self, "journal"):
            return {}
        return {"journal": self.journal.stats(), "retention": self.retention}
