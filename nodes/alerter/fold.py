"""The alerter's decisions as plain code: fold repeats, group bursts, repeat, resolve, silence, inhibit.

Nothing here touches the network or the bus, and time comes from an injectable clock (wall-clock
seconds, so the state stays meaningful across a restart), which is what the unit tests drive.

The model, Alertmanager's applied to our alert documents (keyed by `dedup_key`):
- an *episode* is one alert firing; a repeat of it within `window_s` of the previous occurrence
  is folded into it (`count` grows, nothing is sent because of it). A repeat after a quiet gap
  longer than `window_s` starts a new episode, which is notified again. A higher severity on the
  same key counts as a change and is notified.
- alerts are grouped by (device, source component). A new group waits `group_wait_s` to collect
  a burst, then sends one notification per channel with what changed; later changes of the group
  go out at most every `group_interval_s`. A group disappears once none of its alerts is open.
- an alert still firing is notified again `repeat_interval_s` after its last notification.
- a resolve (status `resolved`, same key) is sent once, only to the channels that got the firing
  alert; an alert resolved before anyone was told is dropped quietly. A flap (resolved, then
  firing again before the resolve went out) is one continuing episode.
- each channel gets the alerts at or above its `min_severity`.
- an ack (by its dedup_key, with author and comment) mutes one firing alert until it resolves or a
  new episode of it starts; its resolve still goes out.
- a silence (matcher on dedup_key / source_component / title, until a time, with its author and
  comment) mutes matching alerts; inhibition mutes a node's own alerts (by `source_component`) while its health is
  offline. Muted alerts are still counted; they are notified once unmuted if still firing, and a
  resolve still reaches the channels that were told of the firing alert.
- an unresolved alert not seen for `expire_s` is forgotten (sources of conditions resolve them), and
  beyond `max_alerts` firing alerts the least recently seen are forgotten too: a storm of distinct
  keys cannot grow the state (and its file, rewritten on each change) without bound.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bus.alerts import SEVERITIES, Severity
from bus.envelope import rfc3339 as envelope_rfc3339
from bus.fsutil import atomic_write_bytes
from nodes.alerter.settings import AlerterSettings

Clock = Callable[[], float]
Outcome = Literal["new", "folded", "escalated", "reopened", "resolved", "ignored"]
MATCHER_KEYS = ("dedup_key", "source_component", "title")
STATE_VERSION = 1


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def rfc3339(seconds: float) -> str:
    """A time in seconds in the bus's one timestamp format."""
    return envelope_rfc3339(datetime.fromtimestamp(seconds, UTC))


@dataclass(frozen=True)
class FoldSettings:
    window_s: float = 300.0
    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 4 * 3600.0
    expire_s: float = 7 * 86400.0
    inhibit_offline: bool = True
    max_alerts: int = 10_000

    @classmethod
    def from_settings(cls, settings: AlerterSettings) -> FoldSettings:
        return cls(
            window_s=settings.window_s,
            group_wait_s=settings.group_wait_s,
            group_interval_s=settings.group_interval_s,
            repeat_interval_s=settings.repeat_interval_s,
            expire_s=settings.expire_s,
            inhibit_offline=settings.inhibit_offline,
            max_alerts=settings.max_alerts,
        )


@dataclass(frozen=True)
class Route:
    """A channel as the fold sees it: a name and the lowest severity it wants."""

    channel: str
    min_severity: Severity = "WARNING"


@dataclass
class Tracked:
    """One alert episode."""

    key: str
    group: str
    alert: dict[str, Any]  # the latest document received for the key (wording, severity, context)
    status: str  # firing | resolved
    count: int
    starts_at: float
    last_seen: float
    ends_at: float | None = None
    pending: bool = True  # a change (new episode, escalation, resolve) nobody was told of yet
    notified_at: float | None = None  # when it last went out as firing
    notified_severity: str | None = None
    sent_to: list[str] = field(default_factory=list)  # channels told of this firing alert
    origin: dict[str, Any] | None = (
        None  # the envelope (without data) that brought `alert`: a resync re-sends it
    )
    acked_by: str | None = None  # acknowledged (muted until it resolves): by whom, when, why
    acked_at: float | None = None
    ack_comment: str = ""

    @property
    def severity(self) -> str:
        return str(self.alert["severity"])

    def clear_ack(self) -> None:
        self.acked_by, self.acked_at, self.ack_comment = None, None, ""

    def envelope(self) -> dict[str, Any] | None:
        """The original event of the latest document, as it was published (same id), if known."""
        return None if self.origin is None else {**self.origin, "data": self.alert}


