"""MQTT for tools (`vv tail`, `vv verify`, `vv replay`): aiomqtt configured for MQTT 5, with content
types; and the MQTT 5 properties every publisher shares. Nodes connect through bus/transport.py,
which needs manual acks and PUBACK reason codes that aiomqtt does not expose."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bus import codec
from bus.backoff import Backoff
from bus.config import Settings

MqttError = aiomqtt.MqttError


def mqtt_properties(packet_type: int) -> Properties:
    """paho's Properties is untyped; build them here so the rest of the code stays typed."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


@functools.cache
def publish_properties(content_type: str) -> Properties:
    """Shared per content type: paho only reads them, and building them costs ~100 us a publish."""
    props = mqtt_properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    return props


def make_client(settings: Settings, client_id: str, *, username: str = "") -> aiomqtt.Client:
    """A tool's client: a clean session that ends with it (a tool reads live or publishes and goes).

    It logs in as `username` (e.g. `vv-admin`; default: the read-only device user) unless the
    settings name a user explicitly."""
    username, password = settings.mqtt_credentials(username)
    connect_props = mqtt_properties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = 0
    tls_context = ssl.create_default_context(cafile=settings.mqtt.tls_ca) if settings.mqtt.tls_ca else None
    client = aiomqtt.Client(
        settings.mqtt.host,
        settings.mqtt.port,
        username=username,
        password=password or None,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        keepalive=settings.mqtt.keepalive_s,
        properties=connect_props,
        tls_context=tls_context,
        timeout=10,
        # paho leaves Nagle on: an ack followed at once by the next publish then waits for the
        # peer's delayed ACK, milliseconds per event on loopback.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    return client


def content_type_of(message: aiomqtt.Message) -> str | None:
    props = message.properties
    return getattr(props, "ContentType", None) if props is not None else None


def decode_message(message: aiomqtt.Message) -> Any:
    """Decode a message's payload by its MQTT 5 content type."""
    payload = message.payload
    if not isinstance(payload, bytes | bytearray):
        raise codec.DecodeError(f"unexpected payload type {type(payload).__name__}")
    return codec.decode(bytes(payload), content_type_of(message))


async def stream(
    settings: Settings,
    filters: list[str],
    client_id: str,
    on_state: Callable[[str], None] | None = None,
) -> AsyncIterator[tuple[str, Any, str | None]]:
    """Yield (topic, decoded document or DecodeError, content type) for live messages: for tools,
    as the read-only device user.

    A broker never reached raises MqttError. Once connected, a lost broker is waited for with the
    nodes' capped backoff and the stream resumes (`on_outage` hears of the loss and the return;
    what was published meanwhile is not replayed: this is a live view).
    """
    backoff = Backoff(settings.mqtt.reconnect_min_s, settings.mqtt.reconnect_max_s)
    connected = False
    while True:
        try:
            async with make_client(settings, client_id) as client:
                for topic_filter in filters:
                    await client.subscribe(topic_filter, qos=1)
                if on_state is not None:
                    on_state(
                        "broker back: live again (messages published meanwhile are not shown)"
                        if connected
                        else f"live on {settings.mqtt.host}:{settings.mqtt.port} ({', '.join(filters)})"
                    )
                connected = True
                backoff.reset()
                async for message in client.messages:
                    try:
                        document: Any = decode_message(message)
                    except codec.DecodeError as exc:
                        document = exc
                    yield str(message.topic), document, content_type_of(message)
        except MqttError as exc:
            if not connected:
                raise
            delay = backoff.next_delay()
            if on_state is not None:
                on_state(f"broker connection lost ({exc}); reconnecting in {delay:.1f}s")
            await asyncio.sleep(delay)


async def retained_document(settings: Settings, topic: str, client_id: str, timeout: float = 5.0) -> Any:
    """The decoded retained message on `topic` (e.g. a node's health), or None if the broker holds
    none within `timeout`: for tools that read a node's last word."""
    async with make_client(settings, client_id) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    if message.retain:
                        return decode_message(message)
        except TimeoutError:
            pass
    return None


async def publish_documents(
    settings: Settings,
    items: Iterable[tuple[str, dict[str, Any], str]],
    client_id: str,
    progress: Callable[[int], None] | None = None,
    *,
    username: str,
) -> int:
    """Publish (topic, document, content type) items with QoS 1 as `username`, each waiting for
    PUBACK; returns the count."""
    sent = 0
    async with make_client(settings, client_id, username=username) as client:
        for topic, document, content_type in items:
            await client.publish(
                topic,
                codec.encode(document, content_type),
                qos=1,
                properties=publish_properties(content_type),
            )
            sent += 1
            if progress is not None:
                progress(sent)
    return sent
