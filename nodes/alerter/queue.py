"""A bounded on-disk FIFO per channel, so no notification is lost while a channel is down.

Each item is one JSON file `<seq>.json` written atomically, removed only once delivered (or
refused for good). The bound (`alerter.queue_max`) keeps a long outage from filling the disk:
past it the oldest item is dropped, counted and logged. An unreadable file is renamed
`*.corrupt` and skipped, never deleted.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bus.fsutil import atomic_write_json

log = logging.getLogger("vv.alerter.queue")


class DiskQueue:
    def __init__(self, directory: Path, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("a queue must hold at least one item")
        self.directory, self.max_items = directory, max_items
        directory.mkdir(parents=True, exist_ok=True)
        self._files: deque[Path] = deque(sorted(directory.glob("*.json")))
        self._next = int(self._files[-1].stem) + 1 if self._files else 1
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._files)

    def put(self, item: Mapping[str, Any]) -> None:
        """Append durably; drop the oldest item first when the queue is full."""
        while len(self._files) >= self.max_items:
            oldest = self._files.popleft()
            oldest.unlink(missing_ok=True)
            self.dropped += 1
            log.error(
                "queue %s full (%d): dropped the oldest notification %s",
                self.directory.name,
                self.max_items,
                oldest.name,
            )
        path = self.directory / f"{self._next:012d}.json"
        atomic_write_json(path, item)
        self._next += 1
        self._files.append(path)

    def peek(self) -> tuple[Path, dict[str, Any]] | None:
        """The oldest readable item (unreadable ones are set aside), without removing it."""
        while self._files:
            path = self._files[0]
            try:
                item = json.loads(path.read_text())
                if not isinstance(item, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                self._files.popleft()
                continue
            except (OSError, ValueError) as exc:
                self._files.popleft()
                path.replace(path.with_suffix(".corrupt"))
                log.error("queue item %s unreadable (%s): kept as .corrupt", path, exc)
                continue
            return path, item
        return None

    def remove(self, path: Path) -> None:
        """Forget a delivered item."""
        if self._files and self._files[0] == path:
            self._files.popleft()
        path.unlink(missing_ok=True)
