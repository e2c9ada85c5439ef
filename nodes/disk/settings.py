"""The disk node's `[disk]` settings: the free-space levels and their hysteresis."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import section


@section("disk")
@dataclass(frozen=True)
class DiskSettings:
    interval_s: float = 60.0
    # a level is entered when EITHER the free percent or the free GB is below its threshold
    warn_percent: float = 20.0
    warn_free_gb: float = 50.0
    critical_percent: float = 10.0
    critical_free_gb: float = 10.0
    # a level is left only once both figures are this far above its thresholds (no flapping)
    hysteresis_percent: float = 2.0
    hysteresis_gb: float = 2.0
