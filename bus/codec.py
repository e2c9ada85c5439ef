"""Payload codecs chosen by the MQTT 5 content type: msgpack for pipeline events, JSON for people."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack

from bus.envelope import JSON, MSGPACK

MAX_DEPTH = 32  # events are a few levels deep; bulk data lives in artifact files


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
    """Decode by content type; without one (MQTT 3 publishers, mosquitto_pub) sniff JSON by its '{'.

    Only JSON data comes out: anything either codec could not encode again is refused here (see
    `check_json_data`), so no consumer meets it later.
    """
    if content_type is None:
        content_type = JSON if payload[:1] in (b"{", b"[") else MSGPACK
    try:
        if content_type == MSGPACK:
            document = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_no_ext)
        elif content_type == JSON:
            document = json.loads(payload)
        else:
            raise DecodeError(f"unsupported content type {content_type!r}")
    except DecodeError:
        raise
    # RecursionError: json.loads of "[[[[..." a few thousand deep
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise DecodeError(f"payload is not valid {content_type}: {exc}") from None
    check_json_data(document)
    return document


def _check_utf8(text: str) -> None:
    """JSON's "\\udcff" decodes to a lone surrogate, which no UTF-8 writer (msgpack, files) accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError("a string holds a lone surrogate") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not JSON data")


def check_json_data(document: Any) -> None:
    """Raise DecodeError unless `document` is JSON data both codecs can write back.

    Refused: nesting deeper than MAX_DEPTH (the validators and encoders recurse), NaN and
    infinities (JSON has none, and LogLines forbid them), integers outside 64 bits and lone
    surrogates (msgpack has neither), bytes, non-string keys and msgpack timestamps. Iterative:
    a deep document cannot exhaust the stack here.
    """
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is str:
            if not value.isascii():
                _check_utf8(value)
            continue
        if kind is bool or value is None:
            continue
        if kind is int:
            if not -(2**63) <= value < 2**64:
                raise DecodeError("an integer does not fit in 64 bits")
        elif kind is float:
            if not math.isfinite(value):
                raise DecodeError(f"{value} is not a finite number")
        elif kind is dict or kind is list:
            if depth > MAX_DEPTH:
                raise DecodeError(f"nested deeper than {MAX_DEPTH} levels")
            if kind is dict:
                for key in value:
                    if type(key) is not str:
                        raise DecodeError("an object key is not a string")
                    if not key.isascii():
                        _check_utf8(key)
                value = value.values()
            stack.extend((item, depth + 1) for item in value)
        else:
            raise DecodeError(f"a {kind.__name__} is not JSON data")
