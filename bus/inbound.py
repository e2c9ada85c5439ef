"""The inbound path: from a delivered message to a handled event, exactly once in effect.

Each message is decoded by its content type (sniffed when a 3.1.1 publisher or bridge sent none),
validated (health against its schema, events as envelopes on their own topic), deduplicated by
event id (and claimed once across a shared group); a command past its `until` is dropped there
(logged, acknowledged), for every node at once. The rest go to their `@on` handler inside a
savepoint: the handler's store writes, its events and the "seen" mark of its input commit together
or not at all. A burst already delivered is handled in one
transaction and acknowledged to the broker only after it committed, so a crash gets it redelivered.

Failures have two shapes. A handler's OSError is transient (storage, a lock): the message stays
unacknowledged and is retried with capped backoff, alerting after a few tries and resolving once
it works. Anything else is permanent: the message goes to the dead-letter store with an alert.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus import codec, schemas
from bus.backoff import Backoff
from bus.catchup import Catchup, GroupClaims
from bus.config import ConfigError
from bus.contract import Handler, HealthHandler
from bus.deadletter import DeadLetters
from bus.envelope import Event, parse_time, utc_now
from bus.outbox import Outbox
from bus.topics import is_catchup_reply, is_command, parse_topic, subscription, topic_for
from bus.transport import Message, Transport, topic_matches

if TYPE_CHECKING:
    from bus.node import Node

log = logging.getLogger("vv.node")


class RejectedMessage(ValueError):
    """A message that cannot be accepted, ever; it goes to the dead-letter store with this reason."""


class RefusedClaim(RejectedMessage):
    """An event whose claims about files (place, size, hash, provenance) do not hold: forged or
    corrupt. Dead-lettered with `alert.critical`; the handler touched nothing."""


_STORE_FAULTS = ("disk is full", "disk I/O error", "database is locked", "unable to open", "readonly")


def is_transient(exc: BaseException) -> bool:
    """Whether a handler's failure may pass by itself, so the message is retried instead of refused.

    OSError is the environment (storage full, read-only or failing, a lock held, a timeout): the same
    message works once that is fixed. Anything else (a refusal, a schema or validation error, a bug)
    would fail the same way again: dead-lettered at once.
    """
    if isinstance(exc, sqlite3.OperationalError):  # the node's own store: a full or failing disk, a lock
        return any(sign in str(exc) for sign in _STORE_FAULTS)
    return isinstance(exc, OSError) and not isinstance(exc, RejectedMessage)


def _context(node: str, topic: str, event: Event | None) -> dict[str, Any]:
    """An alert's context for a message: where it came, which node, and its video when it has one."""
    context: dict[str, Any] = {"topic": topic, "node": node}
    if event is not None and event.subject:
        context["video"] = event.subject
    return context


