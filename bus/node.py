"""The Node API: the class every node subclasses, so a node's own file holds only its logic.

A node subscribes with `@on("<event type>")` (bus/contract.py), receives validated, deduplicated
`Event`s, and publishes with `await self.emit(...)` the event types it declares in `produces`.
Here: the hooks a node overrides (setup, prepare, background, teardown, health_details), what it
calls (emit, raise_alert, alerts, set_status, store, sleep, fail, flush, publish_document) and its
lifecycle (run until SIGTERM, `running()` inside a tool, a crashed `background()` exits 1 to be
restarted). One concern, the API, kept whole even past 400 lines; the machinery is beside it:
bus/session.py (connect, reconnect, the order of a session), bus/transport.py (the connection),
bus/inbound.py (receive, validate, dedupe, commit, retry, dead letters), bus/outbox.py (durable
sending, spool), bus/health.py (the health document and will).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, ClassVar, Self

from bus import codec, schemas
from bus.alerts import FiringAlerts, Severity, StormFolder, build_alert
from bus.catchup import Catchup, replayable
from bus.client import MqttError
from bus.config import Settings
from bus.contract import Contract, UndeclaredEvent, on, on_health
from bus.envelope import JSON, MSGPACK, Event
from bus.health import Health, NodeStats
from bus.inbound import Inbound, RefusedClaim, RejectedMessage, is_transient
from bus.outbox import Outbox
from bus.session import Sessions, TransportFactory
from bus.store import NodeStore
from bus.topics import CATCHUP_REQUEST, catchup_topic, is_pipeline_event
from bus.transport import MqttTransport

__all__ = [
    "Node",
    "NodeStats",
    "RefusedClaim",
    "RejectedMessage",
    "UndeclaredEvent",
    "is_transient",
    "on",
    "on_health",
]

REFUSED = "the broker refused an event (not authorized?): restart `vv broker` to re-render its ACL"
log = logging.getLogger("vv.node")


class Node(Contract):
    """Base of every node process. Subclasses set `name` and add `@on(...)` handlers."""

    max_inflight: ClassVar[int] = 20  # paho's own in-flight limit: more would only queue inside paho
    max_batch: ClassVar[int] = 64  # messages already delivered that are handled in one transaction

    def __init__(
        self, settings: Settings, instance: str = "", *, transport: TransportFactory = MqttTransport.for_node
    ) -> None:
        """`transport` makes the connection: the real broker, or bus/inprocess.py in fast tests."""
        if not self.name:
            raise TypeError(f"{type(self).__name__} must set a node name")
        self.settings = settings
        self.device = settings.device
        self.instance = instance
        self.node_name = self.name + (f"-{instance}" if instance else "")  # health topic, broker user
        self.client_id = f"vv-{self.device}-{self.node_name}"
        self.source = f"vv://{self.device}/{self.name}"
        self.paths = settings.paths
        self.state_dir = self.paths.state / "nodes" / self.node_name
        self.stats = NodeStats()
        self.epoch = 0
        self._store: NodeStore | None = None
        self._alerts: FiringAlerts | None = None
        self._storm = StormFolder()
        self._stop = asyncio.Event()
        self._health = Health(settings, self.node_name, self.stats, self._health_figures)
        self._outbox = Outbox(
            settings,
            self.stats,
            store=lambda: self.store,
            transport=lambda: self._sessions.transport,
            on_refusal=self._on_refusal,
            max_inflight=self.max_inflight,
        )
        self._inbound = Inbound(self, self._outbox, self._bound_handlers(), self._bound_health_handlers())
        self._catchup = self._inbound.catchup = self._make_catchup()
        self._sessions = Sessions(
            self,
            transport,
            health=self._health,
            outbox=self._outbox,
            inbound=self._inbound,
            catchup=self._catchup,
            guard=self._guard,
            send_folded_alerts=self._send_folded_alerts,
        )

    # ----------------------------------------------------------------- for subclasses
    async def setup(self) -> None:
        """Called once before connecting (open state, scan a directory, ...); slow work goes in `prepare`."""

    async def prepare(self) -> None:
        """Called once, subscribed but before the first message is handled: slow preparation (a model
        to load) goes here, so what is published meanwhile waits in the session instead of being missed."""

    async def background(self) -> None:
        """Optional long-running work beside the handlers (watch a folder, record a stream)."""

    async def teardown(self) -> None:
        """Called once after the node stopped."""

    def health_details(self) -> dict[str, Any]:
        """Node-specific figures for the health document."""
        return {}

    @property
    def store(self) -> NodeStore:
        if self._store is None:
            bus = self.settings.bus
            self._store = NodeStore(
                self.state_dir / "node.sqlite",
                bus.outbox_sync,
                seen_retention_s=bus.dedupe_retention_s,
                seen_max=bus.dedupe_max_ids,
                prune_interval_s=bus.prune_interval_s,
            )
        return self._store

    @property
    def alerts(self) -> FiringAlerts:
        """Alerts that fire once per condition and resolve once, remembered across restarts."""
        if self._alerts is None:
            self._alerts = FiringAlerts(self.state_dir / "alerts.json", self.raise_alert)
        return self._alerts

    async def emit(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        subject: str | None = None,
        cause: Event | None = None,
        immediate: bool = False,
    ) -> Event:
        """Publish an event: validated now, durable in the outbox before it is sent.

        Inside a handler the event is committed only if the handler completes (an `immediate` one,
        such as an alert, whatever happens to the handler); elsewhere it is committed at once. Only
        declared types (`produces`) and alerts may be emitted: the broker would refuse anything else.
        """
        self._check_declared(event_type)
        schemas.validate(schemas.schema_name_for(event_type), data)
        codec_json = not is_pipeline_event(event_type) or self.settings.bus.codec == "json"
        event = Event(
            type=event_type,
            source=self.source,
            device=self.device,
            epoch=self.epoch,
            seq=0,  # assigned when persisted, so a rolled-back handler leaves no gap
            data=dict(data),
            datacontenttype=JSON if codec_json else MSGPACK,
            subject=subject if subject is not None else (cause.subject if cause else None),
            causationid=cause.id if cause else None,
        )
        self._outbox.add(event, immediate=immediate)
        return event

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far is acknowledged by the broker (for one-shot producers)."""
        return await self._outbox.flush(timeout)

    async def publish_document(
        self, topic: str, document: Any, content_type: str, *, retain: bool = False
    ) -> None:
        """Send a session message now (not an event: no envelope, no outbox), QoS 1, awaiting PUBACK.

        Raises MqttError when not connected; for answers whose asker asks again (catch-up pages) and
        for state that is re-sent when it changes (a dead child's retained health).
        """
        transport = self._sessions.transport
        if transport is None:
            raise MqttError("not connected")
        payload = codec.encode(document, content_type)
        refusal = await transport.publish_wait(topic, payload, content_type, retain=retain)
        if refusal is not None:
            log.warning("the broker refused a message on %s: %s", topic, refusal)

    # ----------------------------------------------------------------- alerts and status
    async def raise_alert(
        self,
        severity: Severity,
        title: str,
        details: str,
        *,
        context: Mapping[str, Any] | None = None,
        actions: Sequence[str] = (),
        resolved: bool = False,
    ) -> dict[str, Any]:
        """Publish `alert.<severity>` (and log it); alert identity ignores the wording of `details`."""
        alert = build_alert(
            severity=severity,
            title=title,
            details=details,
            source=self.name,
            device=self.device,
            context=context,
            actions=actions,
            status="resolved" if resolved else "firing",
        )
        if self._storm.admit(alert, time.monotonic()):
            await self._publish_alert(alert)
        return alert

    async def _publish_alert(self, alert: dict[str, Any]) -> None:
        severity = alert["severity"]
        level = logging.ERROR if severity in ("ERROR", "CRITICAL") else logging.WARNING
        log.log(
            level if alert["status"] == "firing" else logging.INFO,
            "alert %s %s: %s",
            severity,
            alert["status"],
            alert["title"],
            extra={
                "alert_id": alert["alert_id"],
                "alert_context": alert["context"],
                "details": alert["message_details"],
            },
        )
        video = alert["context"].get("video")
        await self.emit(
            f"alert.{severity.lower()}",
            alert,
            subject=video if isinstance(video, str) else None,
            immediate=True,
        )

    async def _send_folded_alerts(self, now: float) -> None:
        """Alerts a storm folded into one, with their count, once their window ended by `now`."""
        for folded in self._storm.due(now):
            await self._publish_alert(folded)

    @property
    def status(self) -> str:
        """`online` or `degraded` (see `set_status`)."""
        return self._health.status

    def set_status(self, status: str, reason: str = "") -> None:
        """`online` or `degraded` (with the reason an operator should read); published at once."""
        health = self._health
        changed = (status, reason) != (health.status, health.reason)
        health.status, health.reason = status, reason
        transport = self._sessions.transport
        if changed and transport is not None:
            asyncio.get_running_loop().create_task(health.publish(transport))

    def _on_refusal(self, refused: bool) -> None:
        """After each PUBACK: the broker refused an event (its ACL predates our `produces`), or took one."""
        if refused:
            self.set_status("degraded", REFUSED)
        elif self._health.reason == REFUSED:  # re-rendered and restarted
            self.set_status("online")

    def _health_figures(self) -> dict[str, Any]:
        """The health document's details beyond the counters: from the inbound path, outbox, catch-up."""
        return {
            "epoch": self.epoch,
            "retrying": len(self._inbound.retrying),
            "outbox_depth": self._outbox.depth(),
            **({"catchup": self._catchup.status()} if self._catchup is not None else {}),
            **self.health_details(),
        }

    # ----------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Graceful stop: finish the event in hand, flush the outbox, publish offline, disconnect."""
        if self._stop.is_set():
            return
        log.info("stopping")
        self._stop.set()
        self._sessions.interrupt()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        return asyncio.run(self.main())

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = 10.0) -> AsyncIterator[Self]:
        """Run the node inside a tool (`vv ingest`): connected on entry; on exit everything emitted
        is acknowledged by the broker (or stays in the outbox for the next run), then it stops."""
        task = asyncio.create_task(self.main(handle_signals=False))
        try:
            await asyncio.wait_for(asyncio.shield(self._sessions.connected.wait()), timeout)
        except TimeoutError:
            self.stop()
            await task
            raise MqttError(
                f"broker {self.settings.mqtt.host}:{self.settings.mqtt.port} not reachable"
            ) from None
        try:
            yield self
        finally:
            await self.flush(timeout)
            self.stop()
            await task

    async def main(self, handle_signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        self.epoch = self.store.bump_epoch()
        self.store.prune_seen()
        self._inbound.dead.prune()
        self._health.started = time.monotonic()
        log.info("starting %s epoch %d", self.client_id, self.epoch, extra={"epoch": self.epoch})
        await self.setup()
        await self.alerts.resolve("bus:failed", f"{self.name} was restarted (epoch {self.epoch})")
        background = loop.create_task(self._guard(self.background(), "background"))
        try:
            await self._sessions.run()
        finally:
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)
            await self.teardown()
            self.store.close()
            self._inbound.close()
        if self._health.exit_reason:
            log.error("exiting with code 1: %s", self._health.exit_reason)
            return 1
        log.info("stopped")
        return 0

    def _on_signal(self) -> None:
        if self._stop.is_set():  # a second signal: stop now
            log.warning("second signal: exiting without finishing")
            os._exit(130)
        self.stop()

    async def _guard(self, work: Awaitable[None], what: str) -> None:
        """A crashed background job is the node failing (for ingest, dvr, monitor it IS the job)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s crashed", what)
            await self.fail(f"{what} crashed: {type(exc).__name__}: {exc}")

    async def fail(self, reason: str) -> None:
        """Give up: alert, stop gracefully, publish `offline` with the reason and exit with code 1, so
        that the supervisor (`vv up`, systemd) restarts the node and counts it, instead of a node that
        beats on without doing its job. The alert is resolved when the node has started again."""
        if self._health.exit_reason:
            return
        self._health.exit_reason = reason
        await self.alerts.fire(
            "bus:failed",
            "ERROR",
            "Node failed and exits to be restarted",
            f"{self.name}: {reason}",
            context={"node": self.name},
            actions=[
                f"Read logs/app.log (node={self.name}) for the traceback",
                "The supervisor restarts the node; if it keeps failing it is left down with a CRITICAL",
            ],
        )
        self.stop()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._sessions.connected.wait(), timeout)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True if the node is stopping (for background loops)."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @property
    def group(self) -> str:
        """The shared group this node's workers split their load in ("" when it works alone)."""
        return self.settings.bus.shared_group or self.shared_group

    def _make_catchup(self) -> Catchup | None:
        """A node with event handlers catches up from the journal on each connection (bus/catchup.py)."""
        if not self.catches_up():
            return None

        async def request(data: dict[str, Any]) -> Event:
            return await self.emit(CATCHUP_REQUEST, data, immediate=True)

        return Catchup(
            self.settings,
            reply_topic=catchup_topic(self.device, self.node_name),
            patterns=replayable(list(self._inbound.handlers)),
            group=self.group,
            store=lambda: self.store,
            request=request,
            replay=self._inbound.receive,
            busy=lambda: self._inbound.busy,
        )
