"""The journal node's `[journal]` settings: durability, segments, retention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bus.config import section

FsyncPolicy = Literal["always", "interval", "never"]


@section("journal")
@dataclass(frozen=True)
class JournalSettings:
    fsync: FsyncPolicy = "interval"
    fsync_interval_s: float = 0.2
    segment_bytes: int = 64 * 1024 * 1024
    # retention of sealed segments; a segment holding an event of a video still in the pipeline stays
    retention_days: float = 90.0  # older segments may go (0: keep every segment)
    max_bytes: int = 0  # cap on the journal's size, oldest removable segments first (0: no cap)
    export_before_delete: bool = True  # only segments a `vv export` archive in exports/ holds, same sha256
    retention_interval_s: float = 3600.0
    resend_max_age_s: float = 7 * 86400.0  # a gap re-send (cmd.journal.resend) looks back this far
