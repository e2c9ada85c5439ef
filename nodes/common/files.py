"""Placing a file whole (moved atomically, or copied through a temporary name) under a name that fits:
how ingest stores a video and how every node quarantines one."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from bus.fsutil import CHUNK, fsync_dir

NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs)
TEMP_ROOM = 14  # what a temporary name adds: ".<name>.<8 random>.tmp" (atomic writes), ".<name>.part"


def place_file(src: Path, dest: Path, *, copy: bool = False) -> None:
    """Move (or copy) `src` to `dest` so that `dest` is either absent or whole, across filesystems too."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            fsync_dir(dest.parent)
            fsync_dir(src.parent)
            return
    partial = dest.with_name(f".{dest.name}.part")  # fixed name: a retry after a crash overwrites it
    try:
        with src.open("rb") as reader, partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    if not copy:
        src.unlink()
        fsync_dir(src.parent)


def fit_name(name: str, room: int = 0) -> str:
    """`name` with its stem cut (on a character boundary) so that `room` more bytes still fit in
    NAME_MAX: escaping lengthens a name, a quarantined one gets `-N` and `.meta.json`, and a
    255-byte name (85 CJK characters) is a legal one to arrive with."""
    excess = len(os.fsencode(name)) + room - NAME_MAX
    if excess <= 0:
        return name
    stem, suffix = os.path.splitext(name)
    encoded = os.fsencode(stem)
    return encoded[: max(0, len(encoded) - excess)].decode("utf-8", "ignore") + suffix
