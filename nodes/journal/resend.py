"""The journal's side of a gap re-send (`cmd.journal.resend`, from the fleet console): which recorded
events answer it. Pure reading, run in a thread.

The console saw a jump in a producer's `seq` (its alerts, or the LogLine chain) that the bridge did
not fill. The journal holds the original envelopes, so it re-publishes them as they were (same ids,
epoch and seq, on their own topics) and the console dedupes by id. Only what the bridge carries
and the journal's broker user may write (`RESENDABLE`) is answered, and only from the last
`journal.resend_max_age_s` of the journal: older news is past any console's session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.envelope import Event
from bus.schemas import validate_command_args
from bus.topics import type_matches
from nodes.journal.store import iter_records

RESEND = "cmd.journal.resend"
RESENDABLE = ("alert.*", "logline.signed")  # the bridged event types; the journal's grant follows
CHAIN_TYPE = "logline.signed"
MAX_EVENTS = 10_000  # one request re-sends at most this many seqs: a console asks per gap


@dataclass(frozen=True)
class ResendRequest:
    """A range of one producer's events by envelope seq, or of LogLines by their chain seq."""

    type: str
    by: str  # "seq" or "chain"
    first: int
    last: int
    source: str = ""
    epoch: int = 0

    @classmethod
    def from_event(cls, event: Event) -> ResendRequest:
        """Read a request; ValueError (SchemaError is one) names what is wrong with it."""
        args = event.data.get("args")
        validate_command_args(event.type, args)
        assert isinstance(args, dict)
        request = cls(
            args["type"],
            args["by"],
            args["first"],
            args["last"],
            args.get("source", ""),
            args.get("epoch", 0),
        )
        if not any(type_matches(request.type, pattern) for pattern in RESENDABLE):
            raise ValueError(f"{request.type} is not re-sent: only {', '.join(RESENDABLE)} cross the bridge")
        if request.by == "chain" and request.type != CHAIN_TYPE:
            raise ValueError(f"by=chain is for {CHAIN_TYPE}, not {request.type}")
        if not 0 <= request.last - request.first < MAX_EVENTS:
            raise ValueError(f"range {request.first}..{request.last} is empty or longer than {MAX_EVENTS}")
        return request

    def wants(self, envelope: dict[str, Any]) -> bool:
        """Whether a recorded envelope of this device is in the requested range."""
        if envelope.get("type") != self.type:
            return False
        if self.by == "chain":
            data = envelope.get("data")
            seq = data.get("seq") if isinstance(data, dict) else None
        elif envelope.get("source") == self.source and envelope.get("epoch") == self.epoch:
            seq = envelope.get("seq")
        else:
            return False
        return isinstance(seq, int) and self.first <= seq <= self.last

    def describe(self) -> str:
        producer = "the LogLine chain" if self.by == "chain" else f"{self.source} epoch {self.epoch}"
        return f"{self.type} of {producer}, seq {self.first}..{self.last}"


def find_resend(directory: Path, request: ResendRequest, device: str, since: str) -> list[dict[str, Any]]:
    """The recorded envelopes answering `request`, once each, in journal order (records from `since`)."""
    found: dict[str, dict[str, Any]] = {}
    for record in iter_records(directory, since=since, skip_corrupt=True):
        envelope = record.get("event")
        if isinstance(envelope, dict) and envelope.get("device") == device and request.wants(envelope):
            found.setdefault(str(envelope.get("id")), envelope)
    return list(found.values())
