"""Print live bus traffic decoded, one line each (device, type, subject, short data); --json for machines.

FILTER is an MQTT topic filter (`vv/+/alert/#`) or an event type pattern of this device (`scan.done`,
`alert.*`, `#`). A broker that restarts is waited for, like the nodes do. Exit codes: 0 stopped (Ctrl-C,
--count reached), 1 broker unreachable at start, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from bus.argtypes import mqtt_filter, non_negative_int
from bus.client import MqttError, stream
from bus.codec import DecodeError
from bus.config import Settings, load_settings
from bus.inputs import shown
from bus.topics import subscription


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "filter",
        nargs="?",
        default="#",
        type=mqtt_filter,
        help="topic filter or event type pattern (default: all of this device)",
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line: topic, content_type, payload"
    )
    parser.add_argument("--count", type=non_negative_int, default=0, help="stop after this many messages")


def topic_filter(settings: Settings, pattern: str) -> str:
    return pattern if "/" in pattern else subscription(settings.device, pattern)


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _gist(event_type: str, data: dict[str, Any]) -> str:
    """The one thing an operator wants to see of each pipeline event."""
    if event_type == "video.new":
        video = data["video"]
        return f"{data['original_name']}: {video['duration_s']:.1f} s, {video['bytes']} bytes"
    if event_type == "scan.done":
        return f"{data['backend']}: {_short(data['counts'], 80)}"
    if event_type == "summary.done":
        return str(data["text"])
    if event_type == "logline.signed":
        return f"seq {data['seq']}, key {data['key_id']}, hash {data['hash'][:16]}"
    if event_type == "video.quarantined":
        return f"{data['error_type']}: {data['error_message']}"
    return _short(data)


def format_line(topic: str, document: Any) -> str:
    """A readable line: events by type and subject, health by node and status, alerts by title.

    Anyone with a credential writes what is shown here: control characters come out escaped, so a
    message cannot clear or drive the operator's terminal."""
    return shown(_describe(topic, document))


def _describe(topic: str, document: Any) -> str:
    if isinstance(document, DecodeError):
        return f"{topic}  <undecodable: {document}>"
    if isinstance(document, dict) and "specversion" in document:
        data = document.get("data", {})
        stamp = str(document.get("time", ""))[11:23]
        head = f"{stamp} {document.get('device')} {document.get('type'):<18} {document.get('subject') or '-':<32}"
        if str(document.get("type", "")).startswith("alert."):
            return f"{head} [{data.get('status')}] {data.get('title')}: {data.get('message_details')}"
        try:
            return f"{head} {_gist(str(document.get('type')), data)}"
        except (KeyError, TypeError, ValueError):
            return f"{head} {_short(data)}"
    if isinstance(document, dict) and "/health/" in topic:
        stamp = str(document.get("time", ""))[11:23]
        reason = f" ({document['reason']})" if document.get("reason") else ""
        return f"{stamp} {document.get('device')} health.{document.get('node'):<11} {document.get('status')}{reason}"
    return f"{topic}  {_short(document)}"


async def _tail(settings: Settings, args: argparse.Namespace) -> None:
    seen = 0
    async for topic, document, content_type in stream(
        settings,
        [topic_filter(settings, args.filter)],
        f"vv-tail-{os.getpid()}",
        on_outage=lambda note: print(f"vv tail: {note}", file=sys.stderr, flush=True),
    ):
        if args.json:
            payload = {"error": str(document)} if isinstance(document, DecodeError) else document
            print(
                json.dumps({"topic": topic, "content_type": content_type, "payload": payload}, default=str),
                flush=True,
            )
        else:
            print(format_line(topic, document), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            return


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        asyncio.run(_tail(settings, args))
    except MqttError as exc:
        print(f"vv tail: broker {settings.mqtt.host}:{settings.mqtt.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
