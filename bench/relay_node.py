"""The benchmark's node: the smallest real stage (video.new in, validated, scan.done out)."""

from __future__ import annotations

from bus.envelope import Event
from bus.node import Node, on


class Relay(Node):
    name = "relay"

    @on("video.new")
    async def relay(self, event: Event) -> None:
        video = event.data["video"]
        analytic = {"path": video["path"] + ".analytic.json", "sha256": video["sha256"]}
        await self.emit(
            "scan.done",
            {
                "video": video,
                "analytic": analytic,
                "counts": {"person": 1},
                "backend": "bench",
                "model": "none",
            },
            cause=event,
        )
