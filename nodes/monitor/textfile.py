"""The device's figures for node_exporter's textfile collector, written by the monitor.

node_exporter (`--collector.textfile.directory`) reads every `*.prom` file in a directory on each
scrape; a file read half-written would be a broken scrape, so it is replaced by rename. Nothing here
talks to MQTT: the monitor hands over what it already folds (the retained health of every node and
the last scan's timing) and `render` turns it into the Prometheus text format (version 0.0.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.envelope import parse_time
from bus.fsutil import atomic_write_bytes

STATUSES = ("online", "degraded", "offline")
# details keys of nodes' health that are queue depths (messages or files waiting), by node
QUEUES = {"ingest": ("queued", "waiting_open")}


@dataclass(frozen=True)
class ScanTiming:
    """The last scan.done seen: how long the scan took for how long a video."""

    video_s: float
    elapsed_s: float
    at: float  # Unix seconds


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if value == value else "NaN"


class _Metrics:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{text}}} {_number(value)}")


def render(device: str, health: Mapping[str, Mapping[str, Any]], scan: ScanTiming | None) -> str:
    """The metrics text for `device`: its nodes' health (by their retained documents), the events
    they received and handled, their queue depths, and the scan's real-time factor."""
    m = _Metrics()
    nodes = sorted(health)
    m.family("vv_node_status", "gauge", "1 for the node's current health status (online, degraded, offline)")
    for node in nodes:
        for status in STATUSES:
            current = 1.0 if health[node].get("status") == status else 0.0
            m.sample("vv_node_status", {"device": device, "node": node, "status": status}, current)
    m.family("vv_node_health_timestamp_seconds", "gauge", "when the node's last health document was written")
    for node in nodes:
        stamp = health[node].get("time")
        if isinstance(stamp, str):
            m.sample(
                "vv_node_health_timestamp_seconds",
                {"device": device, "node": node},
                parse_time(stamp).timestamp(),
            )
    for field, help_text in (
        ("received", "events the node received"),
        ("handled", "events the node handled"),
        ("dead_letters", "events the node refused to the dead-letter store"),
    ):
        name = f"vv_node_events_{field}_total"
        m.family(name, "counter", f"{help_text} since its start")
        for node in nodes:
            value = _details(health[node]).get(field)
            if isinstance(value, int | float):
                m.sample(name, {"device": device, "node": node}, value)
    m.family("vv_node_queue_depth", "gauge", "items waiting in a node's queue")
    for node in nodes:
        details = _details(health[node])
        backlog = _backlog(details)
        if backlog is not None:
            m.sample("vv_node_queue_depth", {"device": device, "node": node, "queue": "events"}, backlog)
        for queue in QUEUES.get(node, ()):
            value = details.get(queue)
            if isinstance(value, int | float):
                m.sample("vv_node_queue_depth", {"device": device, "node": node, "queue": queue}, value)
    if scan is not None and scan.elapsed_s > 0:
        m.family("vv_scan_realtime_factor", "gauge", "seconds of video per second of scanning (last video)")
        m.sample("vv_scan_realtime_factor", {"device": device}, scan.video_s / scan.elapsed_s)
        m.family("vv_scan_last_timestamp_seconds", "gauge", "when the last scan.done was seen")
        m.sample("vv_scan_last_timestamp_seconds", {"device": device}, scan.at)
    return "\n".join(m.lines) + "\n"


def _details(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    details = doc.get("details")
    return details if isinstance(details, dict) else {}


def _backlog(details: Mapping[str, Any]) -> float | None:
    """Events received and not yet settled (handled, duplicate, dead-lettered or failed)."""
    figures = [details.get(k) for k in ("received", "handled", "duplicates", "dead_letters", "failures")]
    counts = [f for f in figures if isinstance(f, int)]
    if len(counts) != len(figures):
        return None
    return float(max(0, counts[0] - sum(counts[1:])))


def write(path: Path, text: str) -> None:
    """Replace the file by rename (never read half-written); no fsync: it is rewritten every round."""
    atomic_write_bytes(path, text.encode(), durable=False)
