"""The MQTT connection: aiomqtt configured for MQTT 5 persistent sessions, with content types."""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bus import codec
from bus.config import Settings

MqttError = aiomqtt.MqttError
Message = aiomqtt.Message


def mqtt_properties(packet_type: int) -> Properties:
    """paho's Properties is untyped; build them here so the rest of the code stays typed."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


@functools.cache
def publish_properties(content_type: str) -> Properties:
    """Shared per content type: paho only reads them, and building them costs ~100 us a publish."""
    props = mqtt_properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    return props


def make_client(
    settings: Settings,
    client_id: str,
    *,
    username: str = "",
    will: aiomqtt.Will | None = None,
    persistent: bool = True,
    manual_ack: bool = False,
) -> aiomqtt.Client:
    """A client that resumes its session (queued QoS 1 events survive our restarts) when persistent.

    It logs in as `username` (a node's own user, `vv-admin`; default: the read-only device user)
    unless the settings name a user explicitly."""
    username, password = settings.mqtt_credentials(username)
    connect_props = mqtt_properties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = settings.mqtt.session_expiry_s if persistent else 0
    tls_context = ssl.create_default_context(cafile=settings.mqtt.tls_ca) if settings.mqtt.tls_ca else None
    client = aiomqtt.Client(
        settings.mqtt.host,
        settings.mqtt.port,
        username=username,
        password=password or None,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        keepalive=settings.mqtt.keepalive_s,
        will=will,
        properties=connect_props,
        tls_context=tls_context,
        timeout=10,
        # paho leaves Nagle on: an ack followed at once by the next publish then waits for the
        # peer's delayed ACK, milliseconds per event on loopback.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    client.pending_calls_threshold = 1000  # we pipeline publishes on purpose; aiomqtt warns above this
    if manual_ack:
        # aiomqtt has no manual-ack API; the paho client it wraps does. Acking after the handler has
        # committed means a crash mid-event gets the event redelivered instead of lost.
        client._client.manual_ack_set(True)
    return client


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    if message.qos > 0:
        client._client.ack(message.mid, message.qos)


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
    settings: Settings, filters: list[str], client_id: str
) -> AsyncIterator[tuple[str, Any, str | None]]:
    """Yield (topic, decoded document or DecodeError, content type) for live messages: for tools,
    as the read-only device user."""
    async with make_client(settings, client_id, persistent=False) as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)
        async for message in client.messages:
            try:
                document: Any = decode_message(message)
            except codec.DecodeError as exc:
                document = exc
            yield str(message.topic), document, content_type_of(message)


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
    async with make_client(settings, client_id, username=username, persistent=False) as client:
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
