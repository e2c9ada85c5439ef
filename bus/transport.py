"""A node's connection to the broker, behind one small interface: the real one (`MqttTransport`) or
the in-process one of the fast tests (bus/inprocess.py) carry the same Node unchanged.

What a node needs from MQTT: a persistent MQTT 5 session with a will, QoS 1 subscriptions, manual
acks (a message is acknowledged only after the handler's transaction committed, so a crash gets it
redelivered instead of lost), and each publish's PUBACK reason code (a refusal, e.g. 135 from a
broker whose ACL predates the node's `produces`, keeps the event in the outbox). aiomqtt 2.x exposes
neither manual acks nor reason codes, so `MqttTransport` drives paho-mqtt through its public API,
from the asyncio loop with paho's socket callbacks (as paho's own asyncio example does).
The tools' helpers in bus/client.py stay on aiomqtt; both raise aiomqtt's `MqttError`.
"""

from __future__ import annotations

import abc
import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import paho.mqtt.client as paho
from aiomqtt import MqttCodeError, MqttError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bus.client import mqtt_properties, publish_properties
from bus.config import Settings

T = TypeVar("T")
TIMEOUT_S = 10.0  # connect, subscribe, an awaited publish, a graceful disconnect
READ_BURST = 500  # packets read in one turn of the loop at most (one turn per packet cost a turn each)

# Called once per publish with None when the broker took it, or the broker's refusal.
AckCallback = Callable[[str | None], None]


@dataclass(frozen=True)
class Message:
    """A delivered message: `mid` is what `Transport.ack` needs (0 for QoS 0: nothing to acknowledge)."""

    topic: str
    payload: bytes
    content_type: str | None = None
    qos: int = 1
    retain: bool = False
    mid: int = 0


@dataclass(frozen=True)
class Will:
    """Published by the broker, retained, if the connection drops without a DISCONNECT, after `delay_s`."""

    topic: str
    payload: bytes
    content_type: str
    delay_s: int


@dataclass(frozen=True)
class Session:
    """Who connects: a fixed client id and a persistent session, so QoS 1 events queue while away."""

    client_id: str
    username: str
    will: Will | None = None
    persistent: bool = True


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: the broker, a login or a client certificate (`tls`), the session's
    lifetime, and how many QoS 1 messages the broker may have in flight to us (0: its default)."""

    host: str
    port: int
    keepalive_s: int = 30
    username: str = ""
    password: str = ""
    tls: ssl.SSLContext | None = None
    session_expiry_s: int = 0
    receive_maximum: int = 0

    @classmethod
    def of_node(cls, settings: Settings, session: Session) -> Endpoint:
        """A node's: the device's broker, the node's own login, the configured session expiry."""
        mqtt = settings.mqtt
        username, password = settings.mqtt_credentials(session.username)
        return cls(
            mqtt.host,
            mqtt.port,
            mqtt.keepalive_s,
            username,
            password,
            ssl.create_default_context(cafile=mqtt.tls_ca) if mqtt.tls_ca else None,
            mqtt.session_expiry_s if session.persistent else 0,
        )


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (`+`, `#`), a `$share/<group>/` prefix included."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    return paho.topic_matches_sub(topic_filter, topic)


