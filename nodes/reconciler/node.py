"""The reconciler: nothing gets stuck. It folds the journal, and a video that has sat in a stage
longer than its limit has that stage's last event re-announced (a new event, same data), up to
`reconciler.max_attempts` times; then the video is quarantined with an alert listing the attempts.

Every stage is idempotent (dedupe by id, by (type, subject), and artifacts written atomically), so
re-announcing turns at-least-once delivery into exactly-once in effect, even when the broker lost
queued messages in a crash. The journal is the only state: attempts are the announcements it holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bus.envelope import Event, parse_time
from bus.node import Node, RefusedClaim
from nodes.common.claims import StoredVideo, check_video
from nodes.common.quarantine import (
    QuarantineAlert,
    UnreadableVideo,
    announce_quarantine,
    quarantine_and_announce,
)
from nodes.journal.fold import STAGE_OF_TYPE, VideoState, format_time, stuck
from nodes.journal.index import last_events, open_videos
from nodes.journal.store import JournalError
from nodes.reconciler.settings import ReconcilerSettings

log = logging.getLogger("vv.reconciler")
TYPE_OF_STAGE = {stage: event_type for event_type, stage in STAGE_OF_TYPE.items()}


class ReconcilerNode(Node):
    name = "reconciler"
    # re-announces a stuck stage with that stage's own event type, or quarantines the video
    produces = ("video.new", "scan.done", "summary.done", "video.quarantined")

    def limits(self) -> dict[str, float]:
        s = self.settings.section(ReconcilerSettings)
        return {"ingested": s.ingested_s, "scanned": s.scanned_s, "summarized": s.summarized_s}

    async def background(self) -> None:
        await self.wait_connected()
        while not await self.sleep(self.settings.section(ReconcilerSettings).interval_s):
            try:
                await self.reconcile()
            except (JournalError, OSError) as exc:
                self.set_status("degraded", f"cannot read the journal: {exc}")

    def _fold(self, now: datetime) -> tuple[dict[str, VideoState], dict[tuple[str, str], dict[str, Any]]]:
        """The videos in the pipeline (the shared video index: the cost follows them, not the history),
        and the last event of each stuck video's stage types, when it lies within the fold horizon."""
        s = self.settings.section(ReconcilerSettings)
        horizon = max(self.limits().values()) * (s.max_attempts + 2)
        since = now - timedelta(seconds=horizon)
        if not self.paths.journal.is_dir():
            return {}, {}
        states = open_videos(self.paths)
        stuck_ids = [state.video_id for state in stuck(states, self.limits(), now)]
        latest = {
            key: event
            for key, event in last_events(self.paths, stuck_ids).items()
            if parse_time(str(event.get("time"))) >= since
        }
        return states, latest

    async def reconcile(self, now: datetime | None = None) -> int:
        """One pass; returns how many videos were re-announced or quarantined."""
        now = now or datetime.now(UTC)
        states, latest = await asyncio.to_thread(self._fold, now)
        acted = 0
        for state in stuck(states, self.limits(), now):
            assert state.stage is not None
            last = latest.get((state.video_id, TYPE_OF_STAGE[state.stage]))
            if last is None:
                continue  # the stage's event is older than the fold horizon
            announced = state.attempts.get(state.stage, 1)
            try:
                video = await asyncio.to_thread(check_video, self.paths.storage, last["data"]["video"])
            except RefusedClaim as exc:  # a forged event made it into the journal: record, never touch
                await self._quarantine(state, last, None, refused=str(exc))
            else:
                if announced > self.settings.section(ReconcilerSettings).max_attempts:
                    await self._quarantine(state, last, video)
                else:
                    log.warning(
                        "re-announcing %s of %s (attempt %d)", last["type"], state.video_id, announced + 1
                    )
                    await self.emit(
                        last["type"], last["data"], subject=state.video_id, cause=Event.from_dict(last)
                    )
            acted += 1
        return acted

    async def _quarantine(
        self, state: VideoState, last: dict[str, Any], video: StoredVideo | None, refused: str = ""
    ) -> None:
        """Move a stuck video to corrupted/; a video whose claims do not hold is only recorded."""
        assert state.stage is not None
        times = [format_time(entry["time"]) for entry in state.timeline if entry["type"] == last["type"]]
        reason = f"stuck in stage {state.stage} after {len(times)} announcements"
        attempts = [
            {"time": t, "reason": f"{last['type']} announced, no next stage within the limit"} for t in times
        ]
        cause = Event.from_dict(last)

        def alert(data: Mapping[str, Any]) -> QuarantineAlert:
            return QuarantineAlert(
                "Forged or corrupt event in the journal"
                if video is None
                else "Video stuck in the pipeline quarantined",
                f"video {state.video_id}: {data['error_message']}: " + ", ".join(times),
                {"video": state.video_id, "stage": state.stage},
                [
                    "Find who published it: a stolen node credential or a broken producer"
                    if video is None
                    else f"Check the health and logs of the node after stage {state.stage}",
                    "Re-ingest the file from corrupted/ once fixed",
                ],
                "CRITICAL" if video is None else "ERROR",
            )

        if video is not None:
            await quarantine_and_announce(
                self,
                video.path,
                UnreadableVideo("StuckInStage", reason),
                video.sha256,
                alert,
                subject=state.video_id,
                cause=cause,
                attempts=attempts,
            )
            return
        not_moved = {
            "original_path": str(last["data"]["video"].get("path", "")),
            "quarantine_path": "",
            "meta_path": "",
            "error_type": "RefusedClaim",
            "error_message": f"{reason}; not moved: {refused}",
            "sha256": None,  # a refused claim's hash means nothing
            "stage": self.name,
            "attempts": attempts,
        }
        await announce_quarantine(self, not_moved, alert(not_moved), subject=state.video_id, cause=cause)
