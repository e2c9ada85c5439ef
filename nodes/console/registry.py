"""The fleet registry (`$VV_HOME/fleet/devices.json`, written by `vv fleet enroll`): which devices
exist, their site and tags, and the public keys their LogLines must verify with.

Shape: {"devices": {"<id>": {"site": str, "tags": [str], "cert_sha256": str, "not_after": str,
"signing_keys": {"<key_id>": "<base64 ed25519 public key>"}, "revoked": {"at": ...}?}}}. Keys are checked as they are read:
a key id that is not the one its public key derives is refused, so a typo cannot vouch for anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.sign.keys import Ed25519Verifier, KeyStoreError, Verifier

log = logging.getLogger("vv.console")


@dataclass(frozen=True)
class Enrolled:
    site: str = ""
    tags: tuple[str, ...] = ()
    keys: Mapping[str, Verifier] = field(default_factory=dict)
    revoked: str = ""  # when its certificate was revoked (`vv fleet revoke`), "" if it was not


def parse_registry(document: Any) -> tuple[dict[str, Enrolled], list[str]]:
    """The enrolled devices of a registry document, and the problems found (entries skipped)."""
    problems: list[str] = []
    devices = document.get("devices") if isinstance(document, dict) else None
    if not isinstance(devices, dict):
        return {}, ['the registry has no "devices" object']
    enrolled: dict[str, Enrolled] = {}
    for device, entry in devices.items():
        if not isinstance(entry, dict):
            problems.append(f"device {device!r}: not an object")
            continue
        keys: dict[str, Verifier] = {}
        raw_keys = entry.get("signing_keys", {})
        for key_id, public in (raw_keys if isinstance(raw_keys, dict) else {}).items():
            try:
                verifier = Ed25519Verifier(base64.b64decode(str(public), validate=True))
            except (binascii.Error, ValueError, KeyStoreError) as exc:
                problems.append(f"device {device!r} key {key_id!r}: {exc}")
                continue
            if verifier.key_id != key_id:
                problems.append(f"device {device!r}: key {key_id!r} is really {verifier.key_id}")
                continue
            keys[key_id] = verifier
        tags = entry.get("tags", [])
        revoked = entry.get("revoked")
        enrolled[str(device)] = Enrolled(
            site=str(entry.get("site", "")),
            tags=tuple(str(tag) for tag in tags) if isinstance(tags, list) else (),
            keys=keys,
            revoked=str(revoked.get("at", "?")) if isinstance(revoked, dict) else "",
        )
    return enrolled, problems


class Registry:
    """The registry file, re-read when it changes (enrolment goes on while the console runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.devices: dict[str, Enrolled] = {}

    def refresh(self) -> bool:
        """Re-read the file if it changed; True if it did. A broken file keeps the last good view."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            log.error("fleet registry %s unreadable, keeping the last one: %s", self.path, exc)
            return False
        self.devices, problems = parse_registry(document)
        for problem in problems:
            log.error("fleet registry %s: %s", self.path, problem)
        return True

    def keys(self, device: str) -> Mapping[str, Verifier] | None:
        """The device's LogLine keys, or None when it is not enrolled."""
        entry = self.devices.get(device)
        return entry.keys if entry is not None else None
