"""Folding events into per-video state, `stuck`, and the `vv status` renderings."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nodes.journal.fold import (
    Fold,
    fold,
    fold_journal,
    format_duration,
    format_table,
    format_video,
    stuck,
    to_json,
)
from nodes.journal.store import Journal

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
VIDEO_A = "a" * 32
VIDEO_B = "b" * 32
_ids = itertools.count()


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def event(
    kind: str, subject: str | None, seconds: float, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    node = kind.split(".")[0]
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"01900000-0000-7000-8000-{next(_ids):012d}",
        "type": kind,
        "source": f"vv://edge-1/{node}",
        "time": at(seconds),
        "device": "edge-1",
        "data": data or {},
    }
    if subject is not None:
        envelope["subject"] = subject
    return envelope


def alert(
    severity: str,
    seconds: float,
    *,
    subject: str | None = None,
    context_video: str | None = None,
    status: str = "firing",
    title: str = "scan failed",
) -> dict[str, Any]:
    return event(
        f"alert.{severity}",
        subject,
        seconds,
        {
            "severity": severity.upper(),
            "title": title,
            "message_details": "decoder error at frame 12",
            "source_component": "scan",
            "context": {"video": context_video} if context_video else {},
            "status": status,
        },
    )


def pipeline(video: str, start: float = 0) -> list[dict[str, Any]]:
    return [
        event("video.new", video, start, {"path": f"/var/lib/vv/input/{video}.mp4"}),
        event("scan.done", video, start + 10, {"analytic": {"path": "/s/analytic.json", "sha256": "0" * 64}}),
        event(
            "summary.done",
            video,
            start + 12,
            {"summary": {"path": "/s/summary.json", "sha256": "1" * 64, "text": "2 persons, 1 dog"}},
        ),
        event(
            "logline.signed",
            video,
            start + 13,
            {"logline": {"path": "/s/l.json", "sha256": "2" * 64, "seq": 7}},
        ),
    ]


def test_full_pipeline_reaches_signed() -> None:
    states = fold(pipeline(VIDEO_A))
    state = states[VIDEO_A]
    assert state.stage == "signed"
    assert state.stages == {
        "ingested": T0,
        "scanned": T0 + timedelta(seconds=10),
        "summarized": T0 + timedelta(seconds=12),
        "signed": T0 + timedelta(seconds=13),
    }
    assert state.attempts == {"ingested": 1, "scanned": 1, "summarized": 1, "signed": 1}
    assert (state.summary_text, state.logline_seq, state.device) == ("2 persons, 1 dog", 7, "edge-1")
    assert state.artifacts["analytic"] == "/s/analytic.json"
    assert state.last_event_time == T0 + timedelta(seconds=13)
    assert [entry["type"] for entry in state.timeline] == [
        "video.new",
        "scan.done",
        "summary.done",
        "logline.signed",
    ]


def test_stage_follows_the_furthest_event_whatever_the_order() -> None:
    assert fold(pipeline(VIDEO_A)[:2])[VIDEO_A].stage == "scanned"
    assert fold(pipeline(VIDEO_A)[:3])[VIDEO_A].stage == "summarized"
    events = pipeline(VIDEO_A) + pipeline(VIDEO_B, start=100)
    expected = {key: to_json(state) for key, state in fold(events).items()}
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    assert {key: to_json(state) for key, state in fold(shuffled).items()} == expected


def test_duplicate_ids_count_once_but_reannouncements_count() -> None:
    events = pipeline(VIDEO_A)[:2]
    retry = event("scan.done", VIDEO_A, 60, {"analytic": {"path": "/s/analytic-2.json", "sha256": "3" * 64}})
    state = fold([*events, *events, retry, retry])[VIDEO_A]
    assert state.attempts == {"ingested": 1, "scanned": 2}
    assert state.stages["scanned"] == T0 + timedelta(seconds=10)  # first seen
    assert state.stage_since == T0 + timedelta(seconds=60)  # latest announcement
    assert state.artifacts["analytic"] == "/s/analytic-2.json"  # data of the latest event
    assert len(state.timeline) == 3


def test_quarantine_is_terminal_and_wins() -> None:
    events = [
        event("video.new", VIDEO_A, 0),
        event("video.quarantined", VIDEO_A, 5, {"reason": "not a video: moov atom missing"}),
        event("scan.done", VIDEO_A, 9),  # a late straggler does not revive it
    ]
    for order in (events, events[::-1]):
        state = fold(order)[VIDEO_A]
        assert state.stage == "quarantined"
        assert state.quarantine_reason == "not a video: moov atom missing"


def test_alerts_become_failures_of_their_video() -> None:
    events = [
        *pipeline(VIDEO_A)[:1],
        *pipeline(VIDEO_B)[:1],
        alert("error", 3, subject=VIDEO_A),
        alert("warning", 4, context_video=VIDEO_A, title="slow scan"),
        alert("error", 5, subject=VIDEO_A, status="resolved"),
        alert("critical", 6, title="disk full"),  # about no video
    ]
    states = fold(events)
    failures = states[VIDEO_A].failures
    assert [(f["severity"], f["title"]) for f in failures] == [
        ("ERROR", "scan failed"),
        ("WARNING", "slow scan"),
    ]
    assert failures[0]["message"] == "decoder error at frame 12"
    assert failures[0]["time"] == T0 + timedelta(seconds=3)
    assert states[VIDEO_A].timeline[-1]["note"] == "resolved: scan failed"
    assert states[VIDEO_B].failures == []
    assert set(states) == {VIDEO_A, VIDEO_B}


def test_alert_before_any_pipeline_event_keeps_the_video_visible() -> None:
    states = fold([alert("error", 1, subject=VIDEO_A)])
    assert states[VIDEO_A].stage is None
    assert len(states[VIDEO_A].failures) == 1
    assert "unknown" in format_table(states, now=T0)


def test_unfoldable_events_are_rejected_with_a_reason() -> None:
    folder = Fold()
    no_time = event("video.new", VIDEO_A, 0)
    no_time["time"] = "soon"
    for bad in ("junk", {"type": "video.new"}, no_time, event("scan.done", None, 1)):
        assert folder.add(bad) is None
    assert folder.add(event("health.scan", None, 2)) is None  # not about a video: ignored, not rejected
    assert folder.states == {}
    assert len(folder.rejected) == 4
    assert any("not an RFC 3339 time" in reason for reason in folder.rejected)
    assert any("without a subject" in reason for reason in folder.rejected)


def test_stuck_picks_videos_over_their_stage_limit() -> None:
    events = [
        *pipeline("1" * 32, start=0)[:1],  # ingested at 0
        *pipeline("2" * 32, start=0)[:2],  # scanned at 10
        *pipeline("3" * 32, start=0),  # signed: terminal
        event("video.new", "4" * 32, 0),
        event("video.quarantined", "4" * 32, 1),  # terminal
        *pipeline("5" * 32, start=0)[:1],
        event("video.new", "5" * 32, 290),  # re-announced: its clock restarts
        *pipeline("6" * 32, start=250)[:1],  # ingested recently
    ]
    states = fold(events)
    now = T0 + timedelta(seconds=400)
    limits = {"ingested": 120, "scanned": 300}
    assert [s.video_id for s in stuck(states, limits, now)] == ["1" * 32, "2" * 32, "6" * 32]
    assert [s.video_id for s in stuck(states, {"scanned": 300}, now)] == ["2" * 32]
    assert stuck(states.values(), {"scanned": 400}, now) == []
    with pytest.raises(ValueError, match="signed"):
        stuck(states, {"signed": 10}, now)


def test_renderings() -> None:
    events = [*pipeline(VIDEO_A), *pipeline(VIDEO_B, start=30)[:2], alert("error", 45, subject=VIDEO_B)]
    states = fold(events)
    now = T0 + timedelta(minutes=5)
    table = format_table(states, now=now).splitlines()
    assert table[0].split() == ["VIDEO", "STAGE", "AGE", "IN", "STAGE", "FAILS", "SUMMARY"]
    assert table[1].split()[:5] == [VIDEO_A, "signed", "5m00s", "4m47s", "0"]
    assert table[1].endswith("2 persons, 1 dog")
    assert table[2].split() == [VIDEO_B, "scanned", "4m30s", "4m20s", "1"]
    assert format_table({}, now=now) == "no videos in the journal"
    detail = format_video(states[VIDEO_B], now=now)
    assert "stage      scanned (since 2024-05-01T12:00:40Z, 4m20s ago)" in detail
    assert "ERROR    scan failed - decoder error at frame 12" in detail
    assert "video.new" in detail and "vv://edge-1/scan" in detail
    document = to_json(states[VIDEO_A])
    assert json.loads(json.dumps(document)) == document
    assert document["stages"]["signed"] == "2024-05-01T12:00:13Z"
    assert document["stage"] == "signed" and document["logline_seq"] == 7
    assert [format_duration(s) for s in (-3, 45, 192, 7500, 273600)] == [
        "0s",
        "45s",
        "3m12s",
        "2h05m",
        "3d04h",
    ]


def test_fold_journal_reads_a_real_journal(tmp_path: Path) -> None:
    events = pipeline(VIDEO_A)
    with Journal.open(tmp_path) as journal:
        for envelope in events + events:  # the same events journaled twice (a replay)
            journal.append({"topic": "vv/edge-1/x", "received_at": envelope["time"], "event": envelope})
        journal.append({"topic": "vv/edge-1/x", "received_at": at(20)})  # no event: reported
    folder = fold_journal(tmp_path)
    assert folder.states[VIDEO_A].stage == "signed"
    assert folder.states[VIDEO_A].attempts["scanned"] == 1
    assert folder.rejected == ["not an event object: NoneType"]
    assert fold_journal(tmp_path, since=at(11)).states[VIDEO_A].stages.keys() == {"summarized", "signed"}
