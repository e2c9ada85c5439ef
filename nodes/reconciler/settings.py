"""The reconciler's `[reconciler]` settings: how long each stage may take, how often to re-announce."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import section


@section("reconciler")
@dataclass(frozen=True)
class ReconcilerSettings:
    interval_s: float = 30.0
    ingested_s: float = 900.0  # longest a video may wait for its scan before it is re-announced
    scanned_s: float = 300.0
    summarized_s: float = 120.0
    max_attempts: int = 3  # re-announcements before the video is quarantined
