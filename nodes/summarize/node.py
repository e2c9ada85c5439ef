"""The summarize node: scan.done in; tracks, a scene summary and thumbnails out as summary.done."""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path
from typing import Any, cast

from bus import schemas
from bus.artifacts import load_artifact, write_artifact
from bus.config import ConfigError
from bus.envelope import Event
from bus.node import Node, on
from nodes.summarize.summary import Describer, build_summary, describe, write_thumbnails

log = logging.getLogger("vv.summarize")


def load_describer(spec: str) -> Describer:
    """The text generator named by `summarize.describer` ("module:function"), or the built-in one."""
    if not spec:
        return describe
    module_name, _, attr = spec.partition(":")
    try:
        describer = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"summarize.describer: cannot load {spec!r}: {exc}") from None
    if not callable(describer):
        raise ConfigError(f"summarize.describer: {spec!r} is not callable")
    return cast(Describer, describer)


class Summarize(Node):
    name = "summarize"
    produces = ("summary.done",)

    async def setup(self) -> None:
        self.describer = load_describer(self.settings.summarize.describer)

    @on("scan.done")
    async def summarize(self, event: Event) -> None:
        analytic_ref = event.data["analytic"]
        analytic = load_artifact(analytic_ref)  # refuses a file whose sha256 changed since scan
        schemas.validate("analytic", analytic)
        summary = build_summary(
            analytic, describer=self.describer, max_gap_s=self.settings.summarize.max_gap_s
        )
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
