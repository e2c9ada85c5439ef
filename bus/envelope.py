"""The event envelope: CloudEvents 1.0 attribute names in structured mode, ids are UUIDv7."""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bus import schemas

JSON = "application/json"
MSGPACK = "application/msgpack"

_uuid_lock = threading.Lock()
_uuid_last = (0, 0)


def uuid7() -> str:
    """RFC 9562 UUIDv7: 48-bit Unix ms, then a 12-bit counter so ids from one process stay ordered."""
    global _uuid_last
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _uuid_last
        if ms <= last_ms:
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:
                ms, counter = last_ms + 1, 0
        else:
            counter = int.from_bytes(os.urandom(2)) & 0x7FF
        _uuid_last = (ms, counter)
    rand = int.from_bytes(os.urandom(8)) & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))


def utc_now() -> str:
    """RFC 3339 UTC with milliseconds, the one timestamp format on the bus."""
    return rfc3339(datetime.now(UTC))


def rfc3339(when: datetime) -> str:
    """An aware datetime in the bus's timestamp format (UTC, milliseconds, `Z`)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """An RFC 3339 time as an aware datetime (a time without offset is taken as UTC): the one parser
    of times for the bus and every node. Raises ValueError naming the value."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """One event as it travels on the bus; `data` is validated against the type's schema."""

    type: str
    source: str
    device: str
    epoch: int
    seq: int
    data: dict[str, Any]
    datacontenttype: str = MSGPACK
    subject: str | None = None
    causationid: str | None = None
    id: str = field(default_factory=uuid7)
    time: str = field(default_factory=utc_now)
    dataschema: str = ""

    def to_dict(self) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "dataschema": self.dataschema or schemas.schema_id(schemas.schema_name_for(self.type)),
            "device": self.device,
            "epoch": self.epoch,
            "seq": self.seq,
            "data": self.data,
        }
        if self.subject is not None:
            envelope["subject"] = self.subject
        if self.causationid is not None:
            envelope["causationid"] = self.causationid
        return envelope

    @classmethod
    def from_dict(cls, envelope: dict[str, Any]) -> Event:
        """Build from a decoded envelope after checking it and its data against their schemas."""
        schemas.validate("envelope", envelope)
        schemas.validate(schemas.schema_name_for(envelope["type"]), envelope["data"])
        return cls(
            type=envelope["type"],
            source=envelope["source"],
            device=envelope["device"],
            epoch=envelope["epoch"],
            seq=envelope["seq"],
            data=envelope["data"],
            datacontenttype=envelope["datacontenttype"],
            subject=envelope.get("subject"),
            causationid=envelope.get("causationid"),
            id=envelope["id"],
            time=envelope["time"],
            dataschema=envelope["dataschema"],
        )

    @property
    def node(self) -> str:
        """The producing node, from `vv://<device>/<node>`."""
        return self.source.rsplit("/", 1)[-1]
