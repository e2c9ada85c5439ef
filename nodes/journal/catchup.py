"""The journal's side of catch-up (bus/catchup.py): which recorded events answer a `cmd.journal.replay`.

Pure reading, run in a thread: the journal's records from the asker's position up to the position
the journal had reached when the request was recorded, filtered by the asker's types, device and
age bound, cut into pages small enough for one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bus import codec, schemas
from bus.envelope import MSGPACK, Event, parse_time
from bus.topics import is_command, parse_topic, type_matches
from nodes.journal.store import iter_numbered

PAGE_EVENTS = 64  # a page is handled in one transaction by the asker, like a batch of live messages


@dataclass(frozen=True)
class ReplayRequest:
    id: str
    reply_to: str
    patterns: tuple[str, ...]
    start: int  # first journal position to answer with
    end: int  # the journal's next position when the request was recorded: the answer stops there
    since: datetime

    @classmethod
    def from_event(cls, event: Event, device: str, end: int) -> ReplayRequest:
        """Read a request; ValueError (or SchemaError) names what is wrong with it.

        The reply topic must be a catch-up topic of this device: the journal never publishes where
        an event tells it to otherwise. A position past the journal's end means the journal is not
        the one the asker caught up from (restored, or started afresh): it then gets everything
        within its age bound.
        """
        args = event.data.get("args")
        schemas.validate("catchup.request", args)
        assert isinstance(args, dict)
        if parse_topic(args["reply_to"])[0] != device:
            raise ValueError(f"reply_to {args['reply_to']!r} is not a topic of device {device}")
        after = int(args.get("after", 0))
        return cls(
            id=event.id,
            reply_to=args["reply_to"],
            patterns=tuple(args["types"]),
            start=after if after <= end else 0,
            end=end,
            since=parse_time(args["since"]),
        )

    def wants(self, record: dict[str, Any], device: str) -> dict[str, Any] | None:
        """The record's envelope if it answers this request (its types, this device, not too old)."""
        envelope = record.get("event")
        if not isinstance(envelope, dict) or envelope.get("device") != device:
            return None
        event_type = envelope.get("type")
        if not isinstance(event_type, str) or is_command(event_type):
            return None
        if not any(type_matches(event_type, pattern) for pattern in self.patterns):
            return None
        received = record.get("received_at")
        try:
            if isinstance(received, str) and parse_time(received) < self.since:
                return None
        except ValueError:
            pass  # a record without a readable time cannot be shown to be too old
        return envelope


def read_page(
    directory: Path, request: ReplayRequest, device: str, position: int, max_bytes: int
) -> tuple[list[dict[str, Any]], int]:
    """The envelopes of one page from `position` on, and the position the next page starts at.

    A page ends after `PAGE_EVENTS` envelopes or about `max_bytes` of them (at least one); the
    answer is complete when the returned position reaches `request.end`.
    """
    events: list[dict[str, Any]] = []
    size = 0
    for number, record in iter_numbered(directory, position):
        if number >= request.end:
            break
        envelope = request.wants(record, device)
        if envelope is None:
            continue
        events.append(envelope)
        size += len(codec.encode(envelope, MSGPACK))
        if len(events) >= PAGE_EVENTS or size >= max_bytes:
            return events, number + 1
    return events, request.end
