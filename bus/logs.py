"""JSON-lines logging to `logs/app.log` (rotated by size, old files gzipped) and readable stderr."""

from __future__ import annotations

import gzip
import json
import logging
import logging.handlers
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={...}` fields (alert_id, video, ...) become top-level keys."""

    def __init__(self, node: str, device: str) -> None:
        super().__init__()
        self.node, self.device = node, device

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "node": self.node,
            "device": self.device,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


JsonFormatter.converter = time.gmtime


def _gzip_rotator(source: str, dest: str) -> None:
    with open(source, "rb") as src, gzip.open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(source)


def setup_logging(
    node: str,
    device: str,
    logs_dir: Path,
    level: str = "INFO",
    max_bytes: int = 20 * 1024 * 1024,
    backups: int = 10,
) -> None:
    """Send every record to `logs/app.log` as JSON and a short line to stderr for people and journald."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logs_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(
        logs_dir / "app.log", maxBytes=max_bytes, backupCount=backups
    )
    file_handler.namer = lambda name: name + ".gz"
    file_handler.rotator = _gzip_rotator
    file_handler.setFormatter(JsonFormatter(node, device))
    root.addHandler(file_handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(message)s"))
    root.addHandler(console)
    logging.getLogger("mqtt").setLevel(logging.WARNING)
