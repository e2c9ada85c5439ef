"""The fold's changes fanned out to the page's live streams (SSE), and the recent LogLines per device.

The fold tells `Hub.publish` about each committed change on the service's loop; each open page has
a bounded queue. A page too slow to drain its queue loses the backlog and is told to re-read
everything ("resync") rather than slowing the fold or growing without bound. The LogLines' summary
text and counts are not in the store (it keeps the chain: seq, hash, video), so the device page's
recent LogLines are the ones seen since the console started, kept here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from nodes.console.store import Change

QUEUE_SIZE = 5000  # changes a page may lag behind (a fold batch of 500 alerts makes ~1,000)
RESYNC = Change("resync", "")


class Hub:
    def __init__(self, loglines_per_device: int = 20) -> None:
        self._queues: set[asyncio.Queue[Change]] = set()
        self._loglines: dict[str, deque[dict[str, Any]]] = {}
        self._keep = loglines_per_device
        self.published = 0

    def publish(self, change: Change) -> None:
        """Hand a change to every open stream; never blocks the fold."""
        self.published += 1
        if change.kind == "logline":
            kept = self._loglines.setdefault(change.device, deque(maxlen=self._keep))
            kept.appendleft(dict(change.data))
        for queue in self._queues:
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                self.drain(queue)
                queue.put_nowait(RESYNC)

    def subscribe(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    @staticmethod
    def drain(queue: asyncio.Queue[Change]) -> list[Change]:
        """Everything waiting in a stream's queue, without waiting."""
        changes = []
        while not queue.empty():
            changes.append(queue.get_nowait())
        return changes

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        self._queues.discard(queue)

    @property
    def streams(self) -> int:
        return len(self._queues)

    def loglines(self, device: str) -> list[dict[str, Any]]:
        """The device's LogLines seen since the console started, newest first."""
        return list(self._loglines.get(device, ()))
