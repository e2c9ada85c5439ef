"""Alert documents: identity from what the alert is about, never from its wording."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from bus.envelope import utc_now
from bus.fsutil import atomic_write_json

log = logging.getLogger("vv.alerts")

Severity = Literal["INFO", "WARNING", "ERROR", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("INFO", "WARNING", "ERROR", "CRITICAL")

# Context keys that say *which* thing an alert is about; other context (figures, paths) is detail.
IDENTIFYING_KEYS = ("video", "node", "topic", "key", "path", "stream", "job", "channel", "mount")


def alert_identity(device: str, source: str, title: str, context: Mapping[str, Any]) -> str:
    """sha256 over (device, source, title, identifying context): a reworded message is the same alert."""
    ident = "|".join(f"{k}={context[k]}" for k in IDENTIFYING_KEYS if k in context)
    return hashlib.sha256(f"{device}\x1f{source}\x1f{title}\x1f{ident}".encode()).hexdigest()


def build_alert(
    *,
    severity: Severity,
    title: str,
    details: str,
    source: str,
    device: str,
    context: Mapping[str, Any] | None = None,
    actions: Sequence[str] = (),
    status: Literal["firing", "resolved"] = "firing",
    count: int = 1,
) -> dict[str, Any]:
    context = dict(context or {})
    key = alert_identity(device, source, title, context)
    return {
        "alert_id": key,
        "timestamp": utc_now(),
        "severity": severity,
        "source_component": source,
        "hostname": device,
        "title": title[:200],
        "message_details": details,
        "suggested_actions": list(actions),
        "context": context,
        "dedup_key": key,
        "count": count,
        "status": status,
    }


@dataclass
class _Window:
    opened: float
    sent: int = 0
    folded: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class StormFolder:
    """Folds an alert storm at its source: of the alerts with one severity and title, the first
    `burst` in a window go out as they come; the rest are counted, and when the window closes one
    alert (the latest, with `count`) stands for them. 2,000 garbage messages make a few alerts."""

    def __init__(self, burst: int = 10, window_s: float = 60.0) -> None:
        self.burst, self.window_s = burst, window_s
        self._windows: dict[tuple[str, str], _Window] = {}

    def admit(self, alert: Mapping[str, Any], now: float) -> bool:
        """True: send it now. False: it was counted into its window (resolutions always go out)."""
        if alert["status"] != "firing":
            return True
        key = (str(alert["severity"]), str(alert["title"]))
        window = self._windows.get(key)
        if window is None or (now - window.opened >= self.window_s and not window.folded):
            window = self._windows[key] = _Window(opened=now)
        if window.sent < self.burst:
            window.sent += 1
            return True
        window.folded += 1
        window.last = dict(alert)
        return False

    def due(self, now: float) -> list[dict[str, Any]]:
        """One alert per closed window that folded some, carrying their count; the window resets."""
        closed = []
        for key, window in list(self._windows.items()):
            if now - window.opened < self.window_s:
                continue
            del self._windows[key]
            if window.folded:
                details = f"{window.last['message_details']} ({window.folded} alerts like this folded in {self.window_s:.0f}s)"
                closed.append({**window.last, "count": window.folded, "message_details": details})
        return closed


class AlertPublisher(Protocol):
    """What publishes one alert document: `Node.raise_alert`."""

    async def __call__(
        self,
        severity: Severity,
        title: str,
        details: str,
        *,
        context: Mapping[str, Any] | None = None,
        actions: Sequence[str] = (),
        resolved: bool = False,
    ) -> dict[str, Any]: ...


class FiringAlerts:
    """The alerts a node has firing, kept in a JSON file: each condition fires once and resolves once,
    across restarts too, so an alert raised before a restart is resolved after it (and not raised again).

    A condition is named by a key the node chooses (`stuck:<video>`, `fatal:<node>`); the alert's
    identity comes from its title and context as always, so the key never reaches the alert.
    """

    def __init__(self, path: Path, publish: AlertPublisher) -> None:
        self.path = path
        self._publish = publish
        self._firing: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("firing alerts %s unreadable (%s): none assumed firing", self.path, exc)
            return {}
        if not isinstance(doc, dict):
            return {}
        return {
            key: meta
            for key, meta in doc.items()
            if isinstance(meta, dict)
            and meta.get("severity") in SEVERITIES
            and isinstance(meta.get("title"), str)
        }

    def _save(self) -> None:
        try:
            atomic_write_json(self.path, self._firing)
        except (OSError, ValueError) as exc:  # the alert itself went out; only a restart would repeat it
            log.error("firing alerts not saved to %s: %s", self.path, exc)

    def __contains__(self, key: str) -> bool:
        return key in self._firing

    def __len__(self) -> int:
        return len(self._firing)

    def firing(self, prefix: str = "") -> list[str]:
        """The keys firing now (those starting with `prefix`)."""
        return [key for key in self._firing if key.startswith(prefix)]

    async def fire(
        self,
        key: str,
        severity: Severity,
        title: str,
        details: str,
        *,
        context: Mapping[str, Any] | None = None,
        actions: Sequence[str] = (),
    ) -> bool:
        """Raise the alert unless `key` is already firing; True if it was raised now."""
        if key in self._firing:
            return False
        self._firing[key] = {"severity": severity, "title": title, "context": dict(context or {})}
        try:
            await self._publish(severity, title, details, context=context, actions=actions)
        except BaseException:
            del self._firing[key]
            raise
        self._save()
        return True

    async def resolve(self, key: str, details: str) -> bool:
        """Resolve the alert of `key` (same identity as when it fired); True if it was firing."""
        meta = self._firing.pop(key, None)
        if meta is None:
            return False
        try:
            await self._publish(
                meta["severity"], meta["title"], details, context=meta["context"], resolved=True
            )
        except BaseException:
            self._firing[key] = meta
            raise
        self._save()
        return True
