"""The Node base: everything about MQTT a node needs, so a node's own file holds only its logic.

A node subscribes with `@on("<event type>")`, receives validated, deduplicated `Event`s, and
publishes with `await self.emit(...)`. The base connects (MQTT 5, persistent session, fixed
client id), reconnects with backoff, keeps a retained health document (LWT: offline), validates
both directions against `schemas/`, dead-letters what it cannot accept, and writes every
outgoing event to a durable outbox before sending it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes

from bus import codec, schemas
from bus.alerts import Severity, build_alert
from bus.backoff import Backoff
from bus.client import (
    MqttError,
    ack,
    content_type_of,
    decode_message,
    make_client,
    mqtt_properties,
    publish_properties,
)
from bus.config import Settings
from bus.deadletter import DeadLetters
from bus.envelope import JSON, MSGPACK, Event, utc_now
from bus.store import NodeStore, OutboxRow
from bus.topics import health_topic, is_pipeline_event, parse_topic, subscription, topic_for

__version__ = "0.1.0"

HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[None]])
log = logging.getLogger("vv.node")

# Events emitted while a handler runs are collected here and committed together with the
# "seen" mark of the input event: either the handler's whole effect is durable or none of it.
_handler_batch: contextvars.ContextVar[list[Event] | None] = contextvars.ContextVar(
    "handler_batch", default=None
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
    """A message that cannot be accepted; it goes to the dead-letter store with this reason."""


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
    last_seq: dict[tuple[str, int], int] = field(default_factory=dict)


class Node:
    """Base of every node process. Subclasses set `name` and add `@on(...)` handlers."""

    name: ClassVar[str] = ""
    shared_group: ClassVar[str] = ""  # e.g. "scan": workers of a stage split the load via $share
    max_inflight: ClassVar[int] = 20  # paho's own in-flight limit: more would only queue inside paho
    max_batch: ClassVar[int] = 64  # messages already delivered that are handled in one transaction

    def __init__(self, settings: Settings, instance: str = "") -> None:
        if not self.name:
            raise TypeError(f"{type(self).__name__} must set a node name")
        self.settings = settings
        self.device = settings.device
        self.instance = instance
        suffix = f"-{instance}" if instance else ""
        self.client_id = f"vv-{self.device}-{self.name}{suffix}"
        self.source = f"vv://{self.device}/{self.name}"
        self.paths = settings.paths
        self.state_dir = self.paths.state / "nodes" / f"{self.name}{suffix}"
        self.stats = NodeStats()
        self.epoch = 0
        self._store: NodeStore | None = None
        self._dead = DeadLetters(self.paths.state / "deadletter" / f"{self.name}{suffix}.jsonl")
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
        self._handlers = self._collect_handlers()
        self._routes: dict[str, Callable[[Event], Awaitable[None]] | None] = {}
        self._health_handlers = [
            getattr(self, attr)
            for attr in dir(type(self))
            if getattr(getattr(type(self), attr), "_vv_health", False)
        ]

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
            self._store = NodeStore(self.state_dir / "node.sqlite", self.settings.bus.outbox_sync)
        return self._store

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

        Inside a handler the event is committed with the handler's completion (unless
        `immediate`); elsewhere it is committed at once.
        """
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
        batch = _handler_batch.get()
        if batch is not None and not immediate:
            batch.append(event)
        else:
            self._persist([event])
        return event

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
        level = logging.ERROR if severity in ("ERROR", "CRITICAL") else logging.WARNING
        log.log(
            level if not resolved else logging.INFO,
            "alert %s %s: %s",
            severity,
            alert["status"],
            title,
            extra={"alert_id": alert["alert_id"], "alert_context": alert["context"], "details": details},
        )
        video = alert["context"].get("video")
        await self.emit(
            f"alert.{severity.lower()}",
            alert,
            subject=video if isinstance(video, str) else None,
            immediate=True,
        )
        return alert

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
        self._started = time.monotonic()
        log.info("starting %s epoch %d", self.client_id, self.epoch, extra={"epoch": self.epoch})
        await self.setup()
        background = loop.create_task(self._guard(self.background(), "background"))
        try:
            await self._connection_loop()
        finally:
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)
            await self.teardown()
            self.store.close()
        log.info("stopped")
        return 0

    def _on_signal(self) -> None:
        if self._stop.is_set():  # a second signal: stop now
            log.warning("second signal: exiting without finishing")
            os._exit(130)
        self.stop()

    async def _guard(self, work: Awaitable[None], what: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s crashed", what)
            self.set_status("degraded", f"{what} crashed: {exc}")

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
            client = make_client(self.settings, self.client_id, will=self._will(), manual_ack=True)
            try:
                async with client:
                    backoff.reset()
                    await self._session(client)
            except MqttError as exc:
                if self._stop.is_set():
                    break
                delay = backoff.next_delay()
                log.warning("broker connection lost or refused (%s); retrying in %.1fs", exc, delay)
                if self._lost_at is None:
                    self._lost_at = (utc_now(), time.monotonic())
                self.stats.reconnects += 1
                await self.sleep(delay)
            finally:
                self._client = None
                self._connected.clear()

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connected session: subscribe, announce, resend, consume until stop or disconnect."""
        for filt in self._subscriptions():
            await client.subscribe(filt, qos=1)
        self._client = client
        if self._lost_at is not None:
            await self._publish_outage(client, *self._lost_at)
            self._lost_at = None
        await self._publish_health(client)
        log.info("connected to %s:%d as %s", self.settings.mqtt.host, self.settings.mqtt.port, self.client_id)
        tasks = [
            asyncio.create_task(self._sender(client)),
            asyncio.create_task(self._heartbeat(client)),
        ]
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
            await self._drain(timeout=5.0)
            self._flush_acked()
            await self._publish_health(client, "offline")
        finally:
            self._consumer = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush_acked()

    def _subscriptions(self) -> list[str]:
        group = self.settings.bus.shared_group or self.shared_group
        filters = [subscription(self.device, pattern, group) for pattern in self._handlers]
        if self._health_handlers:
            filters.append(subscription(self.device, "health.*"))
        return filters

    def _collect_handlers(self) -> dict[str, Callable[[Event], Awaitable[None]]]:
        handlers: dict[str, Callable[[Event], Awaitable[None]]] = {}
        for attr in dir(type(self)):
            pattern = getattr(getattr(type(self), attr), "_vv_event_type", None)
            if pattern is not None:
                handlers[pattern] = getattr(self, attr)
        return handlers

    # ----------------------------------------------------------------- receiving
    async def _consume(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        async for message in messages:
            self._busy = True
            try:
                # A burst already delivered is handled in one transaction: a commit costs ~250 us,
                # five times the rest of the bookkeeping. Acks go out only after the commit.
                batch = [message]
                while len(batch) < self.max_batch and len(messages) > 0:
                    batch.append(await anext(messages))
                with self._committing():
                    for item in batch:
                        await self._receive(item)
                for item in batch:
                    ack(client, item)
            finally:
                self._busy = False
            if self._stop.is_set():
                return

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
                self._uncommitted = None
            raise
        if outer:
            rows, self._uncommitted = self._uncommitted or [], None
            for row in rows:
                self._send_queue.put_nowait(row)

    async def _receive(self, message: aiomqtt.Message) -> None:
        self.stats.received += 1
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        try:
            device, event_type = parse_topic(topic)
            if len(payload) > self.settings.bus.max_event_bytes:
                raise RejectedMessage(
                    f"oversized: {len(payload)} bytes > {self.settings.bus.max_event_bytes}"
                )
            document = decode_message(message)
            if event_type.startswith("health."):
                await self._receive_health(event_type, document)
                return
            if not isinstance(document, dict):
                raise RejectedMessage(f"payload is a {type(document).__name__}, not an event envelope")
            event = Event.from_dict(document)
            if event.type != event_type or event.device != device:
                raise RejectedMessage(f"event {event.type}@{event.device} does not belong on topic {topic}")
        except (RejectedMessage, codec.DecodeError, schemas.SchemaError, ValueError) as exc:
            await self._dead_letter(topic, bytes(payload), content_type_of(message), str(exc))
            return
        if not self.store.claim(event.id):  # rolled back with the batch if we crash before it commits
            self.stats.duplicates += 1
            log.debug("duplicate %s %s ignored", event.type, event.id)
            return
        self._track_seq(event)
        handler = self._handler_for(topic)
        if handler is None:
            return
        await self._dispatch(handler, event, topic, bytes(payload), content_type_of(message))

    async def _receive_health(self, event_type: str, document: Any) -> None:
        schemas.validate("health", document)
        for handler in self._health_handlers:
            await handler(event_type.split(".", 1)[1], document)

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
        handler: Callable[[Event], Awaitable[None]],
        event: Event,
        topic: str,
        payload: bytes,
        ctype: str | None,
    ) -> None:
        batch: list[Event] = []
        token = _handler_batch.set(batch)
        try:
            await handler(event)
        except Exception as exc:
            self.stats.failures += 1
            log.exception("handler for %s failed on %s", event.type, event.id, extra={"event_id": event.id})
            _handler_batch.reset(token)
            await self._dead_letter(
                topic, payload, ctype, f"handler failed: {type(exc).__name__}: {exc}", event
            )
            return
        _handler_batch.reset(token)
        self._persist(batch)
        self.stats.handled += 1
        self.stats.last_event_at = utc_now()

    def _track_seq(self, event: Event) -> None:
        """Per producer and epoch, a jump in `seq` means events we never got (shown in health)."""
        key = (event.source, event.epoch)
        last = self.stats.last_seq.get(key)
        if last is not None and event.seq > last + 1:
            self.stats.gaps += event.seq - last - 1
            log.warning("gap from %s epoch %d: seq %d after %d", event.source, event.epoch, event.seq, last)
        if last is None or event.seq > last:
            self.stats.last_seq[key] = event.seq

    async def _dead_letter(
        self, topic: str, payload: bytes, content_type: str | None, reason: str, event: Event | None = None
    ) -> None:
        self.stats.dead_letters += 1
        self._dead.put(node=self.name, topic=topic, payload=payload, content_type=content_type, reason=reason)
        log.error("dead-lettered message on %s: %s", topic, reason, extra={"topic": topic})
        if event is not None and event.source == self.source and event.type.startswith("alert."):
            return  # our own alert came back and failed: alerting again would loop forever
        context: dict[str, Any] = {"topic": topic, "node": self.name}
        if event is not None and event.subject:
            context["video"] = event.subject
        await self.raise_alert(
            "ERROR",
            "Message refused and dead-lettered",
            f"{self.name} could not accept a message on {topic}: {reason}",
            context=context,
            actions=[
                f"Inspect {self._dead.path} (payload kept base64-encoded with the reason)",
                "Fix the producer, then re-publish the message if it is still needed",
            ],
        )

    # ----------------------------------------------------------------- sending
    def _persist(self, events: list[Event]) -> None:
        """Commit events to the outbox (with the claim of their cause, when in a handler); queue them after."""
        rows: list[OutboxRow] = []
        with self._committing():
            for pending in events:
                event = dataclasses.replace(pending, seq=self.store.next_seq())
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

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Send the outbox: everything unacknowledged first (after a restart or reconnect), then new events.

        Publishes go to paho directly and each PUBACK marks its row sent from paho's callback: no
        task and no future per event (aiomqtt's publish() costs both), at most `max_inflight` open.
        """
        self._send_queue = asyncio.Queue()
        for row in self.store.pending():
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
            self.store.delete_sent(acked)

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
            "node": self.name + (f"-{self.instance}" if self.instance else ""),
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
                "outbox_depth": self._send_queue.qsize() + len(self._awaiting),
                "last_event_at": self.stats.last_event_at,
                **self.health_details(),
            },
        }
        if self._reason and doc["status"] == "degraded":
            doc["reason"] = self._reason
        return doc

    def _health_topic(self) -> str:
        return health_topic(self.device, self.name + (f"-{self.instance}" if self.instance else ""))

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
            await self._publish_health(client)
