"""Dead letters: every message a node refused, kept with the reason so nothing is lost silently.

The store is bounded, because what fills it is often an attacker or a broken producer: a payload is
kept up to a prefix (with the sha256 of the whole), records older than the age limit go, and when
the file passes its size limit the oldest records go until it is at half of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from bus.alerts import Severity
from bus.envelope import parse_time, utc_now
from bus.fsutil import atomic_write_bytes


class DeadLetters:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        max_age_s: float = 30 * 86400.0,
        payload_bytes: int = 4096,
    ) -> None:
        self.path = path
        self.max_bytes, self.max_age_s, self.payload_bytes = max_bytes, max_age_s, payload_bytes
        path.parent.mkdir(parents=True, exist_ok=True)

    def notice(
        self, node: str, topic: str, reason: str, *, forged: bool, source: str | None
    ) -> tuple[Severity, str, str, list[str]]:
        """What the operator is told of a dead letter (severity, title, details, actions): a forged or
        corrupt event is CRITICAL, a stolen credential or a broken producer; the rest an ERROR."""
        if forged:
            return (
                "CRITICAL",
                "Forged or corrupt event refused",
                f"{node} refused an event on {topic} and touched nothing: {reason}",
                [
                    f"Inspect {self.path} and the event's source ({source or 'unknown'})",
                    "Events naming files outside storage or with wrong hashes mean a stolen credential or a "
                    "broken producer: rotate that node's MQTT secret and check the box",
                ],
            )
        return (
            "ERROR",
            "Message refused and dead-lettered",
            f"{node} could not accept a message on {topic}: {reason}",
            [
                f"Inspect {self.path} (payload kept base64-encoded with the reason)",
                "Fix the producer, then re-publish the message if it is still needed",
            ],
        )

    def put(
        self, *, node: str, topic: str, payload: bytes, content_type: str | None, reason: str
    ) -> dict[str, Any]:
        """Append one JSON line (payload prefix base64) and fsync: a dead letter is evidence."""
        kept = payload[: self.payload_bytes]
        record = {
            "time": utc_now(),
            "node": node,
            "topic": topic,
            "content_type": content_type,
            "reason": reason,
            "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "truncated": len(kept) < len(payload),
            "payload_b64": base64.b64encode(kept).decode("ascii"),
        }
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        if size > self.max_bytes:
            self.prune()
        return record

    def prune(self, now: float | None = None) -> int:
        """Drop records past the age limit, then the oldest until the file is at most half full;
        returns how many went. Called at start and whenever the file outgrows its limit."""
        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            return 0
        cutoff = (time.time() if now is None else now) - self.max_age_s
        kept = [line for line in lines if _record_time(line) >= cutoff]
        size, start = sum(map(len, kept)), 0
        if size > self.max_bytes:
            while start < len(kept) and size > self.max_bytes // 2:
                size -= len(kept[start])
                start += 1
        kept = kept[start:]
        if len(kept) < len(lines):
            atomic_write_bytes(self.path, b"".join(kept))
        return len(lines) - len(kept)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _record_time(line: bytes) -> float:
    """A record's time as a timestamp; a line that cannot be read counts as new (kept, not guessed)."""
    try:
        return parse_time(json.loads(line)["time"]).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return float("inf")
