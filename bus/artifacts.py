"""Artifacts are files named in events by path and sha256, so events stay small and checkable
(nodes.common.claims checks them on the way in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from bus.fsutil import atomic_write_bytes, atomic_write_json, sha256_bytes


class ArtifactRef(TypedDict):
    path: str
    sha256: str


def write_artifact(directory: Path, name: str, content: Any) -> ArtifactRef:
    """Write JSON (dict/list) or raw bytes atomically under `directory`; return its reference."""
    path = directory / name
    if isinstance(content, bytes | bytearray):
        data = bytes(content)
        atomic_write_bytes(path, data)
    else:
        data = atomic_write_json(path, content)
    return {"path": str(path), "sha256": sha256_bytes(data)}
