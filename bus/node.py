"""The Node base: everything about MQTT a node needs, so a node's own file holds only its logic.

A node subscribes with `@on("<event type>")`, receives validated, deduplicated `Event`s, and
publishes with `await self.emit(...)` the event types it declares in `produces`; from these two
declarations `vv broker` renders the node's own credential and ACL. The base connects (MQTT 5,
persistent session, fixed client id), reconnects with backoff, keeps a retained health document
(LWT: offline), validates both directions against `schemas/`, dead-letters what it cannot accept,
and writes every outgoing event to a durable outbox before sending it.

Failures have two shapes. A handler's OSError is transient (storage, a lock): the message stays
unacknowledged and is retried with capped backoff, alerting after a few tries and resolving once
it works. Anything else is permanent: dead-lettered. A failed handler leaves neither its store
writes nor its events (a savepoint per message). A crashed `background()` makes the process exit 1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes

from bus import codec, schemas
from bus.alerts import FiringAlerts, Severity, StormFolder, build_alert
from bus.backoff import Backoff
from bus.broker import Grant
from bus.catchup import Catchup, GroupClaims, replayable
from bus.client import (
    MqttError,
    ack,
    content_type_of,
    decode_message,
    make_client,
    mqtt_properties,
    publish_properties,
)
from bus.config import ConfigError, Settings
from bus.deadletter import DeadLetters
from bus.envelope import JSON, MSGPACK, Event, utc_now
from bus.store import NodeStore, OutboxRow
from bus.topics import (
    CATCHUP_REQUEST,
    catchup_topic,
    health_topic,
    is_catchup_reply,
    is_pipeline_event,
    parse_topic,
    subscription,
    topic_for,
)
from bus.version import VERSION as __version__

HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[None]])
REFUSED = "the broker refused an event (not authorized?): restart `vv broker` to re-render its ACL"
log = logging.getLogger("vv.node")

SPOOLED_PREFIXES = ("alert.", "cmd.")  # sent from memory when the disk cannot hold them


@dataclass
class _HandlerScope:
    """What a running handler emitted: `events` are committed only if it succeeds (with its own store
    writes and the "seen" mark of its input), `kept` (alerts, `immediate`) whatever its fate."""

    events: list[Event] = field(default_factory=list)
    kept: list[Event] = field(default_factory=list)


_handler_scope: contextvars.ContextVar[_HandlerScope | None] = contextvars.ContextVar(
    "handler_scope", default=None
)


def on(event_type: str) -> Callable[[HandlerT], HandlerT]:
    """Mark a coroutine method as the handler of an event type (`*` one level, `#` the rest)."""

    def mark(func: HandlerT) -> HandlerT:
        func._vv_event_type = event_type  # type: ignore[attr-defined]
        return func

    return mark


def on_health(func: HandlerT) -> HandlerT:
    """Mark a coroutine method `(self, node_name, health_doc)` as the receiver of retained health."""
    func._vv_health = True  # type: ignore[attr-defined]
    return func


class RejectedMessage(ValueError):
    """A message that cannot be accepted, ever; it goes to the dead-letter store with this reason."""


def is_transient(exc: BaseException) -> bool:
    """Whether a handler's failure may pass by itself, so the message is retried instead of refused.

    OSError is the environment (storage full, read-only or failing, a lock held, a timeout): the same
    message works once that is fixed. Anything else (a refusal, a schema or validation error, a bug)
    would fail the same way again: dead-lettered at once.
    """
    if isinstance(exc, sqlite3.OperationalError):  # the node's own store: a full or failing disk, a lock
        return any(sign in str(exc) for sign in _STORE_FAULTS)
    return isinstance(exc, OSError) and not isinstance(exc, RejectedMessage)


_STORE_FAULTS = ("disk is full", "disk I/O error", "database is locked", "unable to open", "readonly")


class _Transient(Exception):
    """Internal: a handler failed transiently; its message is kept unacknowledged for a retry."""

    def __init__(self, key: str, label: str, context: dict[str, Any], error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.key, self.label, self.context = key, label, context


@dataclass(eq=False)
class _Delivery:
    """A delivered message and, once it failed transiently, when and how often it is tried again."""

    message: aiomqtt.Message
    backoff: Backoff
    attempts: int = 0
    due: float = 0.0  # monotonic time of the next try
    first_failure: str = ""  # UTC


class RefusedClaim(RejectedMessage):
    """An event whose claims about files (place, size, hash, provenance) do not hold: forged or
    corrupt. Dead-lettered with `alert.critical`; the handler touched nothing."""


class UndeclaredEvent(TypeError):
    """A node emitted an event type missing from its `produces`: the broker's ACL would refuse it."""


