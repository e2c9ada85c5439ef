"""The summarize node: scan.done in; tracks, a scene summary and thumbnails out as summary.done."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from bus import schemas
from bus.artifacts import load_artifact, write_artifact
from bus.envelope import Event
from bus.node import Node, on
from nodes.summarize.summary import build_summary, write_thumbnails

log = logging.getLogger("vv.summarize")


class Summarize(Node):
    name = "summarize"

    @on("scan.done")
    async def summarize(self, event: Event) -> None:
        analytic_ref = event.data["analytic"]
        analytic = load_artifact(analytic_ref)  # refuses a file whose sha256 changed since scan
        schemas.validate("analytic", analytic)
        summary = build_summary(analytic)
        schemas.validate("summary", summary)
        directory = Path(analytic_ref["path"]).parent
        video_path = Path(event.data["video"]["path"])
        thumbnails = await asyncio.to_thread(write_thumbnails, video_path, summary, directory / "thumbnails")
        ref = write_artifact(directory, "summary.json", summary)
        data: dict[str, Any] = {
            "video": event.data["video"],
            "analytic": analytic_ref,
            "summary": ref,
            "text": summary["text"],
            "counts": summary["counts"],
            "thumbnails": [{"path": t["path"], "sha256": t["sha256"]} for t in thumbnails],
        }
        log.info("summarized %s: %s", event.subject, summary["text"], extra={"video": event.subject})
        await self.emit("summary.done", data, cause=event)
