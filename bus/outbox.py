"""The outbox: an event a node emits is committed to its store before it is sent and leaves it only
once the broker acknowledged it, so neither a crash nor a lost connection loses one.

Inside a handler, emitted events wait in the handler's scope and commit with its transaction (a
failed handler leaves none). A committed row is sent by the sender, at most `max_inflight` unacknowledged;
a PUBACK marks it sent, a refusal (reason code >= 128) keeps it for the next session and degrades
the node's health. After a lost connection, rows acknowledged within `bus.resend_window_s` go again
(a broker killed outright forgets what it had in flight). Alerts and commands the disk cannot hold
are spooled: sent from memory, because news of a failing box must not depend on its disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bus import codec, schemas
from bus.client import MqttError
from bus.config import Settings
from bus.envelope import Event
from bus.health import NodeStats
from bus.store import NodeStore, OutboxRow
from bus.topics import parse_topic, topic_for
from bus.transport import Transport

log = logging.getLogger("vv.node")

SPOOLED_PREFIXES = ("alert.", "cmd.")  # sent from memory when the disk cannot hold them
ACKED_FLUSH = 256  # acknowledged rows marked sent in one store transaction


@dataclass
class HandlerScope:
    """What a running handler emitted: `events` are committed only if it succeeds (with its own store
    writes and the "seen" mark of its input), `kept` (alerts, `immediate`) whatever its fate."""

    events: list[Event] = field(default_factory=list)
    kept: list[Event] = field(default_factory=list)


_handler_scope: contextvars.ContextVar[HandlerScope | None] = contextvars.ContextVar(
    "handler_scope", default=None
)


class Outbox:
    """One per node: persists emitted events, sends them over the current transport, spools."""

    def __init__(
        self,
        settings: Settings,
        stats: NodeStats,
        *,
        store: Callable[[], NodeStore],
        transport: Callable[[], Transport | None],
        on_refusal: Callable[[bool], None],
        max_inflight: int,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self._store, self._transport, self._on_refusal = store, transport, on_refusal
        self.max_inflight = max_inflight
        self._queue: asyncio.Queue[OutboxRow] = asyncio.Queue()
        self._inflight: set[int] = set()  # rows published in this session, awaiting their PUBACK
        self._acked: list[int] = []
        self._uncommitted: list[OutboxRow] | None = None
        self._spool: collections.deque[tuple[str, bytes, str]] = collections.deque(maxlen=1000)

    # ----------------------------------------------------------------- persisting
    def add(self, event: Event, *, immediate: bool) -> None:
        """Inside a handler, keep the event for the handler's commit (an `immediate` one whatever the
        handler's fate); elsewhere persist it now."""
        scope = _handler_scope.get()
        if scope is None:
            self.persist_or_spool(event)
        else:
            (scope.kept if immediate else scope.events).append(event)

    @contextlib.contextmanager
    def handler_scope(self) -> Iterator[HandlerScope]:
        """Collect what a handler emits; the caller persists `events` in the handler's savepoint."""
        scope = HandlerScope()
        token = _handler_scope.set(scope)
        try:
            yield scope
        finally:
            _handler_scope.reset(token)

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """One store transaction; the events it persisted are sent only once it has committed."""
        outer = self._uncommitted is None
        if outer:
            self._uncommitted = []
        try:
            with self._store().transaction():
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
                self._queue.put_nowait(row)

    def persist(self, events: list[Event]) -> None:
        """Commit events to the outbox (with the claim of their cause, when in a handler); queue them after."""
        store = self._store()
        rows: list[OutboxRow] = []
        with self.committing():
            for pending in events:
                event = dataclasses.replace(pending, seq=store.next_seq(pending.type))
                envelope = event.to_dict()
                schemas.validate("envelope", envelope)
                payload = codec.encode(envelope, event.datacontenttype)
                if len(payload) > self.settings.bus.max_event_bytes:
                    raise ValueError(f"{event.type} is {len(payload)} bytes: put bulk data in an artifact")
                topic = topic_for(event.device, event.type)
                rows.append(store.add_outbox(event.id, topic, payload, event.datacontenttype, False))
            assert self._uncommitted is not None
            self._uncommitted.extend(rows)
        self.stats.emitted += len(rows)

    def persist_or_spool(self, event: Event) -> None:
        """Persist one event now; an alert or command the disk cannot take is sent from memory."""
        try:
            self.persist([event])
        except (OSError, sqlite3.Error) as exc:
            if not event.type.startswith(SPOOLED_PREFIXES):
                raise
            event = dataclasses.replace(event, seq=self._store().next_seq(event.type, reserve=False))
            payload = codec.encode(event.to_dict(), event.datacontenttype)
            self._spool_row(topic_for(event.device, event.type), payload, event.datacontenttype)
            log.warning("%s could not be persisted (%s): sending it from memory", event.type, exc)

    # ----------------------------------------------------------------- the spool
    def _spool_row(self, topic: str, payload: bytes, content_type: str) -> None:
        self._spool.append((topic, payload, content_type))
        transport = self._transport()
        if transport is not None:
            asyncio.get_running_loop().create_task(self.send_spool(transport))

    async def send_spool(self, transport: Transport) -> None:
        """Send what is spooled, oldest first; what the connection cannot take waits for the next one."""
        while self._spool:
            topic, payload, content_type = self._spool[0]
            try:
                await transport.publish_wait(topic, payload, content_type, timeout=5)
            except MqttError:  # sent on the next connection
                return
            self._spool.popleft()

    # ----------------------------------------------------------------- sending
    async def send(self, transport: Transport, resend_since: float | None) -> None:
        """Send the outbox: everything unacknowledged first (after a restart or reconnect), then new events.

        With `resend_since` (a reconnect after a lost connection), rows acknowledged since then go
        again first. Each PUBACK marks its row sent from the transport's callback: no task and no
        future per event, at most `max_inflight` open.
        """
        store = self._store()
        self._queue = asyncio.Queue()
        resent = store.sent_since(resend_since) if resend_since is not None else []
        if resent:
            log.info("re-sending %d event(s) acknowledged just before the connection was lost", len(resent))
        for row in [*resent, *store.pending()]:
            if row.rowid not in self._acked:
                self._queue.put_nowait(row)
        room = asyncio.Event()
        inflight = self._inflight = set()

        def acked(rowid: int, refusal: str | None) -> None:
            inflight.discard(rowid)
            room.set()
            self._on_refusal(refusal is not None)
            if refusal is not None:  # e.g. 135: a broker whose ACL predates this node's `produces`
                log.error("the broker refused an event (%s); it stays in the outbox", refusal)
                return
            self._acked.append(rowid)
            if len(self._acked) >= ACKED_FLUSH:
                self.flush_acked()

        try:
            while True:
                row = await self._queue.get()
                while len(inflight) >= self.max_inflight:
                    room.clear()
                    await room.wait()
                sent = transport.publish(
                    row.topic,
                    row.payload,
                    row.content_type,
                    retain=row.retain,
                    on_ack=functools.partial(acked, row.rowid),
                )
                if not sent:  # not connected any more: the row stays in the outbox for the next session
                    log.warning("publish of %s failed (not connected); it stays in the outbox", row.event_id)
                    return
                inflight.add(row.rowid)
        finally:
            self._inflight = set()

    def flush_acked(self) -> None:
        """Mark acknowledged rows sent; a store that cannot take it now keeps them for the next flush."""
        if self._acked:
            acked, self._acked = self._acked, []
            try:
                self._store().mark_sent(acked, self.settings.bus.resend_window_s)
            except sqlite3.Error as exc:  # a full disk: kept for the next flush (a resend is deduped)
                self._acked = acked + self._acked
                log.warning("sent outbox rows not cleared yet: %s", exc)

    def depth(self) -> int:
        """Events waiting to be sent or acknowledged in this session (for the health document)."""
        return self._queue.qsize() + len(self._inflight)

    async def drain(self, timeout: float) -> None:
        """Give queued and in-flight publishes a moment to be acknowledged before disconnecting."""
        deadline = time.monotonic() + timeout
        while self.depth() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything emitted so far is acknowledged by the broker (for one-shot producers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.flush_acked()
            if self._store().outbox_depth() == 0:
                return True
            await asyncio.sleep(0.02)
        return False
