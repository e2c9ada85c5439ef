"""Re-publish events from the journal, unchanged (same ids: consumers that saw them skip them).

Use it to feed a node that lost its state, or to re-drive videos after fixing a stage.
Exit codes: 0 done, 1 broker or journal failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from bus.argtypes import rfc3339
from bus.broker import ADMIN_USER
from bus.client import MqttError, publish_documents
from bus.config import load_settings
from bus.inputs import shown
from nodes.journal.store import JournalError
from nodes.ops.replay import selected_events


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=rfc3339, help="events received at or after this RFC 3339 time (default: all)"
    )
    parser.add_argument("--type", dest="types", action="append", help="only this event type (repeatable)")
    parser.add_argument("--subject", help="only events about this video id")
    parser.add_argument("--dry-run", action="store_true", help="list what would be re-published")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        items = list(selected_events(args, settings.paths.journal))
    except (FileNotFoundError, JournalError) as exc:
        print(f"vv replay: {shown(exc)}", file=sys.stderr)
        return 1
    if args.dry_run:
        for topic, event, _ in items:
            print(shown(f"{event['time']}  {topic}  {event.get('subject', '-')}  {event['id']}"))
        print(f"{len(items)} event(s) would be re-published", file=sys.stderr)
        return 0

    def progress(sent: int) -> None:
        if sent % 1000 == 0 or sent == len(items):
            print(f"replayed {sent}/{len(items)}", file=sys.stderr)

    try:
        sent = asyncio.run(
            publish_documents(
                settings,
                items,
                f"vv-{settings.device}-replay-{os.getpid()}",
                progress,
                username=ADMIN_USER,  # re-publishes every node's event types
            )
        )
    except MqttError as exc:
        print(f"vv replay: broker: {exc}", file=sys.stderr)
        return 1
    print(f"re-published {sent} event(s)")
    return 0
