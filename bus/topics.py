"""Topic names in one place: `vv/<device>/<event type with '.' replaced by '/'>`."""

from __future__ import annotations

ROOT = "vv"
CATCHUP_REQUEST = "cmd.journal.replay"  # a node asks the journal for the events it may have missed
CATCHUP_FAMILY = "catchup"  # the journal's answers: `vv/<device>/catchup/<node>`, one topic per node


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


def catchup_topic(device: str, node: str) -> str:
    """Where the journal sends a node's catch-up pages (the node's health name: unique per device)."""
    return f"{ROOT}/{device}/{CATCHUP_FAMILY}/{node}"


def is_catchup_reply(event_type: str) -> bool:
    """Catch-up pages are session traffic between a node and the journal, not events."""
    return event_type.split(".", 1)[0] == CATCHUP_FAMILY


def is_command(event_type: str) -> bool:
    """Commands are for whoever listens when they are sent: never replayed."""
    return event_type.split(".", 1)[0] == "cmd"


def type_matches(event_type: str, pattern: str) -> bool:
    """Whether an `@on` pattern covers an event type, as its MQTT filter would (`*` one level, `#` the rest)."""
    have, want = event_type.split("."), pattern.split(".")
    for index, part in enumerate(want):
        if part == "#":
            return True
        if index >= len(have) or part not in ("*", have[index]):
            return False
    return len(have) == len(want)
