"""Inputs from outside the bus (config files, paths and names on the command line): checked, shown safely.

A name may hold any byte but '/' and NUL: "a\\x1b[2J\\n.mp4" is a valid file name, and printed raw
it clears the terminal and splits a one-line message in two. A path may also name a FIFO or a
device, whose read blocks forever or never ends. These helpers refuse such inputs before anything
reads them, and escape what is printed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class InputError(ValueError):
    """An input from outside cannot be used; the message names it (escaped)."""


def shown(value: object) -> str:
    """`value` as text with control and other non-printable characters escaped repr-style.

    Printable text (any script) is kept as is; "\\x1b", "\\n", "\\u2028" and the surrogates that
    stand for undecodable bytes of a file name become escapes, so the result is one safe line.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def kind_of(mode: int) -> str:
    """What a non-regular file is, for messages."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def not_regular(path: Path, *, follow_symlinks: bool = True) -> str | None:
    """Why `path` is not a regular file, in one line naming it; None when it is one.

    Only a stat is taken: opening a FIFO blocks, and opening some devices has effects of its own.
    """
    try:
        info = path.stat(follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        return f"{shown(path)} does not exist"
    except OSError as exc:
        return f"{shown(path)}: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{shown(path)} is {kind_of(info.st_mode)}, not a regular file"
    return None


def regular_file(path: Path, *, follow_symlinks: bool = True) -> None:
    """Raise InputError unless `path` is a regular file (see `not_regular`)."""
    reason = not_regular(path, follow_symlinks=follow_symlinks)
    if reason is not None:
        raise InputError(reason)


def read_text_file(path: Path, max_bytes: int = 4 * 1024 * 1024) -> str:
    """The UTF-8 text of a small regular file (a config, a key list), or InputError naming it."""
    regular_file(path)
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open does not block on it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{shown(path)}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{shown(path)} is {kind_of(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise InputError(f"{shown(path)} is {info.st_size} bytes, more than {max_bytes}")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise InputError(f"{shown(path)}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputError(f"{shown(path)} is more than {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{shown(path)} is not UTF-8 text (byte {exc.start})") from None
