"""The central side of the fleet link: one MQTT connection to the central broker for the console.

Devices bridge `health/#`, `alert/#`, `logline/signed` and the bridge's own `bridge/state` to the
central broker; the console reads them for every device (`vv/+/...`) and writes only `cmd` events
back (`vv/<device>/cmd/...`, QoS 1). A device's bridge speaks MQTT 3.1.1 (see ARCHITECTURE.md,
Fleet), which strips the MQTT 5 content type: a message without one is decoded by the topic table
(health, alerts and commands are JSON; pipeline events msgpack unless the payload is JSON).

Everything arriving is a claim from a device: it is decoded, checked against schemas/ and against
its topic (an event under `vv/A/...` must say device A), and anything that fails is handed to the
`on_reject` callback (the console logs and counts it) instead of raising.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiomqtt import MqttError

from bus import codec, schemas
from bus.backoff import Backoff
from bus.envelope import JSON, Event, parse_time
from bus.topics import is_pipeline_event, parse_topic, topic_for
from bus.transport import Endpoint, Message, MqttTransport, Session

log = logging.getLogger("vv.fleet")

BRIDGE_STATE = "bridge.state"  # mosquitto's bridge notification topic: vv/<device>/bridge/state, "1"/"0"
STATE_FILTERS = ("vv/+/health/+", "vv/+/bridge/state")  # retained state: every replica reads all of it
EVENT_FILTERS = ("vv/+/alert/+", "vv/+/logline/signed")  # events: replicas may split them
FLEET_FILTERS = STATE_FILTERS + EVENT_FILTERS
MAX_MESSAGE_BYTES = 256 * 1024  # events are small by contract (ARCHITECTURE.md); a bigger one is refused


class FleetRejected(ValueError):
    """A message from the fleet is not what its topic promises; the message says why."""


@dataclass(frozen=True)
class FleetConnection:
    """How the console reaches the central broker: TLS with a client certificate, or plain (tests)."""

    host: str
    port: int
    client_id: str
    username: str = ""
    password: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    check_hostname: bool = True
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600  # alerts queue at the central broker while the console is down
    # QoS 1 messages the broker may have in flight to the console: a broker's default window (20 in
    # mosquitto) held the fleet to ~1,000 messages/s, one window per turn of the console's loop
    receive_maximum: int = 1000
    shared_group: str = ""  # replicas: events on $share/<group>/..., each delivered to one of them
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 30.0

    def filters(self) -> tuple[list[str], list[str]]:
        """(subscribe, unsubscribe): state always plain, since a broker delivers no retained message
        on a shared subscription (MQTT 5); events shared in a group, else plain. A replica's
        persistent session keeps what it subscribed before: the plain event filters a console that
        joins a group had go, or it would get every event twice."""
        if not self.shared_group:
            return list(FLEET_FILTERS), []
        shared = [f"$share/{self.shared_group}/{topic_filter}" for topic_filter in EVENT_FILTERS]
        return [*STATE_FILTERS, *shared], list(EVENT_FILTERS)

    def endpoint(self) -> Endpoint:
        return Endpoint(
            self.host,
            self.port,
            self.keepalive_s,
            self.username,
            self.password,
            self.tls_context(),
            self.session_expiry_s,
            self.receive_maximum,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """TLS when a CA is named; the client certificate (CN = the console's name) when given."""
        if not self.ca:
            return None
        context = ssl.create_default_context(cafile=self.ca)
        context.check_hostname = self.check_hostname
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context


@dataclass(frozen=True)
class FleetMessage:
    """One decoded message of one device: an event (alerts, LogLines), a health document, or the
    bridge's link state. `retained` marks the broker's stored copy (old news, not a live beat)."""

    device: str
    event_type: str
    retained: bool
    event: Event | None = None
    health: dict[str, Any] | None = None
    link_up: bool | None = None


def content_type_for(event_type: str, payload: bytes, content_type: str | None) -> str | None:
    """The codec of a message: its content type, else the topic table's (a 3.1.1 bridge strips it)."""
    if content_type is not None:
        return content_type
    if not is_pipeline_event(event_type):
        return JSON
    return None  # a pipeline event is msgpack, or JSON when the deployment says so: codec sniffs '{'


def decode_fleet(topic: str, payload: bytes, content_type: str | None, retained: bool) -> FleetMessage:
    """Decode and check one message from the central broker; raise FleetRejected naming the fault."""
    try:
        device, event_type = parse_topic(topic)
    except ValueError as exc:
        raise FleetRejected(str(exc)) from None
    if len(payload) > MAX_MESSAGE_BYTES:
        raise FleetRejected(f"oversized: {len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    if event_type == BRIDGE_STATE:
        if payload not in (b"0", b"1"):
            raise FleetRejected(f"bridge state is {payload[:16]!r}, not '0' or '1'")
        return FleetMessage(device, event_type, retained, link_up=payload == b"1")
    try:
        document = codec.decode(payload, content_type_for(event_type, payload, content_type))
    except codec.DecodeError as exc:
        raise FleetRejected(str(exc)) from None
    if not isinstance(document, dict):
        raise FleetRejected(f"payload is a {type(document).__name__}, not an object")
    try:
        if event_type.startswith("health."):
            schemas.validate("health", document)
            if document["device"] != device or f"health.{document['node']}" != event_type:
                raise FleetRejected(f"health of {document['node']}@{document['device']} on topic {topic}")
            _real_times(document["time"])
            return FleetMessage(device, event_type, retained, health=document)
        event = Event.from_dict(document)
    except (schemas.SchemaError, KeyError) as exc:
        raise FleetRejected(str(exc)) from None
    if event.type != event_type or event.device != device:
        raise FleetRejected(f"event {event.type}@{event.device} does not belong on topic {topic}")
    if not event.source.startswith(f"vv://{device}/"):
        raise FleetRejected(f"source {event.source} is not a node of {device}")
    line = event.data.get("line")
    _real_times(
        event.time,
        event.data.get("timestamp", event.time),  # an alert's own time
        line.get("created_at", event.time) if isinstance(line, dict) else event.time,  # a LogLine's
    )
    return FleetMessage(device, event_type, retained, event=event)


def _real_times(*values: Any) -> None:
    """The schemas check a time's shape; the calendar is checked here (a 30 February, an offset of
    25 hours pass the pattern and would stop the fold that reads them)."""
    for value in values:
        try:
            parse_time(value)
        except ValueError as exc:
            raise FleetRejected(str(exc)) from None


class FleetLink:
    """The console's persistent MQTT 5 session with the central broker, reconnected with backoff.

    A fixed client id and a session expiry let the broker queue the fleet's alerts and LogLines
    while the console is down. Messages are acknowledged only when the console says they are done
    (`on_message`'s second argument: after the store transaction that folded them committed), so a
    console that dies mid-batch gets them again from the broker; the fold's dedupe by event id makes
    a redelivery change nothing. The broker keeps at most `receive_maximum` unacknowledged messages
    in flight: a console that falls behind makes the backlog wait at the broker, not in its memory.
    Replicas (`shared_group`) take turns at the events; a dead replica's persistent session keeps its
    turns queued until it returns (mosquitto 2.0), and the survivors' gap checks ask the devices
    meanwhile. It runs on bus/transport.py's paho transport (manual acks, PUBACK reason codes).
    """

    def __init__(
        self,
        connection: FleetConnection,
        on_message: Callable[[FleetMessage, Callable[[], None]], None],
        on_reject: Callable[[str, str], None],
        on_connected: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.connection = connection
        self._on_message, self._on_reject, self._on_connected = on_message, on_reject, on_connected
        self._transport: MqttTransport | None = None
        self.connected = asyncio.Event()

    async def run(self, once: bool = False) -> None:
        """Stay connected and hand every message on; `once`: raise MqttError if the first connect fails."""
        conn = self.connection
        backoff = Backoff(conn.reconnect_min_s, conn.reconnect_max_s)
        ever = False
        while True:
            try:
                async with MqttTransport(conn.endpoint(), Session(conn.client_id, "")) as transport:
                    subscribe, unsubscribe = conn.filters()
                    await transport.subscribe(subscribe)
                    await transport.unsubscribe(unsubscribe)
                    log.info(
                        "connected to %s:%d, subscribed to %s", conn.host, conn.port, ", ".join(subscribe)
                    )
                    self._transport, ever = transport, True
                    self.connected.set()
                    backoff.reset()
                    if self._on_connected is not None:
                        await self._on_connected()
                    while True:
                        first = await transport.receive()
                        for message in [first, *transport.take_delivered()]:
                            self._handle(transport, message)
            except MqttError:
                if once and not ever:
                    raise
            finally:
                self._transport = None
                self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    def _handle(self, transport: MqttTransport, message: Message) -> None:
        try:
            decoded = decode_fleet(message.topic, message.payload, message.content_type, message.retain)
        except FleetRejected as exc:
            transport.ack(message)  # a refusal is final: the broker need not send it again
            self._on_reject(message.topic, str(exc))
            return
        self._on_message(decoded, functools.partial(transport.ack, message))

    async def publish(self, event: Event) -> str | None:
        """Send one command event, QoS 1, waiting for PUBACK: None if the broker took it, else its
        refusal (e.g. the ACL's 135); raises MqttError when not connected or on a timeout."""
        if not event.type.startswith("cmd."):
            raise ValueError(f"the console sends only commands, not {event.type}")
        transport = self._transport
        if transport is None:
            raise MqttError("not connected to the central broker")
        payload = codec.encode(event.to_dict(), JSON)
        return await transport.publish_wait(topic_for(event.device, event.type), payload, JSON)
