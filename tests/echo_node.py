"""A node written the way users write one: it records what it handles and answers video.new."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from bench.relay_node import fake_scan_done
from bus.envelope import Event
from bus.node import Node, on


class Echo(Node):
    name = "echo"
    produces = ("scan.done",)

    @on("#")
    async def record(self, event: Event) -> None:
        # Durable side effect per handled event: the test counts these lines to prove exactly-once.
        with Path(self.settings.home, "echo.log").open("a") as handle:
            handle.write(json.dumps({"id": event.id, "type": event.type, "subject": event.subject}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if event.type == "video.new":
            if event.data["original_name"] == "explode.mp4":
                raise RuntimeError("handler bug on purpose")
            await self.emit("scan.done", fake_scan_done(event, "echo"), cause=event)


class Preparing(Echo):
    """An Echo whose preparation (a model that loads slowly) lasts until the test creates `go` in VV_HOME."""

    name = "preparing"

    async def prepare(self) -> None:
        home = Path(self.settings.home)
        while not (home / "go").exists():
            await asyncio.sleep(0.02)
        with (home / "echo.log").open("a") as handle:
            handle.write(json.dumps({"id": "prepared"}) + "\n")
