"""Dead letters: every message a node refused, kept with the reason so nothing is lost silently."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from bus.envelope import utc_now


class DeadLetters:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def put(
        self, *, node: str, topic: str, payload: bytes, content_type: str | None, reason: str
    ) -> dict[str, Any]:
        """Append one JSON line (payload base64) and fsync: a dead letter is evidence."""
        record = {
            "time": utc_now(),
            "node": node,
            "topic": topic,
            "content_type": content_type,
            "reason": reason,
            "bytes": len(payload),
            "payload_b64": base64.b64encode(payload).decode("ascii"),
        }
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