@dataclass
class NodeStats:
    received: int = 0
    handled: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    failures: int = 0
    emitted: int = 0
    gaps: int = 0
    reconnects: int = 0
    last_event_at: str | None = None
    last_seq: dict[tuple[str, int, str], int] = field(default_factory=dict)


class Node:
    """Base of every node process. Subclasses set `name` and add `@on(...)` handlers."""

    name: ClassVar[str] = ""
    # Event types this node publishes (health and alerts need no declaration). The broker's ACL
    # is rendered from it and `emit` refuses anything else, so the two cannot drift apart.
    produces: ClassVar[tuple[str, ...]] = ()
    shared_group: ClassVar[str] = ""  # e.g. "scan": workers of a stage split the load via $share
    max_inflight: ClassVar[int] = 20  # paho's own in-flight limit: more would only queue inside paho
    max_batch: ClassVar[int] = 64  # messages already delivered that are handled in one transaction
    catchup: ClassVar[bool] = True  # on every connection, ask the journal for events missed (bus/catchup.py)

    def __init__(self, settings: Settings, instance: str = "") -> None:
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
        self._storm = StormFolder()
        self._spool: collections.deque[tuple[str, bytes, str]] = collections.deque(maxlen=1000)
        self._dead = DeadLetters(
            self.paths.state / "deadletter" / f"{self.node_name}.jsonl",
            max_bytes=settings.bus.deadletter_max_bytes,
            max_age_s=settings.bus.deadletter_max_age_days * 86400,
            payload_bytes=settings.bus.deadletter_payload_bytes,
        )
        self._status = "online"
        self._reason = ""
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._send_queue: asyncio.Queue[OutboxRow] = asyncio.Queue()
        self._awaiting: dict[int, int] = {}  # publishes waiting for their PUBACK
        self._acked: list[int] = []
        self._busy = False
        self._consumer: asyncio.Task[None] | None = None
        self._prepared: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._lost_at: tuple[str, float] | None = None
        self._uncommitted: list[OutboxRow] | None = None
        self._alerts: FiringAlerts | None = None
        self._exit_reason = ""  # set when the node gives up: health says why, the exit code is 1
        self._retrying: list[_Delivery] = []
        bus = settings.bus
        if not 0 < bus.retry_min_s <= bus.retry_max_s or bus.retry_alert_after < 1:
            raise ConfigError(
                "bus.retry_min_s must be > 0 and <= bus.retry_max_s, bus.retry_alert_after at least 1"
            )
        self._handlers = {
            getattr(type(self), attr)._vv_event_type: getattr(self, attr)
            for attr in self._marked("_vv_event_type")
        }
        self._routes: dict[str, Callable[[Event], Awaitable[None]] | None] = {}
        self._health_handlers = [getattr(self, attr) for attr in self._marked("_vv_health")]
        self._catchup = self._make_catchup()
        self._group_claims: GroupClaims | None = None

    # ----------------------------------------------------------------- declarations
    @classmethod
    def _marked(cls, mark: str) -> list[str]:
        """Names of the methods carrying a decorator's mark (`@on`, `@on_health`)."""
        return [attr for attr in dir(cls) if getattr(getattr(cls, attr), mark, None) not in (None, False)]

    @classmethod
    def consumes(cls) -> list[str]:
        """The event-type patterns of the `@on` handlers: what the node subscribes to."""
        return [getattr(cls, attr)._vv_event_type for attr in cls._marked("_vv_event_type")]

    @classmethod
    def catches_up(cls) -> bool:
        """Whether the node asks the journal for missed events on each connection (bus/catchup.py)."""
        return cls.catchup and bool(replayable(cls.consumes()))

    @classmethod
    def publishes(cls) -> tuple[str, ...]:
        """The event types the node may publish: its `produces`, and its catch-up requests."""
        return cls.produces + ((CATCHUP_REQUEST,) if cls.catches_up() else ())

    @classmethod
    def grant(cls, settings: Settings, node: str) -> Grant:
        """The broker rights of `node` (this class's name, or `<name>-<instance>`), from what the
        class declares: publish its `produces`, its own health and alerts; read what it consumes.

        Reads are plain topics even for a shared group: mosquitto checks each delivered message by
        its topic, never the `$share/...` filter.
        """
        device = settings.device
        write = [topic_for(device, t) for t in cls.publishes()]
        write += [health_topic(device, node), topic_for(device, "alert.#")]
        reads = [subscription(device, pattern) for pattern in cls.consumes()]
        if cls._marked("_vv_health"):
            reads.append(subscription(device, "health.*"))
        if cls.catches_up():
            reads.append(catchup_topic(device, node))
        return Grant(settings.mqtt_username(node), tuple(write), tuple(dict.fromkeys(reads)))

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
        if event_type not in self.publishes() and not event_type.startswith("alert."):
            raise UndeclaredEvent(
                f"{type(self).__name__} emits {event_type!r} but does not declare it: add it to "
                f"{type(self).__name__}.produces and re-render the broker (`vv broker`) so its ACL allows it"
            )
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
        scope = _handler_scope.get()
        if scope is None:
            self._persist_or_spool(event)
        else:
            (scope.kept if immediate else scope.events).append(event)
        return event

    def _persist_or_spool(self, event: Event) -> None:
        """Persist one event now; an alert or command the disk cannot take is sent from memory."""
        try:
            self._persist([event])
        except (OSError, sqlite3.Error) as exc:
            if not event.type.startswith(SPOOLED_PREFIXES):
                raise
            self._spool_unpersisted(event, exc)

    def _spool_unpersisted(self, event: Event, error: BaseException) -> None:
        """An alert or command that cannot be persisted (the disk is full or failing) is sent from
        memory: the news that the box is in trouble must not depend on the box's disk."""
        event = dataclasses.replace(event, seq=self.store.next_seq(event.type, reserve=False))
        topic = topic_for(self.device, event.type)
        self._spool_row(topic, codec.encode(event.to_dict(), event.datacontenttype), event.datacontenttype)
        log.warning("%s could not be persisted (%s): sending it from memory", event.type, error)

    def _spool_row(self, topic: str, payload: bytes, content_type: str) -> None:
        self._spool.append((topic, payload, content_type))
        if self._client is not None:
            asyncio.get_running_loop().create_task(self._send_spool(self._client))

    async def _send_spool(self, client: aiomqtt.Client) -> None:
        while self._spool:
            topic, payload, content_type = self._spool[0]
            try:
                await client.publish(
                    topic, payload, qos=1, properties=publish_properties(content_type), timeout=5
                )
            except MqttError:
                return  # sent on the next connection
            self._spool.popleft()

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

    def set_status(self, status: str, reason: str = "") -> None:
        """`online` or `degraded` (with the reason an operator should read); published at once."""
        changed = (status, reason) != (self._status, self._reason)
        self._status, self._reason = status, reason
        if changed and self._client is not None:
            asyncio.get_running_loop().create_task(self._publish_health(self._client))

    def stop(self) -> None:
        """Graceful stop: finish the event in hand, flush the outbox, publish offline, disconnect."""
        if self._stop.is_set():
            return
        log.info("stopping")
        self._stop.set()
        if self._consumer is not None and not self._busy:
            self._consumer.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ----------------------------------------------------------------- running
    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        return asyncio.run(self.main())

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = 10.0) -> AsyncIterator[Self]:
        """Run the node inside a tool (`vv ingest`): connected on entry; on exit everything emitted
        is acknowledged by the broker (or stays in the outbox for the next run), then it stops."""
        task = asyncio.create_task(self.main(handle_signals=False))
        try:
            await asyncio.wait_for(asyncio.shield(self._connected.wait()), timeout)
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
        self._dead.prune()
        self._started = time.monotonic()
        log.info("starting %s epoch %d", self.client_id, self.epoch, extra={"epoch": self.epoch})
        await self.setup()
        await self.alerts.resolve("bus:failed", f"{self.name} was restarted (epoch {self.epoch})")
        background = loop.create_task(self._guard(self.background(), "background"))
        try:
            await self._connection_loop()
        finally:
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)
            await self.teardown()
            self.store.close()
            if self._group_claims is not None:
                self._group_claims.close()
        if self._exit_reason:
            log.error("exiting with code 1: %s", self._exit_reason)
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
        if self._exit_reason:
            return
        self._exit_reason = reason
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
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True if the node is stopping (for background loops)."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _connection_loop(self) -> None:
        backoff = Backoff(self.settings.mqtt.reconnect_min_s, self.settings.mqtt.reconnect_max_s)
        while not self._stop.is_set():
            client = make_client(
                self.settings,
                self.client_id,
                username=self.settings.mqtt_username(self.node_name),
                will=self._will(),
                manual_ack=True,
            )
            try:
                async with client:
                    backoff.reset()
                    await self._session(client)
            except MqttError as exc:
                if self._stop.is_set():
                    break
                delay = backoff.next_delay()
                hint = (
                    f" (does the broker know {self.node_name}? see broker.nodes and broker.instances)"
                    if getattr(exc, "rc", None) in (134, 135)  # bad user name or password, not authorized
                    else ""
                )
                log.warning("broker connection lost or refused (%s)%s; retrying in %.1fs", exc, hint, delay)
                if self._lost_at is None:
                    self._lost_at = (utc_now(), time.monotonic())
                self.stats.reconnects += 1
                await self.sleep(delay)
            finally:
                self._client = None
                self._connected.clear()

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connected session: subscribe, announce, resend, catch up, consume until stop or disconnect."""
        for filt in self._subscriptions():
            await client.subscribe(filt, qos=1)
        self._client = client
        resend = self._resend_after_outage()
        if self._lost_at is not None:
            await self._publish_outage(client, *self._lost_at)
            self._lost_at = None
        await self._publish_health(client)
        await self._send_spool(client)
        log.info("connected to %s:%d as %s", self.settings.mqtt.host, self.settings.mqtt.port, self.client_id)
        tasks = [
            asyncio.create_task(self._sender(client, resend)),
            asyncio.create_task(self._heartbeat(client)),
        ]
        if self._catchup is not None:  # subscribed first: what the journal does not return arrives live
            tasks.append(asyncio.create_task(self._guard(self._catchup.run(), "catch-up")))
        self._connected.set()
        try:
            if self._prepared is None:  # once per process, whatever the reconnects meanwhile
                self._prepared = asyncio.create_task(self.prepare())
            await asyncio.shield(self._prepared)
            self._consumer = asyncio.create_task(self._consume(client))
            if self._stop.is_set():  # stop() came while connecting: nothing to finish
                self._consumer.cancel()
            try:
                await self._consumer
            except asyncio.CancelledError:
                if not self._stop.is_set():
                    raise
            for folded in self._storm.due(math.inf):  # a folded count is not lost to a stop
                await self._publish_alert(folded)
            await self._drain(timeout=5.0)
            self._flush_acked()
            await self._publish_health(client, "offline")
        finally:
            self._consumer = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush_acked()

    @property
    def group(self) -> str:
        """The shared group this node's workers split their load in ("" when it works alone)."""
        return self.settings.bus.shared_group or self.shared_group

    def _subscriptions(self) -> list[str]:
        filters = [subscription(self.device, pattern, self.group) for pattern in self._handlers]
        if self._health_handlers:
            filters.append(subscription(self.device, "health.*"))
        if self._catchup is not None:
            filters.append(self._catchup.reply_topic)
        return filters

    def _make_catchup(self) -> Catchup | None:
        """A node with event handlers catches up from the journal on each connection (bus/catchup.py)."""
        if not self.catches_up():
            return None
        patterns = replayable(list(self._handlers))

        async def request(data: dict[str, Any]) -> Event:
            return await self.emit(CATCHUP_REQUEST, data, immediate=True)

        return Catchup(
            self.settings,
            reply_topic=catchup_topic(self.device, self.node_name),
            patterns=patterns,
            group=self.group,
            store=lambda: self.store,
            request=request,
            replay=self._receive,
            busy=lambda: self._busy,
        )

    def _resend_after_outage(self) -> float | None:
        """After a lost connection: the time (time.time()) from which acknowledged events are re-sent.

        A broker killed outright forgets messages still in flight to its clients (the journal
        included) even though it acknowledged them; consumers dedupe the copies by event id.
        """
        if self._lost_at is None:
            return None
        lost_wall = time.time() - (time.monotonic() - self._lost_at[1])
        return lost_wall - self.settings.bus.resend_window_s

    # ----------------------------------------------------------------- receiving
    async def _consume(self, client: aiomqtt.Client) -> None:
        """Handle delivered messages in batches; one that failed transiently waits, unacknowledged, for
        its retry while the others go on (a stop or a lost connection leaves it to be redelivered)."""
        messages = client.messages
        self._retrying = []
        incoming: asyncio.Future[aiomqtt.Message] | None = None
        try:
            while True:
                if incoming is None:  # one pending read, never cancelled while running: nothing is lost
                    incoming = asyncio.ensure_future(anext(messages))
                next_retry = min((d.due for d in self._retrying), default=None)
                timeout = None if next_retry is None else max(0.0, next_retry - time.monotonic())
                await asyncio.wait({incoming}, timeout=timeout)
                self._busy = True  # from here stop() lets the batch finish
                try:
                    now = time.monotonic()
                    batch = [d for d in self._retrying if d.due <= now]
                    self._retrying = [d for d in self._retrying if d.due > now]
                    if incoming.done():
                        batch.append(self._delivery(incoming.result()))
                        incoming = None
                        # A burst already delivered is handled in one transaction: a commit costs
                        # ~250 us, five times the rest of the bookkeeping. Acks go out after the commit.
                        while len(batch) < self.max_batch and len(messages) > 0:
                            batch.append(self._delivery(await anext(messages)))
                    if batch:  # empty when woken a hair before a retry is due
                        await self._handle_batch(client, batch)
                finally:
                    self._busy = False
                if self._stop.is_set():
                    return
        finally:
            if incoming is not None:
                incoming.cancel()

    def _delivery(self, message: aiomqtt.Message) -> _Delivery:
        return _Delivery(message, Backoff(self.settings.bus.retry_min_s, self.settings.bus.retry_max_s))

    @contextlib.contextmanager
    def _committing(self) -> Iterator[None]:
        """One store transaction; the events it persisted are sent only once it has committed."""
        outer = self._uncommitted is None
        if outer:
            self._uncommitted = []
        try:
            with self.store.transaction():
                yield
        except BaseException:
            if outer:
                # The commit failed (a full disk) or the batch crashed: its alerts and commands still go
                # out, from memory; its events are redone with the retry or the redelivery.
                for row in self._uncommitted or []:
                    if parse_topic(row.topic)[1].startswith(SPOOLED_PREFIXES):
                        self._spool_row(row.topic, row.payload, row.content_type)
                self._uncommitted = None
            raise
        if outer:
            rows, self._uncommitted = self._uncommitted or [], None
            for row in rows:
                self._send_queue.put_nowait(row)

    async def _handle_batch(self, client: aiomqtt.Client, batch: list[_Delivery]) -> None:
        """One transaction for the batch; acks only for what it committed as handled or refused.

        When the transaction itself fails transiently (the store's disk is full: a claim or the commit
        cannot be written), nothing of the batch is done: every message waits for its retry, as a
        failed handler's would, instead of the node crashing into a restart loop."""
        done: list[aiomqtt.Message] = []
        try:
            with self._committing():
                for delivery in batch:
                    try:
                        await self._receive(delivery.message)
                    except _Transient as failure:
                        await self._retry_later(delivery, failure)
                    else:
                        done.append(delivery.message)
        except Exception as exc:
            if not is_transient(exc):
                raise
            context = {"node": self.name, "topic": str(batch[0].message.topic)}
            store = _Transient(self._store_fault_key, "its state store", context, exc)
            for delivery in batch:
                if delivery not in self._retrying:
                    await self._retry_later(delivery, store)
            return
        if self._store_fault_key in self.alerts:
            await self.alerts.resolve(self._store_fault_key, f"{self.name} writes its state store again")
        for message in done:
            ack(client, message)

    @property
    def _store_fault_key(self) -> str:
        return f"bus:store:{self.node_name}"

    async def _retry_later(self, delivery: _Delivery, failure: _Transient) -> None:
        """Schedule the next try (capped backoff); alert.error once it has failed `retry_alert_after` times."""
        cfg = self.settings.bus
        delivery.attempts += 1
        delivery.first_failure = delivery.first_failure or utc_now()
        delay = delivery.backoff.next_delay()
        delivery.due = time.monotonic() + delay
        self._retrying.append(delivery)
        log.warning(
            "%s failed transiently (attempt %d): %s; retrying in %.1fs",
            failure.label,
            delivery.attempts,
            failure,
            delay,
            extra={"topic": failure.context["topic"]},
        )
        if delivery.attempts >= cfg.retry_alert_after:
            await self.alerts.fire(
                failure.key,
                "ERROR",
                "Message keeps failing, retrying",
                f"{self.name} cannot handle {failure.label} ({delivery.attempts} attempts since "
                f"{delivery.first_failure}): {failure}. It stays unacknowledged and is retried "
                f"at least every {cfg.retry_max_s:g}s; it is not dead-lettered.",
                context=failure.context,
                actions=[
                    "Fix what the error names (storage full, read-only or failing, permissions, a lock)",
                    f"Nothing to re-publish: {self.name} finishes the message once it works again",
                ],
            )

    async def _receive(self, message: aiomqtt.Message) -> None:
        self.stats.received += 1
        topic = str(message.topic)
        payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        ctype = content_type_of(message)
        try:
            device, event_type = parse_topic(topic)
            if is_catchup_reply(event_type):
                await self._receive_catchup(topic, message)
                return
            document = self._decode(event_type, payload, message)
            health = event_type.startswith("health.")
            event = None if health else self._envelope(topic, device, event_type, document)
        except (RejectedMessage, codec.DecodeError, schemas.SchemaError, ValueError) as exc:
            await self._dead_letter(topic, payload, ctype, str(exc))
            return
        if event is None:
            node = event_type.split(".", 1)[1]
            call = functools.partial(self._receive_health, node, document)
            await self._dispatch(call, f"health of {node}", topic, payload, ctype)
            return
        if not self._claim(event):  # rolled back with the batch if we crash before it commits
            self.stats.duplicates += 1
            log.debug("duplicate %s %s ignored", event.type, event.id)
            return
        self._track_seq(event)
        handler = self._handler_for(topic)
        if handler is None:
            return
        try:
            await self._dispatch(
                functools.partial(handler, event), f"{event.type} {event.id}", topic, payload, ctype, event
            )
        except _Transient:
            self.store.unclaim(event.id)  # not handled yet: its retry (or redelivery) is no duplicate
            raise

    def _claim(self, event: Event) -> bool:
        """Dedupe by event id: for this node, and once across the workers of its shared group."""
        if not self.store.claim(event.id):
            return False
        if not self.group:
            return True
        if self._group_claims is None:
            self._group_claims = GroupClaims(self.paths.state / "groups" / f"{self.group}.sqlite")
        return self._group_claims.take(event.id, self.node_name)

    async def _receive_catchup(self, topic: str, message: aiomqtt.Message) -> None:
        """A page of the journal's answer: ours is replayed; the journal (on `#`) sees every node's."""
        if self._catchup is None or topic != self._catchup.reply_topic:
            return
        page = decode_message(message)
        if not isinstance(page, dict):
            raise RejectedMessage(f"catch-up page is a {type(page).__name__}, not a map")
        await self._catchup.on_page(page)

    def _decode(self, event_type: str, payload: bytes, message: aiomqtt.Message) -> Any:
        """The decoded document; raises what makes the message a dead letter."""
        if len(payload) > self.settings.bus.max_event_bytes:
            raise RejectedMessage(f"oversized: {len(payload)} bytes > {self.settings.bus.max_event_bytes}")
        document = decode_message(message)
        if event_type.startswith("health."):
            schemas.validate("health", document)
        return document

    def _envelope(self, topic: str, device: str, event_type: str, document: Any) -> Event:
        if not isinstance(document, dict):
            raise RejectedMessage(f"payload is a {type(document).__name__}, not an event envelope")
        event = Event.from_dict(document)
        if event.type != event_type or event.device != device:
            raise RejectedMessage(f"event {event.type}@{event.device} does not belong on topic {topic}")
        return event

    async def _receive_health(self, node: str, document: Any) -> None:
        for handler in self._health_handlers:
            await handler(node, document)

    def _handler_for(self, topic: str) -> Callable[[Event], Awaitable[None]] | None:
        if topic not in self._routes:  # a node sees a handful of topics: match each once
            self._routes[topic] = next(
                (
                    handler
                    for pattern, handler in self._handlers.items()
                    if aiomqtt.Topic(topic).matches(subscription(self.device, pattern))
                ),
                None,
            )
        return self._routes[topic]

    async def _dispatch(
        self,
        call: Callable[[], Awaitable[None]],
        label: str,
        topic: str,
        payload: bytes,
        ctype: str | None,
        event: Event | None = None,
    ) -> None:
        """Run a handler inside a savepoint: its store writes and its events commit only if it succeeds.

        A transient failure raises `_Transient` (the caller keeps the message for a retry); any other
        failure dead-letters the message. Either way the handler's alerts stand.
        """
        scope = _HandlerScope()
        token = _handler_scope.set(scope)
        try:
            with self.store.savepoint():
                await call()
                self._persist(scope.events)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            _handler_scope.reset(token)
        for kept in scope.kept:
            self._persist_or_spool(kept)
        key = f"bus:retry:{event.id if event is not None else topic}"
        if failure is None:
            if event is not None:
                self.stats.handled += 1
                self.stats.last_event_at = utc_now()
            await self.alerts.resolve(key, f"{self.name} handled {label}: it works again")
            return
        self.stats.failures += 1
        context: dict[str, Any] = {"topic": topic, "node": self.name}
        if event is not None and event.subject:
            context["video"] = event.subject
        if is_transient(failure):
            raise _Transient(key, label, context, failure) from failure
        if isinstance(failure, RefusedClaim):  # a refusal is the check working, not a crash
            await self._dead_letter(topic, payload, ctype, f"refused claim: {failure}", event, forged=True)
        else:
            log.error("handler for %s failed", label, exc_info=failure, extra={"topic": topic})
            await self._dead_letter(
                topic, payload, ctype, f"handler failed: {type(failure).__name__}: {failure}", event
            )
        await self.alerts.resolve(key, f"{self.name} gave up on {label}: dead-lettered")

    def _track_seq(self, event: Event) -> None:
        """Per producer, epoch and event type, a jump in `seq` means events we never got (in health)."""
        key = (event.source, event.epoch, event.type)
        last = self.stats.last_seq.get(key)
        if last is not None and event.seq > last + 1:
            self.stats.gaps += event.seq - last - 1
            log.warning("gap from %s epoch %d: seq %d after %d", event.source, event.epoch, event.seq, last)
        if last is None or event.seq > last:
            self.stats.last_seq[key] = event.seq

    async def _dead_letter(
        self,
        topic: str,
        payload: bytes,
        content_type: str | None,
        reason: str,
        event: Event | None = None,
        *,
        forged: bool = False,
    ) -> None:
        self.stats.dead_letters += 1
        self._dead.put(node=self.name, topic=topic, payload=payload, content_type=content_type, reason=reason)
        log.error("dead-lettered message on %s: %s", topic, reason, extra={"topic": topic})
        if event is not None and event.source == self.source and event.type.startswith("alert."):
            return  # our own alert came back and failed: alerting again would loop forever
        context: dict[str, Any] = {"topic": topic, "node": self.name}
        if event is not None and event.subject:
            context["video"] = event.subject
        if forged:
            severity: Severity = "CRITICAL"
            title, details = (
                "Forged or corrupt event refused",
                f"{self.name} refused an event on {topic} and touched nothing: {reason}",
            )
            actions = [
                f"Inspect {self._dead.path} and the event's source ({event.source if event else 'unknown'})",
                "Events naming files outside storage or with wrong hashes mean a stolen credential or a "
                "broken producer: rotate that node's MQTT secret and check the box",
            ]
        else:
            severity, title = "ERROR", "Message refused and dead-lettered"
            details = f"{self.name} could not accept a message on {topic}: {reason}"
            actions = [
                f"Inspect {self._dead.path} (payload kept base64-encoded with the reason)",
                "Fix the producer, then re-publish the message if it is still needed",
            ]
        await self.raise_alert(severity, title, details, context=context, actions=actions)

    # ----------------------------------------------------------------- sending
    def _persist(self, events: list[Event]) -> None:
        """Commit events to the outbox (with the claim of their cause, when in a handler); queue them after."""
        rows: list[OutboxRow] = []
        with self._committing():
            for pending in events:
                event = dataclasses.replace(pending, seq=self.store.next_seq(pending.type))
                envelope = event.to_dict()
                schemas.validate("envelope", envelope)
                payload = codec.encode(envelope, event.datacontenttype)
                if len(payload) > self.settings.bus.max_event_bytes:
                    raise ValueError(f"{event.type} is {len(payload)} bytes: put bulk data in an artifact")
                topic = topic_for(self.device, event.type)
                rows.append(self.store.add_outbox(event.id, topic, payload, event.datacontenttype, False))
            assert self._uncommitted is not None
            self._uncommitted.extend(rows)
        self.stats.emitted += len(rows)

    async def _sender(self, client: aiomqtt.Client, resend_since: float | None) -> None:
        """Send the outbox: everything unacknowledged first (after a restart or reconnect), then new events.

        With `resend_since` (a reconnect after a lost connection), rows acknowledged since then go
        again first. Publishes go to paho directly and each PUBACK marks its row sent from paho's
        callback: no task and no future per event (aiomqtt's publish() costs both), at most
        `max_inflight` open.
        """
        self._send_queue = asyncio.Queue()
        resent = self.store.sent_since(resend_since) if resend_since is not None else []
        if resent:
            log.info("re-sending %d event(s) acknowledged just before the connection was lost", len(resent))
        for row in [*resent, *self.store.pending()]:
            if row.rowid not in self._acked:
                self._send_queue.put_nowait(row)
        paho = client._client
        awaiting: dict[int, int] = {}  # paho message id -> outbox row id
        room = asyncio.Event()
        aiomqtt_on_publish: Any = paho.on_publish  # paho types it as a union of callback versions

        def on_publish(c: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
            rowid = awaiting.pop(mid, None)
            if rowid is None:  # one of aiomqtt's own publishes (health)
                aiomqtt_on_publish(c, userdata, mid, reason_code, properties)
                return
            if reason_code.is_failure:  # e.g. 135: a broker whose ACL predates this node's `produces`
                log.error("the broker refused an event (%s); it stays in the outbox", reason_code)
                self.set_status("degraded", REFUSED)
                room.set()
                return
            if self._reason == REFUSED:  # the broker takes our events again (re-rendered, restarted)
                self.set_status("online")
            self._acked.append(rowid)
            if len(self._acked) >= 256:
                self._flush_acked()
            room.set()

        paho.on_publish = on_publish
        self._awaiting = awaiting
        try:
            while True:
                row = await self._send_queue.get()
                while len(awaiting) >= self.max_inflight:
                    room.clear()
                    await room.wait()
                info = paho.publish(
                    row.topic,
                    row.payload,
                    qos=1,
                    retain=row.retain,
                    properties=publish_properties(row.content_type),
                )
                if info.rc != 0:  # not connected any more: the row stays in the outbox for the next session
                    log.warning("publish of %s failed (rc %d); it stays in the outbox", row.event_id, info.rc)
                    return
                awaiting[info.mid] = row.rowid
        finally:
            paho.on_publish = aiomqtt_on_publish
            self._awaiting = {}

    def _flush_acked(self) -> None:
        if self._acked and self._store is not None:
            acked, self._acked = self._acked, []
            try:
                self.store.mark_sent(acked, self.settings.bus.resend_window_s)
            except sqlite3.Error as exc:  # a full disk: kept for the next flush (a resend is deduped)
                self._acked = acked + self._acked
                log.warning("sent outbox rows not cleared yet: %s", exc)

    async def _drain(self, timeout: float) -> None:
        """Give queued and in-flight publishes a moment to be acknowledged before disconnecting."""
        deadline = time.monotonic() + timeout
        while (self._awaiting or not self._send_queue.empty()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far is acknowledged by the broker (for one-shot producers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._flush_acked()
            if self.store.outbox_depth() == 0:
                return True
            await asyncio.sleep(0.02)
        return False

    # ----------------------------------------------------------------- health
    def health_document(self, status: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node": self.node_name,
            "device": self.device,
            "status": status or self._status,
            "time": utc_now(),
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "details": {
                "epoch": self.epoch,
                "health_interval_s": self.settings.bus.health_interval_s,  # lets a monitor count missed beats
                "received": self.stats.received,
                "handled": self.stats.handled,
                "duplicates": self.stats.duplicates,
                "dead_letters": self.stats.dead_letters,
                "failures": self.stats.failures,
                "emitted": self.stats.emitted,
                "gaps": self.stats.gaps,
                "reconnects": self.stats.reconnects,
                "retrying": len(self._retrying),
                "outbox_depth": self._send_queue.qsize() + len(self._awaiting),
                "last_event_at": self.stats.last_event_at,
                **({"catchup": self._catchup.status()} if self._catchup is not None else {}),
                **self.health_details(),
            },
        }
        if self._reason and doc["status"] == "degraded":
            doc["reason"] = self._reason
        elif self._exit_reason and doc["status"] == "offline":  # not a stop on purpose: to be restarted
            doc["reason"] = self._exit_reason
        return doc

    def _health_topic(self) -> str:
        return health_topic(self.device, self.node_name)

    def _will(self) -> aiomqtt.Will:
        props = mqtt_properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = self.settings.mqtt.will_delay_s
        props.ContentType = JSON
        offline = self.health_document("offline")
        offline["reason"] = "connection lost (last will)"
        return aiomqtt.Will(self._health_topic(), json.dumps(offline), qos=1, retain=True, properties=props)

    async def _publish_outage(self, client: aiomqtt.Client, since: str, since_monotonic: float) -> None:
        """Record an outage the will could not report (the broker itself died): offline since then.

        A will is only sent by a broker that saw the connection drop; after a broker crash it never
        is, so the node publishes the record itself, timed when it lost the broker, before `online`.
        """
        doc = self.health_document("offline")
        doc["time"] = since
        doc["reason"] = f"broker connection lost; reconnected after {time.monotonic() - since_monotonic:.1f}s"
        await self._publish_health(client, document=doc)

    async def publish_document(
        self, topic: str, document: Any, content_type: str, *, retain: bool = False
    ) -> None:
        """Send a session message now (not an event: no envelope, no outbox), QoS 1, awaiting PUBACK.

        Raises MqttError when not connected; for answers whose asker asks again (catch-up pages) and
        for state that is re-sent when it changes (a dead child's retained health).
        """
        if self._client is None:
            raise MqttError("not connected")
        await self._client.publish(
            topic,
            codec.encode(document, content_type),
            qos=1,
            retain=retain,
            properties=publish_properties(content_type),
        )

    async def _publish_health(
        self, client: aiomqtt.Client, status: str | None = None, document: dict[str, Any] | None = None
    ) -> None:
        doc = document or self.health_document(status)
        schemas.validate("health", doc)
        try:
            await client.publish(
                self._health_topic(),
                codec.encode(doc, JSON),
                qos=1,
                retain=True,
                properties=publish_properties(JSON),
                timeout=5,
            )
        except MqttError as exc:
            log.warning("health not published: %s", exc)

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.bus.health_interval_s)
            self._flush_acked()
            for folded in self._storm.due(time.monotonic()):
                await self._publish_alert(folded)
            await self._publish_health(client)
