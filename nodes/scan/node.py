"""The scan node: video.new in; detections, tracks (the analytic artifact) and thumbnails out as scan.done.

Several workers share the load through the shared subscription `$share/scan/...`. Each attempt is
recorded on disk before it starts, so a video that keeps failing (or keeps killing the worker) is
quarantined with its reasons after `scan.max_attempts` instead of blocking the stage forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bus import schemas
from bus.artifacts import write_artifact
from bus.envelope import Event, utc_now
from bus.fsutil import atomic_write_json
from bus.node import Node, on
from nodes.common.claims import ANALYTIC_NAME, StoredVideo, check_video, video_inputs
from nodes.common.quarantine import QuarantineAlert, UnreadableVideo, quarantine_and_announce
from nodes.scan.analyze import DamagedVideo, ScanTimeout, VideoError, scan_video
from nodes.scan.detectors import make_detector
from nodes.scan.detectors.base import Detector
from nodes.scan.settings import FilterSettings, ScanSettings, TrackSettings

log = logging.getLogger("vv.scan")

MIN_PROCESSING_S = 60.0
PROCESSING_PER_VIDEO_S = 10.0  # default budget: ten times the video's duration, at least a minute
THUMBNAILS_DIR = "thumbnails"  # beside the video: crops and full frames of the reported tracks


class Attempts:
    """Per-video attempt history in one small JSON file (rewritten atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history: dict[str, list[dict[str, str]]] = json.loads(path.read_text()) if path.exists() else {}

    def start(self, video_id: str) -> list[dict[str, str]]:
        """Record an attempt before it runs; one left open by a crash is closed as interrupted."""
        attempts = self.history.setdefault(video_id, [])
        if attempts and attempts[-1]["reason"] == "running":
            attempts[-1]["reason"] = "interrupted: the scan worker stopped or crashed during this attempt"
        attempts.append({"time": utc_now(), "reason": "running"})
        self._save()
        return attempts

    def finish(self, video_id: str, reason: str | None) -> None:
        """A success forgets the history; a failure keeps its reason."""
        if reason is None:
            self.history.pop(video_id, None)
        else:
            self.history[video_id][-1]["reason"] = reason
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, self.history)


class ScanNode(Node):
    name = "scan"
    produces = ("scan.done", "video.quarantined")
    shared_group = "scan"

    async def setup(self) -> None:
        self.attempts = Attempts(self.state_dir / "attempts.json")
        self.current: dict[str, Any] = {}

    async def prepare(self) -> None:
        """Load the detector once subscribed: importing torch or fetching a model takes seconds."""
        self.detector: Detector
        self.detector, self.degraded = await asyncio.to_thread(
            make_detector, self.settings.section(ScanSettings), self.paths.home
        )
        log.info("detector: %s %s (%s)", self.detector.name, self.detector.model, self.detector.runtime)
        if self.degraded:
            self.set_status("degraded", self.degraded)
            await self.raise_alert(
                "WARNING",
                "Scan runs a fallback detector",
                self.degraded,
                context={"node": self.name},
                actions=[
                    "Set scan.model (VV_SCAN_MODEL) to YOLO weights: a .pt name, an .onnx or a Darknet .weights"
                ],
            )

    def health_details(self) -> dict[str, Any]:
        loaded = hasattr(self, "detector")
        return {"current": self.current, "backend": self.detector.name if loaded else "loading"}

    def _budget_s(self, duration_s: float) -> float:
        configured = self.settings.section(ScanSettings).max_processing_s
        return configured if configured > 0 else max(MIN_PROCESSING_S, duration_s * PROCESSING_PER_VIDEO_S)

    @on("video.new")
    async def scan(self, event: Event) -> None:
        video = event.data["video"]
        stored = await asyncio.to_thread(
            check_video, self.paths.storage, video
        )  # before any state is written
        video_id, path = stored.id, stored.path
        while True:
            attempts = self.attempts.start(video_id)
            budget = self._budget_s(video["duration_s"])
            self.current = {"video": video_id, "progress": 0.0, "attempt": len(attempts)}
            started = time.perf_counter()
            try:
                analytic = await asyncio.to_thread(
                    scan_video,
                    path,
                    self.detector,
                    self.settings.section(ScanSettings),
                    track=self.settings.section(TrackSettings),
                    filters=self.settings.section(FilterSettings),
                    thumbnails=stored.directory / THUMBNAILS_DIR,
                    progress=lambda done: self.current.update(progress=round(done, 3)),
                    deadline=time.monotonic() + budget,
                )
            except (VideoError, ScanTimeout, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self.attempts.finish(video_id, reason)
                if isinstance(exc, ScanTimeout):
                    await self.raise_alert(
                        "WARNING",
                        "Scan took longer than its budget",
                        f"video {video_id} not scanned within {budget:.0f}s (attempt {len(attempts)})",
                        context={"video": video_id},
                        actions=["Lower scan.detect_fps or scan.imgsz, or raise scan.max_processing_s"],
                    )
                if len(attempts) >= self.settings.section(ScanSettings).max_attempts or isinstance(
                    exc, DamagedVideo
                ):
                    await self._quarantine(event, stored, attempts, reason)
                    return
                continue
            finally:
                self.current = {}
            break
        analytic["inputs"] = video_inputs(stored)
        schemas.validate("analytic", analytic)
        ref = write_artifact(stored.directory, ANALYTIC_NAME, analytic)
        self.attempts.finish(video_id, None)
        counts = dict(sorted(Counter(t["label"] for t in analytic["tracks"] if t["reported"]).items()))
        data: dict[str, Any] = {
            "video": video,
            "analytic": ref,
            "counts": counts,
            "backend": self.detector.name,
            "model": analytic["detector"].get("model", ""),
            "frames_sampled": analytic["timing"]["frames_sampled"],
            "frames_inferred": analytic["timing"]["frames_inferred"],
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if self.degraded:
            data["degraded"] = self.degraded
        log.info("scanned %s: %s", video_id, counts or "nothing found", extra={"video": video_id})
        await self.emit("scan.done", data, subject=video_id, cause=event)

    async def _quarantine(
        self, event: Event, stored: StoredVideo, attempts: list[dict[str, str]], reason: str
    ) -> None:
        video_id = event.data["video"]["id"]
        await quarantine_and_announce(
            self,
            stored.path,
            UnreadableVideo("ScanFailed", reason),
            stored.sha256,
            lambda data: QuarantineAlert(
                "Video quarantined after repeated scan failures",
                f"video {video_id} failed {len(attempts)} scan attempts; last: {reason}",
                {"video": video_id, "path": data["quarantine_path"]},
                [f"Inspect {data['meta_path']}", "Re-ingest the file once the cause is fixed"],
            ),
            subject=video_id,
            cause=event,
            attempts=attempts,
        )
