"""The monitor's judgements as plain functions (nodes/monitor/node.py applies them): is a node alive,
is a job overdue, is storage writable, what did a node last log, how long may each stage take."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bus.envelope import parse_time
from nodes.journal.fold import format_duration
from nodes.monitor.settings import MonitorSettings
from nodes.ops.supervisor import RestartTracker

LOG_TAIL_BYTES = 4 * 1024 * 1024  # how far back in app.log the last lines of a node are looked for


# ----------------------------------------------------------------------------- pure probes
def is_job(details: Mapping[str, Any]) -> bool:
    """Scheduled jobs (export, cleanup) announce their period; they are judged by last success, not beats."""
    period = details.get("period_s")
    return isinstance(period, int | float) and not isinstance(period, bool) and period > 0


def graceful_offline(doc: Mapping[str, Any]) -> bool:
    """A node that stopped on its own publishes `offline` without a reason; the will carries one."""
    return doc.get("status") == "offline" and not doc.get("reason")


def liveness(status: str, reason: str, beat_age_s: float, interval_s: float, threshold: int) -> str | None:
    """Why a node is not alive (its will fired, or `threshold` beats were missed), or None."""
    if status == "offline":
        return f"offline: {reason or 'no reason given'}"
    if beat_age_s > threshold * interval_s:
        return f"missed {int(beat_age_s / interval_s)} heartbeats (last {beat_age_s:.1f}s ago, every {interval_s:g}s)"
    return None


def job_overdue(details: Mapping[str, Any], waited_s: float, now: datetime, grace: float) -> str | None:
    """Why a scheduled job is overdue, or None. `waited_s` counts when it never succeeded."""
    period = float(details["period_s"])
    last = details.get("last_success")
    if isinstance(last, str):
        try:
            waited_s = (now - parse_time(last)).total_seconds()
        except ValueError:
            return f"last_success {last!r} is not an RFC 3339 time"
        if waited_s > period * grace:
            return f"last success {format_duration(waited_s)} ago, expected every {format_duration(period)}"
        return None
    if waited_s > period * grace:
        return f"no success in {format_duration(waited_s)}, expected every {format_duration(period)}"
    return None


def probe_storage(directory: Path) -> str | None:
    """Create, fsync and remove a probe file; the error (why storage is not writable) or None."""
    probe = directory / ".vv-monitor-probe"  # one name: a probe left by a crash is reused, not piled up
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return f"{exc.strerror or exc} ({exc.filename or directory})"
    return None


def last_log_lines(path: Path, node: str, count: int, max_bytes: int = LOG_TAIL_BYTES) -> list[str]:
    """The last `count` lines logged by `node` in a JSON-lines app.log (read from its end)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first one is cut
    found: list[str] = []
    for raw in reversed(lines):
        if len(found) >= count:
            break
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("node") == node:
            exc = str(doc.get("exc") or "").strip().splitlines()
            tail = f" | {exc[-1]}" if exc else ""
            found.append(f"{doc.get('time', '')} {doc.get('level', '')} {doc.get('message', '')}{tail}")
    return found[::-1]


def stage_limits(cfg: MonitorSettings) -> dict[str, float]:
    limits = {
        "ingested": cfg.stuck_ingested_s,
        "scanned": cfg.stuck_scanned_s,
        "summarized": cfg.stuck_summarized_s,
    }
    return {stage: limit for stage, limit in limits.items() if limit > 0}


# ----------------------------------------------------------------------------- the node
@dataclass
class Watched:
    """What the monitor knows of one node. Times are monotonic (this process)."""

    name: str
    tracker: RestartTracker
    status: str = "unknown"
    reason: str = ""
    pid: int | None = None
    interval_s: float = 10.0
    last_beat: float = 0.0
    graceful: bool = False
    state: str = "unknown"  # up, stopped, unhealthy, restarting, supervised, unmanaged, fatal
    problem: str = ""
    restart_at: float | None = None
    grace_until: float = 0.0
    high_since: dict[str, float] = field(default_factory=dict)  # cpu / memory above threshold since
    process: psutil.Process | None = None


@dataclass
class Job:
    details: dict[str, Any]
    first_seen: float  # monotonic
