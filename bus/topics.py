"""Topic names in one place: `vv/<device>/<event type with '.' replaced by '/'>`."""

from __future__ import annotations

ROOT = "vv"


def topic_for(device: str, event_type: str) -> str:
    return f"{ROOT}/{device}/{event_type.replace('.', '/')}"


def health_topic(device: str, node: str) -> str:
    return topic_for(device, f"health.{node}")


def alert_type(severity: str) -> str:
    return f"alert.{severity.lower()}"


def parse_topic(topic: str) -> tuple[str, str]:
    """Return (device, event type) of a `vv/...` topic; raise ValueError for anything else."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT or not parts[1] or not all(parts[2:]):
        raise ValueError(f"not a vv topic: {topic!r}")
    return parts[1], ".".join(parts[2:])


def subscription(device: str, event_type: str, shared_group: str = "") -> str:
    """Topic filter for one event type; `*` in the type is a single-level wildcard, `#` a tail one.

    With a shared group, workers of one stage split the load (`$share/<group>/...`, MQTT 5).
    """
    levels = ["+" if part == "*" else part for part in event_type.split(".")]
    topic = f"{ROOT}/{device}/{'/'.join(levels)}"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def is_pipeline_event(event_type: str) -> bool:
    """Health, alerts and commands are JSON for people reading `mosquitto_sub`; the rest follow bus.codec."""
    return event_type.split(".", 1)[0] not in ("health", "alert", "cmd")