class Transport(abc.ABC):
    """One connection (use once: `async with`); a reconnect is a new transport on the same session.

    The common part: the inbox of delivered messages, the callbacks waiting for PUBACKs, and the end
    of the connection, which fails whatever waits on it with `MqttError`.
    """

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._acks: dict[int, AckCallback] = {}
        self._lost: asyncio.Future[None] | None = None

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect and wait for the broker to accept the session; raises MqttError."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Disconnect on purpose (no will)."""

    @abc.abstractmethod
    async def subscribe(self, filters: Sequence[str]) -> None:
        """Subscribe with QoS 1, awaiting the broker's SUBACK; raises MqttError."""

    @abc.abstractmethod
    def _send(self, topic: str, payload: bytes, content_type: str, retain: bool) -> int | None:
        """Hand a QoS 1 publish to the connection: its message id, None when not connected."""

    @abc.abstractmethod
    def ack(self, message: Message) -> None:
        """Acknowledge a delivered message (after the work it caused is committed)."""

    async def __aenter__(self) -> Self:
        self._lost = asyncio.get_running_loop().create_future()
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.connected:
            await self._close()
        self._connection_ended(None)

    @property
    def connected(self) -> bool:
        return self._lost is not None and not self._lost.done()

    def publish(
        self, topic: str, payload: bytes, content_type: str, *, on_ack: AckCallback, retain: bool = False
    ) -> bool:
        """Send with QoS 1 without waiting; `on_ack` hears the PUBACK. False when not connected (a
        connection lost meanwhile calls nothing: what was not acknowledged is sent again next time)."""
        mid = self._send(topic, payload, content_type, retain) if self.connected else None
        if mid is None:
            return False
        self._acks[mid] = on_ack
        return True

    async def publish_wait(
        self,
        topic: str,
        payload: bytes,
        content_type: str,
        *,
        retain: bool = False,
        timeout: float = TIMEOUT_S,
    ) -> str | None:
        """Send with QoS 1 and wait for the PUBACK: None if the broker took it, else its refusal.
        Raises MqttError when not connected, on a lost connection or after `timeout`."""
        acked: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def on_ack(refusal: str | None) -> None:
            if not acked.done():
                acked.set_result(refusal)

        if not self.publish(topic, payload, content_type, on_ack=on_ack, retain=retain):
            raise MqttError("not connected")
        return await self._until(acked, timeout)

    async def receive(self) -> Message:
        """The next delivered message; raises MqttError once the connection is gone."""
        return await self._until(asyncio.ensure_future(self._inbox.get()), None)

    def delivered(self) -> int:
        """How many messages are delivered and not yet taken by `receive`."""
        return self._inbox.qsize()

    def take_delivered(self) -> list[Message]:
        """Every message delivered and not yet taken, without waiting (a batch after `receive`)."""
        taken = []
        while not self._inbox.empty():
            taken.append(self._inbox.get_nowait())
        return taken

    async def _until(self, work: asyncio.Future[T], timeout: float | None) -> T:
        """The result of `work`, unless the connection ends first or `timeout` passes: MqttError."""
        assert self._lost is not None
        lost = self._lost
        try:
            waiting: set[asyncio.Future[Any]] = {work, lost}
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
        if work in done:
            return work.result()
        if lost.done():
            raise MqttError("connection lost") from lost.exception()
        raise MqttError("operation timed out")

    def _delivered(self, message: Message) -> None:
        self._inbox.put_nowait(message)

    def _acked(self, mid: int, refusal: str | None) -> None:
        callback = self._acks.pop(mid, None)
        if callback is not None:
            callback(refusal)

    def _connection_ended(self, error: MqttError | None) -> None:
        self._acks.clear()
        if self._lost is not None and not self._lost.done():
            if error is None:
                self._lost.set_result(None)
            else:
                self._lost.set_exception(error)
                self._lost.exception()  # retrieved here: nobody may be waiting on it


