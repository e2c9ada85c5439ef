"""Which journal events `vv replay` re-publishes, and where each goes (its topic and content type)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from bus.topics import topic_for
from nodes.journal.store import iter_records


def selected_events(args: argparse.Namespace, journal: Any) -> Iterator[tuple[str, dict[str, Any], str]]:
    for record in iter_records(journal, since=args.since):
        event = record.get("event")
        if not isinstance(event, dict):
            continue
        if args.types and event.get("type") not in args.types:
            continue
        if args.subject and event.get("subject") != args.subject:
            continue
        yield topic_for(event["device"], event["type"]), event, event["datacontenttype"]
