"""Alert documents: identity from what the alert is about, never from its wording."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from bus.envelope import utc_now

Severity = Literal["INFO", "WARNING", "ERROR", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("INFO", "WARNING", "ERROR", "CRITICAL")

# Context keys that say *which* thing an alert is about; other context (figures, paths) is detail.
IDENTIFYING_KEYS = ("video", "node", "topic", "key", "path", "stream", "job", "channel", "mount")


def alert_identity(device: str, source: str, title: str, context: Mapping[str, Any]) -> str:
    """sha256 over (device, source, title, identifying context): a reworded message is the same alert."""
    ident = "|".join(f"{k}={context[k]}" for k in IDENTIFYING_KEYS if k in context)
    return hashlib.sha256(f"{device}\x1f{source}\x1f{title}\x1f{ident}".encode()).hexdigest()


def build_alert(
    *,
    severity: Severity,
    title: str,
    details: str,
    source: str,
    device: str,
    context: Mapping[str, Any] | None = None,
    actions: Sequence[str] = (),
    status: Literal["firing", "resolved"] = "firing",
    count: int = 1,
) -> dict[str, Any]:
    context = dict(context or {})
    key = alert_identity(device, source, title, context)
    return {
        "alert_id": key,
        "timestamp": utc_now(),
        "severity": severity,
        "source_component": source,
        "hostname": device,
        "title": title[:200],
        "message_details": details,
        "suggested_actions": list(actions),
        "context": context,
        "dedup_key": key,
        "count": count,
        "status": status,
    }
