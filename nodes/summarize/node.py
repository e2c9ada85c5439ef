"""The summarize node: scan.done in; the scene summary out as summary.done (cheap: no video decode)."""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any, cast

from bus import schemas
from bus.artifacts import write_artifact
from bus.config import ConfigError
from bus.envelope import Event
from bus.node import Node, on
from nodes.common.claims import SUMMARY_NAME, check_analytic, check_video, video_inputs
from nodes.summarize.settings import SummarizeSettings
from nodes.summarize.summary import Describer, build_summary, describe, thumbnails

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


class SummarizeNode(Node):
    name = "summarize"
    produces = ("summary.done",)

    async def setup(self) -> None:
        self.describer = load_describer(self.settings.section(SummarizeSettings).describer)

    @on("scan.done")
    async def summarize(self, event: Event) -> None:
        storage, analytic_ref = self.paths.storage, event.data["analytic"]
        video = await asyncio.to_thread(check_video, storage, event.data["video"])
        analytic = check_analytic(storage, video, analytic_ref)
        schemas.validate("analytic", analytic)
        summary = build_summary(
            analytic, describer=self.describer, max_gap_s=self.settings.section(SummarizeSettings).max_gap_s
        )
        summary["inputs"] = {**video_inputs(video), "analytic_sha256": analytic_ref["sha256"]}
        schemas.validate("summary", summary)
        ref = write_artifact(video.directory, SUMMARY_NAME, summary)
        data: dict[str, Any] = {
            "video": event.data["video"],
            "analytic": analytic_ref,
            "summary": ref,
            "text": summary["text"],
            "counts": summary["counts"],
            "thumbnails": thumbnails(summary),
        }
        log.info("summarized %s: %s", event.subject, summary["text"], extra={"video": event.subject})
        await self.emit("summary.done", data, cause=event)
