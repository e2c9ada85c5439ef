"""`vv up`'s `[supervisor]` settings (nodes/cli/up.py, nodes/ops/supervisor.py)."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import section


@section("supervisor")
@dataclass(frozen=True)
class SupervisorSettings:
    """`vv up`: which nodes run as its children and how crashed ones are restarted."""

    # comma-separated names or module:Class specs; "": every registered node (dvr only with dvr.url)
    nodes: str = ""
    max_restarts: int = 5  # restarts within restart_window_s before the child is FATAL (not restarted)
    restart_window_s: float = 300.0
    stability_s: float = 60.0  # a child up this long has its restart count reset
    startup_grace_s: float = 5.0  # a child is "starting" this long, then "running"
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    stop_timeout_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    log_lines: int = 50  # last lines of each child's output kept for status and alerts
    fatal_retry_s: float = 900.0  # a FATAL child is tried again after this (the disk was freed); 0: never
