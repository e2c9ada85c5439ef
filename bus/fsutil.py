"""Crash-safe file helpers: every artifact is written to a temp file, fsynced, then renamed."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write `data` so that readers see either the old file or the whole new one, never a part;
    `durable=False` skips the fsyncs, for scratch files that are recreated when lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def canonical_json(obj: Any) -> bytes:
    """The one JSON form we hash and sign: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def atomic_write_json(path: Path, obj: Any, mode: int = 0o644) -> bytes:
    """Write `obj` as indented JSON atomically; returns the bytes written (for hashing)."""
    data = (
        json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
    )
    atomic_write_bytes(path, data, mode)
    return data


def fsync_dir(path: Path) -> None:
    """Make a rename durable: POSIX only persists a directory entry once the directory is fsynced."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_open_fds(proc: Path = Path("/proc")) -> Iterator[str]:
    """`/proc/<pid>/fd/<n>` of every open descriptor we may inspect (all as root): one pass.

    Callers stat or readlink each; without /proc there are none and callers fall back on what
    files themselves show (size, mtime).
    """
    try:
        pids = [entry for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        return
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            yield f"{fd_dir}/{fd}"


def sha256_file(path: Path) -> str:
    """Streamed sha256 of a file, so multi-GB videos never sit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
