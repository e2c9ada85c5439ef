"""`/metrics`: the console's view of the fleet in Prometheus' text format (0.0.4), rendered from the
store on each scrape (a scrape every 15-60 s costs three queries).

Families: devices by state, firing alerts by severity and device, each device's witnessed chain
head (seq and whether its signature verified), and the console's ingestion: messages folded, how
late the newest event arrived against its own timestamp (ingestion lag), messages dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from nodes.console.registry import Registry
from nodes.console.store import ConsoleStore
from nodes.console.web.views import SEVERITIES, STATES, tiles

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Ingestion:
    """The service's counters, kept as messages arrive."""

    messages: int = 0
    events: int = 0
    rejected: int = 0
    backlog: int = 0  # messages received and not yet folded, after the last batch
    lag_s: float | None = None  # the newest event's arrival minus its own time
    lag_max_s: float = 0.0  # the largest since the console started

    def observe(self, lag_s: float) -> None:
        self.events += 1
        self.lag_s = lag_s
        self.lag_max_s = max(self.lag_max_s, lag_s)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")
    return lines


def render(store: ConsoleStore, registry: Registry, ingestion: Ingestion, streams: int) -> str:
    grid = tiles(store, registry, {})
    devices = [d for group in grid["groups"] for d in group["devices"]]
    by_state = Counter(d["state"] for d in devices)
    firing = Counter((a.severity, a.device) for a in store.alerts(status="firing"))
    by_severity = Counter(severity for severity, _ in firing.elements())
    lines = [
        *_family(
            "vv_console_devices",
            "gauge",
            "Devices by state (offline, stale, critical, error, degraded, warning, ok, unknown).",
            (({"state": s}, by_state[s]) for s in STATES),
        ),
        *_family(
            "vv_console_alerts_firing",
            "gauge",
            "Firing alerts by severity across the fleet.",
            (({"severity": s}, by_severity[s]) for s in SEVERITIES),
        ),
        *_family(
            "vv_console_device_alerts_firing",
            "gauge",
            "Firing alerts by severity and device.",
            (({"severity": s, "device": d}, n) for (s, d), n in sorted(firing.items())),
        ),
        *_family(
            "vv_console_chain_head_seq",
            "gauge",
            "The seq of each device's LogLine chain head the console witnessed.",
            (({"device": d["device"]}, d["chain"]["seq"]) for d in devices if d["chain"]),
        ),
        *_family(
            "vv_console_chain_head_verified",
            "gauge",
            "1 if the witnessed chain head's signature verified against the fleet registry.",
            (
                ({"device": d["device"]}, 1.0 if d["chain"]["verified"] else 0.0)
                for d in devices
                if d["chain"]
            ),
        ),
        *_family(
            "vv_console_messages_total",
            "counter",
            "Messages folded from the central broker.",
            [({}, ingestion.messages)],
        ),
        *_family(
            "vv_console_events_total",
            "counter",
            "Events (alerts, LogLines) among them.",
            [({}, ingestion.events)],
        ),
        *_family(
            "vv_console_messages_rejected_total",
            "counter",
            "Messages dropped as undecodable or forged.",
            [({}, ingestion.rejected)],
        ),
        *_family(
            "vv_console_ingestion_backlog",
            "gauge",
            "Messages received and not yet folded (growing: the console falls behind).",
            [({}, ingestion.backlog)],
        ),
        *_family(
            "vv_console_ingestion_lag_seconds",
            "gauge",
            "How late the newest event was folded, against its own timestamp.",
            [({}, ingestion.lag_s)] if ingestion.lag_s is not None else [],
        ),
        *_family(
            "vv_console_ingestion_lag_max_seconds",
            "gauge",
            "The largest ingestion lag since the console started.",
            [({}, ingestion.lag_max_s)],
        ),
        *_family("vv_console_live_streams", "gauge", "Pages following the live stream.", [({}, streams)]),
    ]
    return "\n".join(lines) + "\n"
