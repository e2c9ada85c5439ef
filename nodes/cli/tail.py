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

from bus.argtypes import mqtt_filter, non_negative_int
from bus.client import MqttError, stream
from bus.codec import DecodeError
from bus.config import Settings, load_settings
from nodes.ops.tail import format_line, topic_filter


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


async def _tail(settings: Settings, args: argparse.Namespace) -> None:
    seen = 0
    async for topic, document, content_type in stream(
        settings,
        [topic_filter(settings, args.filter)],
        f"vv-tail-{os.getpid()}",
        on_state=lambda note: print(f"vv tail: {note}", file=sys.stderr, flush=True),
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
