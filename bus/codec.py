"""Payload codecs chosen by the MQTT 5 content type: msgpack for pipeline events, JSON for people."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from bus.envelope import JSON, MSGPACK


class DecodeError(ValueError):
    """The payload is not valid in the codec its content type names."""


def encode(document: Any, content_type: str) -> bytes:
    if content_type == MSGPACK:
        return bytes(msgpack.packb(document, use_bin_type=True))
    if content_type == JSON:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    raise ValueError(f"unknown content type {content_type!r}")


def decode(payload: bytes, content_type: str | None) -> Any:
    """Decode by content type; without one (MQTT 3 publishers, mosquitto_pub) sniff JSON by its '{'."""
    if content_type is None:
        content_type = JSON if payload[:1] in (b"{", b"[") else MSGPACK
    try:
        if content_type == MSGPACK:
            return msgpack.unpackb(payload, raw=False, strict_map_key=True)
        if content_type == JSON:
            return json.loads(payload)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"payload is not valid {content_type}: {exc}") from None
    raise DecodeError(f"unsupported content type {content_type!r}")