@dataclass
class Group:
    key: str
    created: float
    last_flush: float | None = None

    def flush_at(self, settings: FoldSettings) -> float:
        if self.last_flush is None:
            return self.created + settings.group_wait_s
        return self.last_flush + settings.group_interval_s


@dataclass
class Silence:
    id: str
    matcher: dict[str, str]
    until: float
    reason: str  # the comment given with it
    created: float
    author: str = ""

    def matches(self, alert: Mapping[str, Any]) -> bool:
        return all(alert.get(key) == value for key, value in self.matcher.items())

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matcher": self.matcher,
            "until": rfc3339(self.until),
            "author": self.author,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Delivery:
    """One notification for one channel: the alerts of a group that changed, as they stand now."""

    channel: str
    group: str
    alerts: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "group": self.group, "alerts": self.alerts}


@dataclass
class FoldStats:
    received: int = 0
    folded: int = 0
    notifications: int = 0
    resolves_sent: int = 0
    expired: int = 0


class SilenceError(ValueError):
    """A silence command that cannot be applied; the message says why."""


def _origin(envelope: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if envelope is None else {k: v for k, v in envelope.items() if k != "data"}


def group_key(alert: Mapping[str, Any]) -> str:
    return f"{alert['hostname']}/{alert['source_component']}"


class Fold:
    """Alert state of one alerter; `observe` alerts, ask `due()` what to send, `save()` to disk."""

    def __init__(
        self,
        settings: FoldSettings,
        routes: Sequence[Route],
        path: Path | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings, self.routes, self.path, self.clock = settings, list(routes), path, clock
        self.alerts: dict[str, Tracked] = {}
        self.groups: dict[str, Group] = {}
        self.silences: dict[str, Silence] = {}
        self.offline: set[str] = set()
        self.stats = FoldStats()
        self.load_error: str | None = None  # set when a saved state could not be read
        self.dirty = False  # changed since the last save
        if path is not None and path.exists():
            self._load(path)

    # ----------------------------------------------------------------- input
    def observe(self, alert: Mapping[str, Any], origin: Mapping[str, Any] | None = None) -> Outcome:
        """Fold one alert document (schema `alert`) into the state; says what it was. `origin` is the
        envelope that carried it (without data), kept so a resync can re-send the same event."""
        now = self.clock()
        self.stats.received += 1
        key = str(alert["dedup_key"])
        tracked = self.alerts.get(key)
        if alert["status"] == "resolved" and (tracked is None or tracked.status == "resolved"):
            return "ignored"  # nothing open to resolve (already resolved, or never seen)
        self.dirty = True
        if alert["status"] == "resolved":
            assert tracked is not None
            tracked.alert, tracked.origin = dict(alert), _origin(origin)
            tracked.status, tracked.ends_at, tracked.pending = "resolved", now, True
            tracked.clear_ack()
            return "resolved"
        count = max(1, int(alert.get("count", 1)))  # a producer may have folded some itself
        if tracked is None:
            group = group_key(alert)
            self.groups.setdefault(group, Group(group, now))
            self.alerts[key] = Tracked(
                key, group, dict(alert), "firing", count, now, now, origin=_origin(origin)
            )
            return "new"
        if tracked.status == "resolved":  # firing again before its resolve went out: a flap
            tracked.status, tracked.ends_at = "firing", None
            tracked.pending = tracked.notified_at is None
            outcome: Outcome = "reopened"
        elif now - tracked.last_seen > self.settings.window_s:
            tracked.count, tracked.starts_at, tracked.pending = 0, now, True
            tracked.clear_ack()
            outcome = "new"
        else:
            self.stats.folded += 1
            outcome = "folded"
        tracked.count += count
        tracked.last_seen = now
        tracked.alert, tracked.origin = dict(alert), _origin(origin)
        notified = tracked.notified_severity
        if notified is not None and severity_rank(tracked.severity) > severity_rank(notified):
            tracked.pending = True
            outcome = "escalated" if outcome == "folded" else outcome
        return outcome

    def set_node_status(self, node: str, status: str) -> bool:
        """Track which nodes are offline (for inhibition); True if that changed."""
        before = node in self.offline
        if status == "offline":
            self.offline.add(node)
        else:
            self.offline.discard(node)
        return before != (node in self.offline)

    def ack(self, key: str, author: str, comment: str = "") -> Tracked | None:
        """Mute the firing alert `key` until it resolves; None when no such alert is firing."""
        tracked = self.alerts.get(key)
        if tracked is None or tracked.status != "firing":
            return None
        tracked.acked_by, tracked.acked_at, tracked.ack_comment = author, self.clock(), comment
        self.dirty = True
        return tracked

    def silence(
        self, matcher: Mapping[str, Any], until: float, reason: str = "", author: str = ""
    ) -> Silence:
        """Mute alerts matching every given field until `until`; the same matcher replaces its silence."""
        if not matcher:
            raise SilenceError(f"a silence needs a matcher on one of {', '.join(MATCHER_KEYS)}")
        unknown = sorted(set(matcher) - set(MATCHER_KEYS))
        if unknown:
            raise SilenceError(
                f"unknown matcher field(s) {', '.join(unknown)}: use {', '.join(MATCHER_KEYS)}"
            )
        if not all(isinstance(value, str) and value for value in matcher.values()):
            raise SilenceError("matcher values must be non-empty strings")
        now = self.clock()
        if until <= now:
            raise SilenceError(f"silence would end in the past ({rfc3339(until)})")
        clean = {key: str(matcher[key]) for key in sorted(matcher)}
        ident = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:12]
        silence = Silence(ident, clean, until, reason, now, author)
        self.silences[ident] = silence
        self.dirty = True
        return silence

    def unsilence(self, silence_id: str | None = None, matcher: Mapping[str, Any] | None = None) -> int:
        """Lift a silence by id or by its exact matcher; returns how many were lifted."""
        lifted = [
            s
            for s in self.silences.values()
            if s.id == silence_id or (matcher is not None and s.matcher == dict(matcher))
        ]
        for silence in lifted:
            del self.silences[silence.id]
        self.dirty = self.dirty or bool(lifted)
        return len(lifted)

    # ----------------------------------------------------------------- decisions
    def muted(self, tracked: Tracked, now: float | None = None) -> str | None:
        """Why a tracked alert is not notified now (a silence or an inhibition), or None."""
        now = self.clock() if now is None else now
        if tracked.acked_by is not None:
            return f"acknowledged by {tracked.acked_by}"
        for silence in self.silences.values():
            if silence.until > now and silence.matches(tracked.alert):
                return f"silenced by {silence.id}"
        if self.settings.inhibit_offline and tracked.alert.get("source_component") in self.offline:
            return f"inhibited: {tracked.alert['source_component']} is offline"
        return None

    def _ready_at(self, tracked: Tracked, group: Group, now: float) -> float | None:
        """When this alert next needs a notification (None: not while things stay as they are)."""
        flush_at = group.flush_at(self.settings)
        if tracked.status == "resolved":
            return flush_at  # even when muted: channels that were told must hear the resolve
        if self.muted(tracked, now):
            return None
        if tracked.pending:
            return flush_at
        assert tracked.notified_at is not None
        return max(flush_at, tracked.notified_at + self.settings.repeat_interval_s)

    def due(self) -> list[Delivery]:
        """Everything to send now, one delivery per channel and group; the state records it as sent."""
        now = self.clock()
        self._expire(now)
        deliveries: list[Delivery] = []
        for group, members in self._by_group():
            ready = [t for t in members if (at := self._ready_at(t, group, now)) is not None and at <= now]
            if ready:
                deliveries.extend(self._flush(group, ready, now))
        live = {t.group for t in self.alerts.values()}
        for key in [k for k in self.groups if k not in live]:
            del self.groups[key]
            self.dirty = True
        return deliveries

    def next_due(self) -> float | None:
        """The earliest wall-clock time at which `due()` may have something (or a silence ends)."""
        now = self.clock()
        times = [s.until for s in self.silences.values()]
        for group, members in self._by_group():
            times.extend(at for t in members if (at := self._ready_at(t, group, now)) is not None)
        return min(times, default=None)

    def _flush(self, group: Group, ready: list[Tracked], now: float) -> list[Delivery]:
        deliveries = []
        for route in self.routes:
            wanted = [
                t
                for t in ready
                if (
                    route.channel in t.sent_to
                    if t.status == "resolved"
                    else severity_rank(t.severity) >= severity_rank(route.min_severity)
                )
            ]
            if wanted:
                deliveries.append(Delivery(route.channel, group.key, [self.view(t) for t in wanted]))
        for tracked in ready:
            if tracked.status == "resolved":
                if tracked.sent_to:
                    self.stats.resolves_sent += 1
                del self.alerts[tracked.key]
                continue
            told = {d.channel for d in deliveries if any(a["dedup_key"] == tracked.key for a in d.alerts)}
            tracked.sent_to = sorted(set(tracked.sent_to) | told)
            tracked.pending, tracked.notified_at, tracked.notified_severity = False, now, tracked.severity
        self.stats.notifications += len(deliveries)
        group.last_flush = now
        self.dirty = True
        return deliveries

    def _expire(self, now: float) -> None:
        for ident in [i for i, s in self.silences.items() if s.until <= now]:
            del self.silences[ident]
            self.dirty = True
        stale = [
            k
            for k, t in self.alerts.items()
            if t.status == "firing" and now - t.last_seen > self.settings.expire_s
        ]
        excess = len(self.alerts) - len(stale) - self.settings.max_alerts
        if excess > 0:
            firing = sorted(
                (t for k, t in self.alerts.items() if t.status == "firing" and k not in stale),
                key=lambda t: t.last_seen,
            )
            stale += [t.key for t in firing[:excess]]
        for key in stale:
            del self.alerts[key]
        self.stats.expired += len(stale)
        self.dirty = self.dirty or bool(stale)

    def _by_group(self) -> list[tuple[Group, list[Tracked]]]:
        members: dict[str, list[Tracked]] = defaultdict(list)
        for tracked in self.alerts.values():
            members[tracked.group].append(tracked)
        return [(self.groups[key], items) for key, items in members.items()]

    @staticmethod
    def view(tracked: Tracked) -> dict[str, Any]:
        """The alert as a channel renders it: its document with the folded count and episode times."""
        return {
            **tracked.alert,
            "count": tracked.count,
            "status": tracked.status,
            "starts_at": rfc3339(tracked.starts_at),
            "ends_at": rfc3339(tracked.ends_at) if tracked.ends_at is not None else None,
        }

    def firing_events(self) -> tuple[list[dict[str, Any]], int]:
        """The original events of every firing alert (what a console asks for with a resync), and how
        many firing alerts have none (folded from a state saved before envelopes were kept)."""
        events = [t.envelope() for t in self.alerts.values() if t.status == "firing"]
        return [e for e in events if e is not None], sum(1 for e in events if e is None)

    def active_for(self, channel: str) -> list[dict[str, Any]]:
        """Firing alerts this channel was told of (what a re-sending channel such as Alertmanager refreshes)."""
        return [self.view(t) for t in self.alerts.values() if t.status == "firing" and channel in t.sent_to]

    # ----------------------------------------------------------------- reporting and persistence
    def summary(self) -> dict[str, Any]:
        now = self.clock()
        firing = [t for t in self.alerts.values() if t.status == "firing"]
        return {
            "firing": len(firing),
            "muted": sum(1 for t in firing if self.muted(t, now)),
            "pending": sum(1 for t in self.alerts.values() if t.pending),
            "groups": len(self.groups),
            "silences": [s.describe() for s in self.silences.values() if s.until > now],
            "acked": [
                {
                    "dedup_key": t.key,
                    "title": t.alert.get("title"),
                    "by": t.acked_by,
                    "at": rfc3339(t.acked_at or now),
                    "comment": t.ack_comment,
                }
                for t in self.alerts.values()
                if t.acked_by is not None
            ],
            "offline_nodes": sorted(self.offline),
            **asdict(self.stats),
        }

    def to_dict(self) -> dict[str, Any]:
        # vars(), not asdict(): no deep copy of every alert document on each save
        return {
            "version": STATE_VERSION,
            "alerts": [vars(t) for t in self.alerts.values()],
            "groups": [vars(g) for g in self.groups.values()],
            "silences": [vars(s) for s in self.silences.values()],
        }

    def save(self) -> None:
        """Write the state atomically, so a restart neither pages again nor forgets what is open."""
        if self.path is not None:
            data = json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            atomic_write_bytes(self.path, data.encode())
        self.dirty = False

    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text())
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"state version {state.get('version')!r}, expected {STATE_VERSION}")
            self.alerts = {t["key"]: Tracked(**t) for t in state["alerts"]}
            self.groups = {g["key"]: Group(**g) for g in state["groups"]}
            self.silences = {s["id"]: Silence(**s) for s in state["silences"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            broken = path.with_suffix(".unreadable")
            path.replace(broken)
            self.alerts, self.groups, self.silences = {}, {}, {}
            self.load_error = f"alerter state {path} was unreadable ({exc}); kept as {broken}, started empty"
            return
        missing = {t.group for t in self.alerts.values()} - set(self.groups)
        for key in missing:  # a hand-edited file: rebuild the group rather than lose the alerts
            self.groups[key] = Group(key, self.clock())
