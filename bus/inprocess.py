"""An in-process broker and transport, so a Node runs inside a test without mosquitto: its receive,
validate, dedupe and commit logic is exercised in milliseconds (the real-broker tests stay as they
are). The pattern of FastStream's TestBroker: the same Node, another transport.

It keeps what the Node relies on from MQTT: QoS 1 delivery to every matching subscription (one
member of a `$share/<group>/` subscription each), retained messages on subscribe, persistent
sessions that queue while their client is away, manual acks (what was delivered and not
acknowledged is delivered again when the session reconnects), refused publishes with reason code
135 (as an ACL would), and the will of a connection that breaks. Not kept: QoS 0 and 2, flow
control, the will delay (a broken connection's will goes out at once), session expiry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from bus.client import MqttError
from bus.config import Settings
from bus.transport import Message, Session, Transport, topic_matches

NOT_AUTHORIZED = "Not authorized (135)"


@dataclass(eq=False)
class _ClientSession:
    """The broker's side of one client id: what it subscribed to, and what waits for it."""

    client_id: str
    persistent: bool
    filters: list[str] = field(default_factory=list)
    queued: list[Message] = field(default_factory=list)  # arrived while the client was away
    unacked: dict[int, Message] = field(default_factory=dict)  # delivered, not acknowledged
    transport: InProcessTransport | None = None
    mids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def deliver(self, message: Message) -> None:
        if self.transport is None:
            self.queued.append(message)
            return
        delivered = dataclasses.replace(message, mid=next(self.mids))
        self.unacked[delivered.mid] = delivered
        self.transport.arrived(delivered)


class InProcessBroker:
    """One broker for a test; `transport` is the factory a Node takes (`Node(settings, transport=...)`)."""

    def __init__(self) -> None:
        self.published: list[Message] = []  # every publish the broker took, in order: for assertions
        self.retained: dict[str, Message] = {}
        self._sessions: dict[str, _ClientSession] = {}
        self._refused: list[str] = []
        self._turns: dict[tuple[str, str], int] = {}  # round robin of each shared subscription

    def transport(self, settings: Settings, session: Session) -> InProcessTransport:
        """A connection to this broker (the signature of a Node's transport factory)."""
        return InProcessTransport(self, session)

    def refuse(self, topic_filter: str) -> None:
        """From now on, refuse publishes on matching topics as an ACL would (reason code 135)."""
        self._refused.append(topic_filter)

    def allow(self, topic_filter: str) -> None:
        self._refused.remove(topic_filter)

    def publish(self, topic: str, payload: bytes, content_type: str, *, retain: bool = False) -> str | None:
        """Take a message and route it; None, or the refusal when an ACL-like rule refuses it."""
        if any(topic_matches(refused, topic) for refused in self._refused):
            return NOT_AUTHORIZED
        message = Message(topic, payload, content_type, retain=retain)
        self.published.append(message)
        if retain:
            if payload:
                self.retained[topic] = message
            else:  # an empty retained message clears the topic
                self.retained.pop(topic, None)
        live = dataclasses.replace(message, retain=False)
        shared: dict[tuple[str, str], list[_ClientSession]] = {}
        for session in self._sessions.values():
            matching = [f for f in session.filters if topic_matches(f, topic)]
            if any(not f.startswith("$share/") for f in matching):
                session.deliver(live)
            for topic_filter in matching:
                if topic_filter.startswith("$share/"):
                    group = topic_filter.split("/", 2)[1]
                    shared.setdefault((group, topic_filter), []).append(session)
        for key, members in shared.items():
            online = [m for m in members if m.transport is not None] or members
            turn = self._turns.get(key, 0)
            self._turns[key] = turn + 1
            online[turn % len(online)].deliver(live)
        return None

    def drop(self, client_id: str) -> None:
        """Break a client's connection without a DISCONNECT (a crash, a cut cable): its will goes out."""
        session = self._sessions[client_id]
        if session.transport is not None:
            session.transport.broken(MqttError("connection lost (in-process broker dropped it)"))

    def unacked(self, client_id: str) -> int:
        """How many delivered messages the client has not acknowledged."""
        return len(self._sessions[client_id].unacked)

    # ----------------------------------------------------------------- what its transports call
    def connect(self, transport: InProcessTransport, session: Session) -> None:
        """A client connects: a persistent session resumes (unacknowledged, then queued messages)."""
        known = self._sessions.get(session.client_id)
        if known is not None and known.transport is not None:  # the same client id: taken over
            known.transport.broken(MqttError("session taken over"))
        if known is None or not session.persistent:
            known = self._sessions[session.client_id] = _ClientSession(session.client_id, session.persistent)
        known.transport = transport
        for message in known.unacked.values():  # redelivered first, as MQTT resends them
            transport.arrived(message)
        waiting, known.queued = known.queued, []
        for message in waiting:
            known.deliver(message)

    def disconnect(self, transport: InProcessTransport, graceful: bool) -> None:
        """A client goes: with a DISCONNECT (`graceful`) or not, and then its will is published."""
        known = self._sessions.get(transport.session.client_id)
        if known is None or known.transport is not transport:
            return
        known.transport = None
        if not known.persistent:
            del self._sessions[known.client_id]
        will = transport.session.will
        if not graceful and will is not None:
            self.publish(will.topic, will.payload, will.content_type, retain=True)

    def subscribe(self, transport: InProcessTransport, filters: Sequence[str]) -> None:
        """Add subscriptions; the retained messages they match are delivered at once."""
        known = self._sessions[transport.session.client_id]
        for topic_filter in filters:
            if topic_filter not in known.filters:
                known.filters.append(topic_filter)
            if not topic_filter.startswith("$share/"):  # MQTT 5: no retained messages to shared ones
                for message in list(self.retained.values()):
                    if topic_matches(topic_filter, message.topic):
                        known.deliver(message)

    def acknowledge(self, transport: InProcessTransport, mid: int) -> None:
        """The client is done with a delivered message: it is not delivered again."""
        known = self._sessions.get(transport.session.client_id)
        if known is not None and known.transport is transport:
            known.unacked.pop(mid, None)


class InProcessTransport(Transport):
    """A connection to an `InProcessBroker`; PUBACKs come back on the next turn of the loop."""

    def __init__(self, broker: InProcessBroker, session: Session) -> None:
        super().__init__()
        self.broker, self.session = broker, session
        self._mids = itertools.count(1)

    async def _open(self) -> None:
        self.broker.connect(self, self.session)

    async def _close(self) -> None:
        self.broker.disconnect(self, graceful=True)

    async def subscribe(self, filters: Sequence[str]) -> None:
        self.broker.subscribe(self, filters)

    def _send(self, topic: str, payload: bytes, content_type: str, retain: bool) -> int | None:
        refusal = self.broker.publish(topic, payload, content_type, retain=retain)
        mid = next(self._mids)
        asyncio.get_running_loop().call_soon(self._acked, mid, refusal)
        return mid

    def ack(self, message: Message) -> None:
        if message.qos > 0:
            self.broker.acknowledge(self, message.mid)

    def arrived(self, message: Message) -> None:
        """The broker delivers a message on this connection."""
        self._delivered(message)

    def broken(self, error: MqttError) -> None:
        """The connection breaks: whatever waits on it fails, the broker sends the will."""
        self.broker.disconnect(self, graceful=False)
        self._connection_ended(error)
