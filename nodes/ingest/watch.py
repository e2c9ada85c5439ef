"""Waking ingest when a file lands in `input/`: inotify where the kernel offers it, polling otherwise."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

IN_MOVED_TO = 0x80


_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


class DirWatch:
    """inotify on one directory through libc: any event only means "look again" (no event parsing)."""

    _MASK = 0x08 | IN_MOVED_TO | 0x100 | 0x04  # IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ATTRIB

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(directory), self._MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch({directory}) failed")
        self.fd: int = fd

    def drain(self) -> set[str]:
        """Read every pending event; returns the names renamed into the directory (IN_MOVED_TO):
        a writer that renames a finished file in has told us it is complete."""
        moved_in: set[str] = set()
        try:
            while chunk := os.read(self.fd, 65536):
                offset = 0
                while offset + _EVENT.size <= len(chunk):
                    _, mask, _, length = _EVENT.unpack_from(chunk, offset)
                    name = chunk[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                    if mask & IN_MOVED_TO and name:
                        moved_in.add(os.fsdecode(name))
                    offset += _EVENT.size + length
        except BlockingIOError:
            pass
        return moved_in

    def close(self) -> None:
        os.close(self.fd)
