"""Fold journal events into per-video state: what `vv status`, the reconciler and the monitor read.

Pure functions over event envelopes (dicts). The fold is idempotent (an event id counts once) and
does not depend on arrival order: stages keep the earliest time they were seen, display data comes
from the latest event, and the stage is the furthest one reached (ingested < scanned < summarized <
signed), except that quarantined is terminal and wins.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from bus.envelope import parse_time
from bus.inputs import shown
from nodes.journal.store import iter_records

STAGES = ("ingested", "scanned", "summarized", "signed", "quarantined")
TERMINAL = frozenset({"signed", "quarantined"})
STAGE_OF_TYPE = {
    "video.new": "ingested",
    "scan.done": "scanned",
    "summary.done": "summarized",
    "logline.signed": "signed",
    "video.quarantined": "quarantined",
}
_RANK = {stage: rank for rank, stage in enumerate(STAGES)}  # quarantined ranks last, so it wins


class Failure(TypedDict):
    """A firing alert about the video."""

    time: datetime
    severity: str
    title: str
    message: str


class TimelineEntry(TypedDict):
    time: datetime
    type: str
    source: str
    id: str
    note: str


@dataclass
class VideoState:
    """Everything the journal says about one video. Times are aware UTC datetimes.

    `stage` is None only while the journal holds alerts about the id but no pipeline event yet.
    `stages` maps each stage reached to the first time it was seen, `stage_latest` to the latest
    (re-)announcement; `attempts` counts the distinct events per stage (re-announcements).
    """

    video_id: str
    device: str | None = None
    stage: str | None = None
    stages: dict[str, datetime] = field(default_factory=dict)
    stage_latest: dict[str, datetime] = field(default_factory=dict)
    first_event_time: datetime | None = None
    last_event_time: datetime | None = None
    attempts: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    summary_text: str | None = None
    logline_seq: int | None = None
    quarantine_reason: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    timeline: list[TimelineEntry] = field(default_factory=list)
    _shown: dict[str, datetime] = field(default_factory=dict, repr=False)  # time of the data shown, per type
    # event ids folded in: dedupe lives with the video, so a state can leave memory and come back
    _seen: set[str] = field(default_factory=set, repr=False)

    @property
    def stage_since(self) -> datetime | None:
        """When the current stage was last (re-)announced: the clock `stuck` measures against."""
        return self.stage_latest.get(self.stage) if self.stage else None


def _device_of(event: Mapping[str, Any]) -> str | None:
    device = event.get("device")
    if isinstance(device, str) and device:
        return device
    source = event.get("source")
    if isinstance(source, str) and source.startswith("vv://"):
        return source[len("vv://") :].split("/", 1)[0] or None
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _nested(data: Mapping[str, Any], key: str, inner: str) -> Any:
    """`data[key]`, or `data[inner][key]` when the value sits in a nested artifact reference."""
    if key in data:
        return data[key]
    nested = data.get(inner)
    return nested.get(key) if isinstance(nested, dict) else None


def subject_of(event: Any) -> str | None:
    """The video an event is about, when the fold would fold it (pipeline events, alerts, commands)."""
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if not isinstance(kind, str) or not (
        kind in STAGE_OF_TYPE or kind.startswith("alert.") or kind.startswith("cmd.")
    ):
        return None
    subject = event.get("subject")
    data = event.get("data")
    if (
        kind.startswith("alert.")
        and not subject
        and isinstance(data, dict)
        and isinstance(data.get("context"), dict)
    ):
        subject = data["context"].get("video")
    return subject if isinstance(subject, str) and subject else None


class Fold:
    """An incremental fold: feed events with `add`, read `states`. `fold()` wraps it for one batch.

    Events that cannot be folded (not an object, no id, type or readable time, a pipeline event
    without subject) are not dropped silently: their reasons collect in `rejected`. Each state keeps
    the ids folded into it, so states may be dropped from `states` and rebuilt from their events.
    """

    def __init__(self) -> None:
        self.states: dict[str, VideoState] = {}
        self.rejected: list[str] = []

    def add(self, event: Any) -> VideoState | None:
        """Fold one event; returns the video state it changed, or None (duplicate, unrelated, rejected)."""
        if not isinstance(event, dict):
            self.rejected.append(f"not an event object: {type(event).__name__}")
            return None
        event_id, kind = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(kind, str) or not kind:
            self.rejected.append(f"event without id or type: id={event_id!r} type={kind!r}")
            return None
        subject = subject_of(event)
        state = self.states.get(subject) if subject is not None else None
        if state is not None and event_id in state._seen:
            return None
        try:
            when = parse_time(_text(event.get("time")))
        except ValueError as exc:
            self.rejected.append(f"event {event_id}: {exc}")
            return None
        if subject is None:
            if kind in STAGE_OF_TYPE:
                self.rejected.append(f"event {event_id}: {kind} without a subject (video id)")
            return None
        raw_data = event.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        is_alert = kind.startswith("alert.")
        if state is None:
            state = self.states[subject] = VideoState(video_id=subject)
        state._seen.add(event_id)
        state.device = state.device or _device_of(event)
        state.first_event_time = min(when, state.first_event_time or when)
        state.last_event_time = max(when, state.last_event_time or when)
        note = ""
        if kind in STAGE_OF_TYPE:
            _apply_stage(state, STAGE_OF_TYPE[kind], kind, when, data)
        elif is_alert:
            note = _apply_alert(state, kind, when, data)
        entry = TimelineEntry(time=when, type=kind, source=_text(event.get("source")), id=event_id, note=note)
        bisect.insort(state.timeline, entry, key=lambda item: item["time"])
        return state


def _apply_stage(state: VideoState, stage: str, kind: str, when: datetime, data: Mapping[str, Any]) -> None:
    state.attempts[stage] = state.attempts.get(stage, 0) + 1
    state.stages[stage] = min(when, state.stages.get(stage, when))
    state.stage_latest[stage] = max(when, state.stage_latest.get(stage, when))
    state.stage = max(state.stages, key=_RANK.__getitem__)
    if when < state._shown.get(kind, when):
        return  # an older re-announcement: keep showing the newer data
    state._shown[kind] = when
    for name, value in data.items():
        if isinstance(value, dict) and isinstance(value.get("path"), str):
            state.artifacts[name] = value["path"]
    if kind == "video.new" and isinstance(data.get("path"), str):
        state.artifacts.setdefault("video", data["path"])
    elif kind == "summary.done":
        text = _nested(data, "text", "summary")
        state.summary_text = text if isinstance(text, str) else state.summary_text
    elif kind == "logline.signed":
        seq = _nested(data, "seq", "logline")
        state.logline_seq = seq if isinstance(seq, int) else state.logline_seq
    elif kind == "video.quarantined":
        reason = data.get("reason")
        state.quarantine_reason = reason if isinstance(reason, str) else state.quarantine_reason


def _apply_alert(state: VideoState, kind: str, when: datetime, data: Mapping[str, Any]) -> str:
    """Record a firing alert as a failure; a resolved one only goes into the timeline."""
    severity = _text(data.get("severity")).upper() or kind.removeprefix("alert.").upper()
    title = _text(data.get("title"))
    if data.get("status") == "resolved":
        return f"resolved: {title}"
    failure = Failure(time=when, severity=severity, title=title, message=_text(data.get("message_details")))
    bisect.insort(state.failures, failure, key=lambda item: item["time"])
    return f"{severity}: {title}"


def fold(events: Iterable[Any]) -> dict[str, VideoState]:
    """Per-video state from envelopes, keyed by video id; duplicate event ids count once."""
    folder = Fold()
    for event in events:
        folder.add(event)
    return folder.states


def fold_journal(directory: Path, *, since: str | None = None) -> Fold:
    """Fold the events stored in a journal directory; the `Fold` also carries what was rejected."""
    folder = Fold()
    for record in iter_records(directory, since=since):
        folder.add(record.get("event"))
    return folder


def stuck(
    states: Mapping[str, VideoState] | Iterable[VideoState], limits: Mapping[str, float], now: datetime
) -> list[VideoState]:
    """Videos that have sat in a non-terminal stage longer than its limit (seconds), longest first.

    The clock starts at the latest (re-)announcement of the stage, so a retry restarts it; stages
    without a limit are never stuck. An unknown or terminal stage in `limits` is a ValueError.
    """
    for stage in limits:
        if stage not in _RANK or stage in TERMINAL:
            raise ValueError(f"stuck limit for {stage!r}: not a non-terminal stage ({', '.join(STAGES[:3])})")
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    found: list[tuple[float, VideoState]] = []
    for state in states.values() if isinstance(states, Mapping) else states:
        since = state.stage_since
        if state.stage is not None and state.stage in limits and since is not None:
            waited = (now - since).total_seconds()
            if waited > limits[state.stage]:
                found.append((waited, state))
    found.sort(key=lambda item: -item[0])
    return [state for _, state in found]


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with a `Z`, the form used on the bus."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_duration(seconds: float) -> str:
    """A short human duration: 45s, 3m12s, 2h05m, 3d04h."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _ago(when: datetime | None, now: datetime) -> str:
    return format_duration((now - when).total_seconds()) if when is not None else "-"


