"""JSON-lines logging to `logs/app.log` (rotated by size, old files gzipped) and readable stderr."""

from __future__ import annotations

import contextlib
import fcntl
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

from bus.inputs import shown

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
        line = json.dumps(doc, default=str, ensure_ascii=False)
        # json escapes C0 controls only: DEL, C1 (\x9b is a terminal's CSI), U+2028 and the surrogates
        # of undecodable file names would reach `tail -f app.log` raw, or fail to encode at all
        return (
            line if line.isprintable() else "".join(c if c.isprintable() else _json_escape(c) for c in line)
        )


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class ConsoleFormatter(logging.Formatter):
    """A short line for people: control characters in a message (a file name, a topic) escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return shown(super().formatMessage(record))


JsonFormatter.converter = time.gmtime


def _gzip_rotator(source: str, dest: str) -> None:
    with open(source, "rb") as src, gzip.open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(source)


class SharedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """One app.log written by every node process of the device.

    Every write holds a shared lock and a rotation the exclusive one, taken by whichever process
    finds the file full; the others then notice the new inode and reopen (as WatchedFileHandler
    does) instead of writing into a file that is being compressed away.
    """

    def __init__(self, filename: Path, max_bytes: int, backups: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups)
        self._lock_fd = os.open(f"{self.baseFilename}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._identity = self._opened_identity()

    def _opened_identity(self) -> tuple[int, int]:
        assert self.stream is not None
        st = os.fstat(self.stream.fileno())
        return st.st_dev, st.st_ino

    def _reopen_if_rotated(self) -> None:
        try:
            st = os.stat(self.baseFilename)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current != self._identity:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            self._identity = self._opened_identity()

    def emit(self, record: logging.LogRecord) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        try:
            with contextlib.suppress(OSError):
                self._reopen_if_rotated()
            super().emit(record)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def shouldRollover(self, record: logging.LogRecord) -> int:
        try:
            return int(os.stat(self.baseFilename).st_size >= self.maxBytes > 0)
        except FileNotFoundError:
            return 0

    def doRollover(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # converts our shared lock; writers wait
        self._reopen_if_rotated()
        if self.shouldRollover(logging.makeLogRecord({})):  # nobody rotated it meanwhile
            super().doRollover()
        self._identity = self._opened_identity()

    def close(self) -> None:
        super().close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


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
    file_handler = SharedRotatingFileHandler(logs_dir / "app.log", max_bytes, backups)
    file_handler.namer = lambda name: name + ".gz"
    file_handler.rotator = _gzip_rotator
    file_handler.setFormatter(JsonFormatter(node, device))
    root.addHandler(file_handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(ConsoleFormatter(f"%(asctime)s {node} %(levelname)s %(message)s"))
    root.addHandler(console)
    logging.getLogger("mqtt").setLevel(logging.WARNING)
