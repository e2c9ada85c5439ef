"""A node's sessions with the broker, in the order that loses nothing.

Connect, and reconnect with capped backoff until the node stops. In each connected session:
subscribe first (whatever is published from then on is ours), announce health (after a broker crash,
first the outage its will could not report), send what was spooled, start the outbox sender (which
resends what a killed broker may have lost), the heartbeat and the catch-up from the journal, wait
once per process for `prepare`, then consume until stop or disconnect. A graceful stop finishes
the batch in hand, sends folded alerts, drains the outbox and publishes `offline`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from bus.backoff import Backoff
from bus.catchup import Catchup
from bus.client import MqttError
from bus.config import Settings
from bus.envelope import utc_now
from bus.health import Health
from bus.inbound import Inbound
from bus.outbox import Outbox
from bus.topics import subscription
from bus.transport import Session, Transport

if TYPE_CHECKING:
    from bus.node import Node

log = logging.getLogger("vv.node")

TransportFactory = Callable[[Settings, Session], Transport]


class Sessions:
    """The connection loop of one node; `transport` is the live connection (None between sessions)."""

    def __init__(
        self,
        node: Node,
        connect: TransportFactory,
        *,
        health: Health,
        outbox: Outbox,
        inbound: Inbound,
        catchup: Catchup | None,
        guard: Callable[[Awaitable[None], str], Coroutine[Any, Any, None]],
        send_folded_alerts: Callable[[float], Awaitable[None]],
    ) -> None:
        self.node, self._connect = node, connect
        self._health, self._outbox, self._inbound, self._catchup = health, outbox, inbound, catchup
        self._guard, self._send_folded_alerts = guard, send_folded_alerts
        self.transport: Transport | None = None
        self.connected = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._prepared: asyncio.Task[None] | None = None
        self._lost_at: tuple[str, float] | None = None  # (UTC, monotonic) when the broker was lost

    def interrupt(self) -> None:
        """For a stop: end consuming now unless a batch is in hand (it finishes, then consuming ends)."""
        if self._consumer is not None and not self._inbound.busy:
            self._consumer.cancel()

    async def run(self) -> None:
        node = self.node
        mqtt = node.settings.mqtt
        backoff = Backoff(mqtt.reconnect_min_s, mqtt.reconnect_max_s)
        username = node.settings.mqtt_username(node.node_name)
        while not node.stopping:
            transport = self._connect(node.settings, Session(node.client_id, username, self._health.will()))
            try:
                async with transport:
                    backoff.reset()
                    await self._session(transport)
            except MqttError as exc:
                if node.stopping:
                    break
                delay = backoff.next_delay()
                hint = (
                    f" (does the broker know {node.node_name}? see broker.nodes and broker.instances)"
                    if getattr(exc, "rc", None) in (134, 135)  # bad user name or password, not authorized
                    else ""
                )
                log.warning("broker connection lost or refused (%s)%s; retrying in %.1fs", exc, hint, delay)
                if self._lost_at is None:
                    self._lost_at = (utc_now(), time.monotonic())
                node.stats.reconnects += 1
                await node.sleep(delay)
            finally:
                self.transport = None
                self.connected.clear()

    async def _session(self, transport: Transport) -> None:
        """One connected session: subscribe, announce, resend, catch up, consume until stop or disconnect."""
        node, outbox = self.node, self._outbox
        await transport.subscribe(self._subscriptions())
        self.transport = transport
        resend = self._resend_after_outage()
        if self._lost_at is not None:
            await self._health.publish_outage(transport, *self._lost_at)
            self._lost_at = None
        await self._health.publish(transport)
        await outbox.send_spool(transport)
        mqtt = node.settings.mqtt
        log.info("connected to %s:%d as %s", mqtt.host, mqtt.port, node.client_id)
        tasks = [
            asyncio.create_task(outbox.send(transport, resend)),
            asyncio.create_task(self._heartbeat(transport)),
        ]
        if self._catchup is not None:  # subscribed first: what the journal does not return arrives live
            tasks.append(asyncio.create_task(self._guard(self._catchup.run(), "catch-up")))
        self.connected.set()
        try:
            if self._prepared is None:  # once per process, whatever the reconnects meanwhile
                self._prepared = asyncio.create_task(node.prepare())
            await asyncio.shield(self._prepared)
            self._consumer = asyncio.create_task(self._inbound.consume(transport))
            if node.stopping:  # stop() came while connecting: nothing to finish
                self._consumer.cancel()
            try:
                await self._consumer
            except asyncio.CancelledError:
                if not node.stopping:
                    raise
            await self._send_folded_alerts(math.inf)  # a folded count is not lost to a stop
            await outbox.drain(timeout=5.0)
            outbox.flush_acked()
            await self._health.publish(transport, "offline")
        finally:
            self._consumer = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            outbox.flush_acked()

    async def _heartbeat(self, transport: Transport) -> None:
        while True:
            await asyncio.sleep(self.node.settings.bus.health_interval_s)
            self._outbox.flush_acked()
            await self._send_folded_alerts(time.monotonic())
            await self._health.publish(transport)

    def _subscriptions(self) -> list[str]:
        device, group = self.node.device, self.node.group
        filters = [subscription(device, pattern, group) for pattern in self._inbound.handlers]
        if self._inbound.health_handlers:
            filters.append(subscription(device, "health.*"))
        if self._catchup is not None:
            filters.append(self._catchup.reply_topic)
        return filters

    def _resend_after_outage(self) -> float | None:
        """After a lost connection: the time (time.time()) from which acknowledged events are re-sent.

        A broker killed outright forgets messages still in flight to its clients (the journal
        included) even though it acknowledged them; consumers dedupe the copies by event id.
        """
        if self._lost_at is None:
            return None
        lost_wall = time.time() - (time.monotonic() - self._lost_at[1])
        return lost_wall - self.node.settings.bus.resend_window_s