def format_table(states: Mapping[str, VideoState] | Iterable[VideoState], now: datetime | None = None) -> str:
    """One line per video, oldest first: id, stage, age, time in stage, failures, summary."""
    now = now or datetime.now(UTC)
    rows = sorted(
        states.values() if isinstance(states, Mapping) else states,
        key=lambda state: (state.first_event_time or now, state.video_id),
    )
    if not rows:
        return "no videos in the journal"
    lines = [f"{'VIDEO':<32}  {'STAGE':<11}  {'AGE':>6}  {'IN STAGE':>8}  {'FAILS':>5}  SUMMARY"]
    for state in rows:
        summary = state.quarantine_reason if state.stage == "quarantined" else state.summary_text
        summary = " ".join((summary or "").split())
        if len(summary) > 48:
            summary = summary[:47] + "…"
        lines.append(
            f"{state.video_id:<32}  {state.stage or 'unknown':<11}  {_ago(state.first_event_time, now):>6}  "
            f"{_ago(state.stage_since, now):>8}  {len(state.failures):>5}  {summary}".rstrip()
        )
    return "\n".join(map(shown, lines))  # names, reasons, texts come from the bus


def format_video(state: VideoState, now: datetime | None = None) -> str:
    """The detailed view for `vv status VIDEO`: stages, attempts, outputs, failures, timeline."""
    now = now or datetime.now(UTC)
    since = state.stage_since
    lines = [
        f"video      {state.video_id}",
        f"device     {state.device or '-'}",
        f"stage      {state.stage or 'unknown'}"
        + (f" (since {format_time(since)}, {_ago(since, now)} ago)" if since else ""),
    ]
    for stage in STAGES:
        if stage in state.stages:
            attempts = state.attempts.get(stage, 0)
            retries = f"  ({attempts} announcements)" if attempts > 1 else ""
            lines.append(f"  {stage:<11} {format_time(state.stages[stage])}{retries}")
    if state.quarantine_reason:
        lines.append(f"quarantine {state.quarantine_reason}")
    if state.summary_text:
        lines.append(f"summary    {state.summary_text}")
    if state.logline_seq is not None:
        lines.append(f"logline    seq {state.logline_seq}")
    lines.extend(f"artifact   {name}: {path}" for name, path in sorted(state.artifacts.items()))
    lines.append(f"failures   {len(state.failures)}")
    for failure in state.failures:
        message = f" - {failure['message']}" if failure["message"] else ""
        lines.append(
            f"  {format_time(failure['time'])}  {failure['severity']:<8} {failure['title']}{message}"
        )
    lines.append("timeline")
    for entry in state.timeline:
        note = f"  {entry['note']}" if entry["note"] else ""
        lines.append(f"  {format_time(entry['time'])}  {entry['type']:<18} {entry['source']}{note}")
    return "\n".join(map(shown, lines))  # names, reasons, texts come from the bus


def to_json(state: VideoState) -> dict[str, Any]:
    """The state as JSON-ready data (times as RFC 3339 strings), for `vv status --json`."""

    def times(mapping: Mapping[str, datetime]) -> dict[str, str]:
        return {key: format_time(value) for key, value in mapping.items()}

    def optional_time(value: datetime | None) -> str | None:
        return format_time(value) if value is not None else None

    return {
        "video_id": state.video_id,
        "device": state.device,
        "stage": state.stage,
        "stage_since": optional_time(state.stage_since),
        "stages": times(state.stages),
        "stage_latest": times(state.stage_latest),
        "first_event_time": optional_time(state.first_event_time),
        "last_event_time": optional_time(state.last_event_time),
        "attempts": dict(state.attempts),
        "failures": [{**failure, "time": format_time(failure["time"])} for failure in state.failures],
        "summary_text": state.summary_text,
        "logline_seq": state.logline_seq,
        "quarantine_reason": state.quarantine_reason,
        "artifacts": dict(state.artifacts),
        "timeline": [{**entry, "time": format_time(entry["time"])} for entry in state.timeline],
    }
