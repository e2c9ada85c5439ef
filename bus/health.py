"""A node's health: the retained document on `health.<node>` that monitors, `vv status` and the
console read to know whether a node is up and doing its job, and the will that says `offline`
when the connection drops without a goodbye.

The document carries the node's counters (`NodeStats`) and its own figures; it is published on
every connection, on every status change and every `bus.health_interval_s` (so a monitor can count
missed beats), and as `offline` on a graceful stop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus import codec, schemas
from bus.client import MqttError
from bus.config import Settings
from bus.envelope import JSON, utc_now
from bus.topics import health_topic
from bus.transport import Transport, Will
from bus.version import VERSION

log = logging.getLogger("vv.node")


@dataclass
class NodeStats:
    """What the node did since it started, reported in its health details."""

    received: int = 0
    handled: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    failures: int = 0
    emitted: int = 0
    gaps: int = 0
    expired_commands: int = 0  # commands received after their `until`, not applied
    reconnects: int = 0
    last_event_at: str | None = None
    last_seq: dict[tuple[str, int, str], int] = field(default_factory=dict)


class Health:
    """The node's status (`online`, `degraded` with a reason, or the reason it gives up) and its
    health document; `details` adds the figures of the parts that own them (outbox, catch-up, node)."""

    def __init__(
        self, settings: Settings, node_name: str, stats: NodeStats, details: Callable[[], dict[str, Any]]
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.topic = health_topic(settings.device, node_name)
        self.stats = stats
        self._details = details
        self.status = "online"
        self.reason = ""
        self.exit_reason = ""  # set when the node gives up: health says why, the exit code is 1
        self.epoch = 0
        self.started = time.monotonic()

    def document(self, status: str | None = None) -> dict[str, Any]:
        """The health document, `status` overriding the node's own (for `offline`)."""
        stats = self.stats
        doc: dict[str, Any] = {
            "node": self.node_name,
            "device": self.settings.device,
            "status": status or self.status,
            "time": utc_now(),
            "version": VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "details": {
                "epoch": self.epoch,
                "health_interval_s": self.settings.bus.health_interval_s,  # lets a monitor count missed beats
                "received": stats.received,
                "handled": stats.handled,
                "duplicates": stats.duplicates,
                "dead_letters": stats.dead_letters,
                "failures": stats.failures,
                "emitted": stats.emitted,
                "gaps": stats.gaps,
                "expired_commands": stats.expired_commands,
                "reconnects": stats.reconnects,
                "last_event_at": stats.last_event_at,
                **self._details(),
            },
        }
        if self.reason and doc["status"] == "degraded":
            doc["reason"] = self.reason
        elif self.exit_reason and doc["status"] == "offline":  # not a stop on purpose: to be restarted
            doc["reason"] = self.exit_reason
        return doc

    def will(self) -> Will:
        """`offline`, retained, sent by the broker if the connection drops (after the will delay, so a
        quick reconnect does not flap it)."""
        offline = self.document("offline")
        offline["reason"] = "connection lost (last will)"
        return Will(self.topic, json.dumps(offline).encode(), JSON, self.settings.mqtt.will_delay_s)

    async def publish(
        self, transport: Transport, status: str | None = None, document: dict[str, Any] | None = None
    ) -> None:
        """Publish the document (retained); a connection that cannot take it only warns."""
        doc = document or self.document(status)
        schemas.validate("health", doc)
        try:
            await transport.publish_wait(self.topic, codec.encode(doc, JSON), JSON, retain=True, timeout=5)
        except MqttError as exc:
            log.warning("health not published: %s", exc)

    async def publish_outage(self, transport: Transport, since: str, since_monotonic: float) -> None:
        """Record an outage the will could not report (the broker itself died): offline since then.

        A will is only sent by a broker that saw the connection drop; after a broker crash it never
        is, so the node publishes the record itself, timed when it lost the broker, before `online`.
        """
        doc = self.document("offline")
        doc["time"] = since
        doc["reason"] = f"broker connection lost; reconnected after {time.monotonic() - since_monotonic:.1f}s"
        await self.publish(transport, document=doc)