class _Transient(Exception):
    """A handler failed transiently; its message is kept unacknowledged for a retry."""

    def __init__(self, key: str, label: str, context: dict[str, Any], error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.key, self.label, self.context = key, label, context


@dataclass(eq=False)
class _Delivery:
    """A delivered message and, once it failed transiently, when and how often it is tried again."""

    message: Message
    backoff: Backoff
    attempts: int = 0
    due: float = 0.0  # monotonic time of the next try
    first_failure: str = ""  # UTC


class Inbound:
    """The receiving side of one node: `consume` a connection's messages until stop or disconnect."""

    def __init__(
        self,
        node: Node,
        outbox: Outbox,
        handlers: Mapping[str, Handler],
        health_handlers: Sequence[HealthHandler],
    ) -> None:
        bus = node.settings.bus
        if not 0 < bus.retry_min_s <= bus.retry_max_s or bus.retry_alert_after < 1:
            raise ConfigError(
                "bus.retry_min_s must be > 0 and <= bus.retry_max_s, bus.retry_alert_after at least 1"
            )
        self.node, self.outbox = node, outbox
        self.dead = DeadLetters(
            node.paths.state / "deadletter" / f"{node.node_name}.jsonl",
            max_bytes=bus.deadletter_max_bytes,
            max_age_s=bus.deadletter_max_age_days * 86400,
            payload_bytes=bus.deadletter_payload_bytes,
        )
        self.handlers, self.health_handlers = handlers, health_handlers
        self.catchup: Catchup | None = None
        self.busy = False  # handling a batch: a stop lets it finish
        self.retrying: list[_Delivery] = []
        self._routes: dict[str, Handler | None] = {}
        self._group_claims: GroupClaims | None = None

    def close(self) -> None:
        if self._group_claims is not None:
            self._group_claims.close()

    # ----------------------------------------------------------------- batches
    async def consume(self, transport: Transport) -> None:
        """Handle delivered messages in batches; one that failed transiently waits, unacknowledged, for
        its retry while the others go on (a stop or a lost connection leaves it to be redelivered)."""
        self.retrying = []
        incoming: asyncio.Future[Message] | None = None
        try:
            while True:
                if incoming is None:  # one pending read, never cancelled while running: nothing is lost
                    incoming = asyncio.ensure_future(transport.receive())
                next_retry = min((d.due for d in self.retrying), default=None)
                timeout = None if next_retry is None else max(0.0, next_retry - time.monotonic())
                await asyncio.wait({incoming}, timeout=timeout)
                self.busy = True  # from here stop() lets the batch finish
                try:
                    now = time.monotonic()
                    batch = [d for d in self.retrying if d.due <= now]
                    self.retrying = [d for d in self.retrying if d.due > now]
                    if incoming.done():
                        batch.append(self._delivery(incoming.result()))
                        incoming = None
                        # A burst already delivered is handled in one transaction: a commit costs
                        # ~250 us, five times the rest of the bookkeeping. Acks go out after the commit.
                        while len(batch) < self.node.max_batch and transport.delivered() > 0:
                            batch.append(self._delivery(await transport.receive()))
                    if batch:  # empty when woken a hair before a retry is due
                        await self._handle_batch(transport, batch)
                finally:
                    self.busy = False
                if self.node.stopping:
                    return
        finally:
            if incoming is not None:
                incoming.cancel()

    def _delivery(self, message: Message) -> _Delivery:
        bus = self.node.settings.bus
        return _Delivery(message, Backoff(bus.retry_min_s, bus.retry_max_s))

    async def _handle_batch(self, transport: Transport, batch: list[_Delivery]) -> None:
        """One transaction for the batch; acks only for what it committed as handled or refused.

        When the transaction itself fails transiently (the store's disk is full: a claim or the commit
        cannot be written), nothing of the batch is done: every message waits for its retry, as a
        failed handler's would, instead of the node crashing into a restart loop."""
        node = self.node
        done: list[Message] = []
        try:
            with self.outbox.committing():
                for delivery in batch:
                    try:
                        await self.receive(delivery.message)
                    except _Transient as failure:
                        await self._retry_later(delivery, failure)
                    else:
                        done.append(delivery.message)
        except Exception as exc:
            if not is_transient(exc):
                raise
            context = {"node": node.name, "topic": batch[0].message.topic}
            store = _Transient(self._store_fault_key, "its state store", context, exc)
            for delivery in batch:
                if delivery not in self.retrying:
                    await self._retry_later(delivery, store)
            return
        if self._store_fault_key in node.alerts:
            await node.alerts.resolve(self._store_fault_key, f"{node.name} writes its state store again")
        for message in done:
            transport.ack(message)

    @property
    def _store_fault_key(self) -> str:
        return f"bus:store:{self.node.node_name}"

    async def _retry_later(self, delivery: _Delivery, failure: _Transient) -> None:
        """Schedule the next try (capped backoff); alert.error once it has failed `retry_alert_after` times."""
        name, cfg = self.node.name, self.node.settings.bus
        delivery.attempts += 1
        delivery.first_failure = delivery.first_failure or utc_now()
        delay = delivery.backoff.next_delay()
        delivery.due = time.monotonic() + delay
        self.retrying.append(delivery)
        log.warning(
            "%s failed transiently (attempt %d): %s; retrying in %.1fs",
            failure.label,
            delivery.attempts,
            failure,
            delay,
            extra={"topic": failure.context["topic"]},
        )
        if delivery.attempts >= cfg.retry_alert_after:
            await self.node.alerts.fire(
                failure.key,
                "ERROR",
                "Message keeps failing, retrying",
                f"{name} cannot handle {failure.label} ({delivery.attempts} attempts since "
                f"{delivery.first_failure}): {failure}. It stays unacknowledged and is retried "
                f"at least every {cfg.retry_max_s:g}s; it is not dead-lettered.",
                context=failure.context,
                actions=[
                    "Fix what the error names (storage full, read-only or failing, permissions, a lock)",
                    f"Nothing to re-publish: {name} finishes the message once it works again",
                ],
            )

    # ----------------------------------------------------------------- one message
    async def receive(self, message: Message) -> None:
        """Decode, validate, dedupe and dispatch one message (also the path of replayed events)."""
        node = self.node
        node.stats.received += 1
        topic, payload, ctype = message.topic, message.payload, message.content_type
        try:
            device, event_type = parse_topic(topic)
            if is_catchup_reply(event_type):
                await self._receive_catchup(message)
                return
            document = self._decode(event_type, message)
            health = event_type.startswith("health.")
            event = None if health else self._envelope(topic, device, event_type, document)
        except (RejectedMessage, codec.DecodeError, schemas.SchemaError, ValueError) as exc:
            await self._dead_letter(topic, payload, ctype, str(exc))
            return
        if event is None:
            source = event_type.split(".", 1)[1]
            call = functools.partial(self._receive_health, source, document)
            await self._dispatch(call, f"health of {source}", message)
            return
        if not self._claim(event):  # rolled back with the batch if we crash before it commits
            node.stats.duplicates += 1
            log.debug("duplicate %s %s ignored", event.type, event.id)
            return
        if self._expired(event):
            return  # acknowledged with the batch: an expired command is never retried
        self._track_seq(event)
        handler = self._handler_for(topic)
        if handler is None:
            return
        try:
            await self._dispatch(
                functools.partial(handler, event), f"{event.type} {event.id}", message, event
            )
        except _Transient:
            node.store.unclaim(event.id)  # not handled yet: its retry (or redelivery) is no duplicate
            raise

    def _expired(self, event: Event) -> bool:
        """A command past its `until` is not applied: checked here, once, for every node's handlers.

        A 3.1.1 bridge strips MQTT 5 message expiry, so commands carry their expiry in their data
        (schemas/cmd.schema.json); one that waited out a link outage longer than that is stale.
        """
        until = event.data.get("until") if is_command(event.type) else None
        if not isinstance(until, str):
            return False
        late = time.time() - parse_time(until).timestamp()
        if late <= 0:
            return False
        self.node.stats.expired_commands += 1
        log.info(
            "expired command %s %s not applied: %.1fs past its until %s",
            event.type,
            event.id,
            late,
            until,
            extra={"event_id": event.id, "topic": topic_for(event.device, event.type)},
        )
        return True

    def _claim(self, event: Event) -> bool:
        """Dedupe by event id: for this node, and once across the workers of its shared group."""
        node = self.node
        if not node.store.claim(event.id):
            return False
        if not node.group:
            return True
        if self._group_claims is None:
            self._group_claims = GroupClaims(node.paths.state / "groups" / f"{node.group}.sqlite")
        return self._group_claims.take(event.id, node.node_name)

    async def _receive_catchup(self, message: Message) -> None:
        """A page of the journal's answer: ours is replayed; the journal (on `#`) sees every node's."""
        if self.catchup is None or message.topic != self.catchup.reply_topic:
            return
        page = codec.decode(message.payload, message.content_type)
        if not isinstance(page, dict):
            raise RejectedMessage(f"catch-up page is a {type(page).__name__}, not a map")
        await self.catchup.on_page(page)

    def _decode(self, event_type: str, message: Message) -> Any:
        """The decoded document; raises what makes the message a dead letter."""
        limit = self.node.settings.bus.max_event_bytes
        if len(message.payload) > limit:
            raise RejectedMessage(f"oversized: {len(message.payload)} bytes > {limit}")
        document = codec.decode(message.payload, message.content_type)
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

    async def _receive_health(self, source: str, document: Any) -> None:
        for handler in self.health_handlers:
            await handler(source, document)

    def _handler_for(self, topic: str) -> Handler | None:
        if topic not in self._routes:  # a node sees a handful of topics: match each once
            device = self.node.device
            self._routes[topic] = next(
                (
                    handler
                    for pattern, handler in self.handlers.items()
                    if topic_matches(subscription(device, pattern), topic)
                ),
                None,
            )
        return self._routes[topic]

    def _track_seq(self, event: Event) -> None:
        """Per producer, epoch and event type, a jump in `seq` means events we never got (in health)."""
        stats = self.node.stats
        key = (event.source, event.epoch, event.type)
        last = stats.last_seq.get(key)
        if last is not None and event.seq > last + 1:
            stats.gaps += event.seq - last - 1
            log.warning("gap from %s epoch %d: seq %d after %d", event.source, event.epoch, event.seq, last)
        if last is None or event.seq > last:
            stats.last_seq[key] = event.seq

    # ----------------------------------------------------------------- handlers and their failures
    async def _dispatch(
        self, call: Callable[[], Awaitable[None]], label: str, message: Message, event: Event | None = None
    ) -> None:
        """Run a handler inside a savepoint: its store writes and its events commit only if it succeeds.

        A transient failure raises `_Transient` (the caller keeps the message for a retry); any other
        failure dead-letters the message. Either way the handler's alerts stand.
        """
        node = self.node
        topic = message.topic
        with self.outbox.handler_scope() as scope:
            try:
                with node.store.savepoint():
                    await call()
                    self.outbox.persist(scope.events)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
        for kept in scope.kept:
            self.outbox.persist_or_spool(kept)
        key = f"bus:retry:{event.id if event is not None else topic}"
        if failure is None:
            if event is not None:
                node.stats.handled += 1
                node.stats.last_event_at = utc_now()
            await node.alerts.resolve(key, f"{node.name} handled {label}: it works again")
            return
        node.stats.failures += 1
        if is_transient(failure):
            raise _Transient(key, label, _context(node.name, topic, event), failure) from failure
        payload, ctype = message.payload, message.content_type
        if isinstance(failure, RefusedClaim):  # a refusal is the check working, not a crash
            await self._dead_letter(topic, payload, ctype, f"refused claim: {failure}", event, forged=True)
        else:
            log.error("handler for %s failed", label, exc_info=failure, extra={"topic": topic})
            reason = f"handler failed: {type(failure).__name__}: {failure}"
            await self._dead_letter(topic, payload, ctype, reason, event)
        await node.alerts.resolve(key, f"{node.name} gave up on {label}: dead-lettered")

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
        node = self.node
        node.stats.dead_letters += 1
        self.dead.put(node=node.name, topic=topic, payload=payload, content_type=content_type, reason=reason)
        log.error("dead-lettered message on %s: %s", topic, reason, extra={"topic": topic})
        if event is not None and event.source == node.source and event.type.startswith("alert."):
            return  # our own alert came back and failed: alerting again would loop forever
        source = event.source if event is not None else None
        severity, title, details, actions = self.dead.notice(
            node.name, topic, reason, forged=forged, source=source
        )
        await node.raise_alert(
            severity, title, details, context=_context(node.name, topic, event), actions=actions
        )