class MqttTransport(Transport):
    """The real connection: paho-mqtt, MQTT 5, driven by the running asyncio loop."""

    def __init__(self, endpoint: Endpoint, session: Session) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._paho = client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if endpoint.username:
            client.username_pw_set(endpoint.username, endpoint.password or None)
        if endpoint.tls is not None:
            client.tls_set_context(endpoint.tls)
        if session.will is not None:
            props = mqtt_properties(PacketTypes.WILLMESSAGE)
            props.WillDelayInterval = session.will.delay_s
            props.ContentType = session.will.content_type
            client.will_set(session.will.topic, session.will.payload, qos=1, retain=True, properties=props)
        self._connect_props = mqtt_properties(PacketTypes.CONNECT)
        self._connect_props.SessionExpiryInterval = endpoint.session_expiry_s
        if endpoint.receive_maximum:
            self._connect_props.ReceiveMaximum = endpoint.receive_maximum
        self._clean_start = not session.persistent
        self._loop = asyncio.get_running_loop()  # built by a node's connection loop, in its loop
        self._loop_thread = threading.get_ident()
        self._connack: asyncio.Future[None] | None = None
        self._suback: dict[int, asyncio.Future[None]] = {}
        self._misc: asyncio.Task[None] | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_subscribe  # both complete a waiting SUBACK/UNSUBACK future
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    # ------------------------------------------------------------- the interface
    async def _open(self) -> None:
        self._connack = self._loop.create_future()
        try:  # paho's connect blocks (TCP, TLS): in a thread, its socket callbacks come back threadsafe
            await self._loop.run_in_executor(None, self._connect)
        except (OSError, ValueError) as exc:
            raise MqttError(str(exc)) from None
        try:
            await self._until(self._connack, TIMEOUT_S)
        except MqttError:
            self._paho.disconnect()
            raise

    @classmethod
    def for_node(cls, settings: Settings, session: Session) -> MqttTransport:
        return cls(Endpoint.of_node(settings, session), session)

    def _connect(self) -> None:
        endpoint = self._endpoint
        self._paho.connect(
            endpoint.host,
            endpoint.port,
            endpoint.keepalive_s,
            clean_start=self._clean_start,
            properties=self._connect_props,
        )
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):
            # paho leaves Nagle on: an ack followed at once by the next publish then waits for the
            # peer's delayed ACK, milliseconds per event on loopback.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _close(self) -> None:
        if self._paho.disconnect() == paho.MQTT_ERR_SUCCESS:
            assert self._lost is not None
            await asyncio.wait({self._lost}, timeout=TIMEOUT_S)

    async def subscribe(self, filters: Sequence[str]) -> None:
        if filters:
            result, mid = self._paho.subscribe([(topic_filter, 1) for topic_filter in filters])
            await self._answered(result, mid, "subscribe")

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Drop subscriptions a persistent session kept from before, awaiting the UNSUBACK."""
        if filters:
            result, mid = self._paho.unsubscribe(list(filters))
            await self._answered(result, mid, "unsubscribe")

    async def _answered(self, result: int, mid: int | None, what: str) -> None:
        """Wait for the broker's SUBACK or UNSUBACK of a request paho took (or say it did not)."""
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise MqttCodeError(result, f"could not {what}")
        self._suback[mid] = self._loop.create_future()
        try:
            await self._until(self._suback[mid], TIMEOUT_S)
        finally:
            del self._suback[mid]

    def _send(self, topic: str, payload: bytes, content_type: str, retain: bool) -> int | None:
        info = self._paho.publish(
            topic, payload, qos=1, retain=retain, properties=publish_properties(content_type)
        )
        return info.mid if info.rc == paho.MQTT_ERR_SUCCESS else None

    def ack(self, message: Message) -> None:
        if message.qos > 0:
            self._paho.ack(message.mid, message.qos)

    # ------------------------------------------------------------- paho's callbacks (on the loop's thread)
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            if reason.is_failure:
                self._connack.set_exception(MqttCodeError(reason, "connection refused"))
            else:
                self._connack.set_result(None)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttCodeError(reason, "disconnected before the broker answered"))
            self._connack.exception()
        self._connection_ended(None if reason == 0 else MqttCodeError(reason, "unexpected disconnection"))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = message.properties
        self._delivered(
            Message(
                message.topic,
                bytes(message.payload),
                getattr(props, "ContentType", None) if props is not None else None,
                message.qos,
                bool(message.retain),
                message.mid,
            )
        )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._acked(mid, f"{reason} ({reason.value})" if reason.is_failure else None)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        future = self._suback.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    # ------------------------------------------------------------- driving paho from the asyncio loop
    def _soon(self, call: Callable[[], object]) -> None:
        """Run on the loop's thread: now if already there, else as soon as the loop can."""
        if threading.get_ident() == self._loop_thread:
            call()
        else:
            self._loop.call_soon_threadsafe(call)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def start() -> None:
            self._loop.add_reader(sock, self._read)
            self._misc = self._loop.create_task(self._housekeeping())

        self._soon(start)

    def _read(self) -> None:
        """Read what has arrived: paho reads one packet a call, so go on while calls deliver (up to
        READ_BURST, then let the loop's other work run); a call that delivers nothing found the
        socket drained or read another kind of packet. TLS may hold decrypted bytes the selector
        never announces: those are read too."""
        sock = self._paho.socket()
        for _ in range(READ_BURST):
            before = self._inbox.qsize()
            if self._paho.loop_read() != paho.MQTT_ERR_SUCCESS:
                return
            if self._inbox.qsize() == before and not (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                return

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def stop() -> None:
            self._loop.remove_reader(sock)
            if self._misc is not None:
                self._misc.cancel()

        self._soon(stop)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._soon(lambda: self._loop.add_writer(sock, self._paho.loop_write))

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._soon(lambda: self._loop.remove_writer(sock))

    async def _housekeeping(self) -> None:
        """Keepalive pings, and noticing a broker that stopped answering them."""
        while self._paho.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)
