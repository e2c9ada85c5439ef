"""The benchmark's node: the smallest real stage (video.new in, validated, scan.done out)."""

from __future__ import annotations

from typing import Any

from bus.envelope import Event
from bus.node import Node, on


def fake_scan_done(event: Event, backend: str) -> dict[str, Any]:
    """scan.done data answering a video.new without scanning (for the bench and the bus tests)."""
    video = event.data["video"]
    analytic = {"path": video["path"] + ".analytic.json", "sha256": video["sha256"]}
    return {
        "video": video,
        "analytic": analytic,
        "counts": {"person": 1},
        "backend": backend,
        "model": "none",
    }


class Relay(Node):
    name = "relay"
    produces = ("scan.done",)

    @on("video.new")
    async def relay(self, event: Event) -> None:
        await self.emit("scan.done", fake_scan_done(event, "bench"), cause=event)
