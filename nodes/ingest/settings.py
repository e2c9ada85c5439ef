"""The ingest node's `[ingest]` settings: when a file in input/ counts as complete, retries."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import section


@section("ingest")
@dataclass(frozen=True)
class IngestSettings:
    poll_interval_s: float = 2.0  # rescan of input/ (the fallback without inotify, a safety net with it)
    settle_s: float = 1.0  # a file renamed into input/ is complete when two looks this far apart agree
    stable_s: float = 10.0  # a file written in place: size and mtime unchanged this long (slow copies pause)
    incomplete_grace_s: float = 60.0  # written in place, unreadable, younger than this: wait, not quarantine
    retry_min_s: float = 5.0  # a file whose ingest failed (storage fault) is retried with backoff
    retry_max_s: float = 300.0
    inotify: bool = True  # wake on directory events where the kernel offers them
