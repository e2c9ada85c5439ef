"""Artifacts are files named in events by path and sha256, so events stay small and checkable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from bus.fsutil import atomic_write_bytes, atomic_write_json, sha256_bytes


class ArtifactRef(TypedDict):
    path: str
    sha256: str


class ArtifactError(Exception):
    """An artifact is missing, unreadable or does not match the hash its event promised."""


def write_artifact(directory: Path, name: str, content: Any) -> ArtifactRef:
    """Write JSON (dict/list) or raw bytes atomically under `directory`; return its reference."""
    path = directory / name
    if isinstance(content, bytes | bytearray):
        data = bytes(content)
        atomic_write_bytes(path, data)
    else:
        data = atomic_write_json(path, content)
    return {"path": str(path), "sha256": sha256_bytes(data)}


def read_artifact_bytes(ref: ArtifactRef) -> bytes:
    """Read an artifact and check it is the one the event named."""
    path = Path(ref["path"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"artifact {path} unreadable: {exc.strerror or exc}") from exc
    actual = sha256_bytes(data)
    if actual != ref["sha256"]:
        raise ArtifactError(f"artifact {path} sha256 mismatch: expected {ref['sha256']}, found {actual}")
    return data


def load_artifact(ref: ArtifactRef) -> Any:
    """Load a JSON artifact after checking its hash."""
    data = read_artifact_bytes(ref)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArtifactError(f"artifact {ref['path']} is not JSON: {exc}") from exc
