"""The video index: folded from the tail only, yet always equal to a full fold of the journal."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_journal_fold import T0, alert, event, pipeline

from nodes.journal import index as index_module
from nodes.journal.fold import fold_journal, to_json
from nodes.journal.index import VideoIndex, is_open
from nodes.journal.store import Journal


def record(envelope: Any, day: int = 0) -> dict[str, Any]:
    received = (T0 + timedelta(days=day)).isoformat().replace("+00:00", "Z")
    return {"topic": "vv/edge-1/x", "received_at": received, "event": envelope}


def random_events(rng: random.Random, videos: list[str], start: float) -> list[Any]:
    """Pipelines cut at random stages, re-announcements, duplicates, alerts, junk, in shuffled order."""
    events: list[Any] = []
    for n, video in enumerate(videos):
        steps = pipeline(video, start + n * 10)
        events += steps[: rng.randint(1, len(steps))]
    events += [alert("error", start + 5, context_video=rng.choice(videos)) for _ in range(5)]
    events += [rng.choice(events) for _ in range(10)]  # redelivered: same ids
    events += [event("health.scan", None, start), {"id": "x", "type": "video.new", "time": "never"}, "junk"]
    rng.shuffle(events)
    return events


def assert_same_as_full_fold(index: VideoIndex, journal: Path) -> None:
    index.refresh()
    full = fold_journal(journal)
    for video_id, state in full.states.items():
        found = index.record(video_id)
        assert found is not None and found.missing == []
        assert to_json(found.state) == to_json(state), video_id
    assert {v: to_json(s) for v, s in index.open_states().items()} == {
        v: to_json(s) for v, s in full.states.items() if is_open(s)
    }
    assert index.counts() == dict(Counter(s.stage or "unknown" for s in full.states.values()))
    assert index.rejected()[0] == len(full.rejected)


def test_index_equals_a_full_fold_after_random_appends_and_a_restart(tmp_path: Path) -> None:
    rng = random.Random(7)
    journal, db = tmp_path / "journal", tmp_path / "state" / "videos.sqlite"
    videos = [f"{n:032x}" for n in range(40)]
    index = VideoIndex(journal, db)
    with Journal.open(journal, segment_bytes=4096) as writer:
        for day in range(4):
            for envelope in random_events(rng, videos, day * 3600):
                writer.append(record(envelope, day))
                if rng.random() < 0.05:
                    assert_same_as_full_fold(index, journal)
            assert_same_as_full_fold(index, journal)
    index.close()
    restarted = VideoIndex(journal, db)  # a new process: the snapshot, not a re-fold
    assert restarted.refresh() == 0
    assert_same_as_full_fold(restarted, journal)
    with Journal.open(journal, segment_bytes=4096) as writer:
        for envelope in random_events(rng, videos, 9 * 3600):
            writer.append(record(envelope, 9))
    assert_same_as_full_fold(restarted, journal)


def test_only_open_videos_stay_in_memory_and_old_ones_are_still_found(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    with Journal.open(journal) as writer:
        for n in range(300):
            for envelope in pipeline(f"{n:032x}", n * 60):
                writer.append(record(envelope))
        writer.append(record(event("video.new", "f" * 32, 99_999, {"path": "p"})))
    index = VideoIndex(journal, tmp_path / "videos.sqlite")
    assert index.refresh() == 300 * 4 + 1
    assert list(index._fold.states) == ["f" * 32]  # the one video still in the pipeline
    old = index.record(f"{0:032x}")
    assert old is not None and old.state.stage == "signed" and len(old.state.timeline) == 4
    assert index.find(f"{0:031x}") == [f"{n:032x}" for n in range(2)]
    assert [r.state.video_id for r in index.recent(2)] == ["f" * 32, f"{299:032x}"]


def test_two_processes_share_one_index_without_folding_twice(tmp_path: Path) -> None:
    journal, db = tmp_path / "journal", tmp_path / "videos.sqlite"
    first, second = VideoIndex(journal, db), VideoIndex(journal, db)
    with Journal.open(journal) as writer:
        for n in range(20):
            for envelope in pipeline(f"{n:032x}", n)[: 1 + n % 4]:
                writer.append(record(envelope))
            (first if n % 2 else second).refresh()
    assert_same_as_full_fold(first, journal)
    assert_same_as_full_fold(second, journal)


def test_a_journal_that_changed_under_the_index_is_folded_again(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    with Journal.open(journal) as writer:
        for envelope in pipeline("a" * 32):
            writer.append(record(envelope))
    index = VideoIndex(journal, tmp_path / "videos.sqlite")
    index.refresh()
    shutil.rmtree(journal)  # replaced by another journal (or its tail lost in a power cut)
    with Journal.open(journal) as writer:
        writer.append(record(event("video.new", "b" * 32, 0, {"path": "p"})))
        writer.append(record(event("scan.done", "b" * 32, 1)))
    assert_same_as_full_fold(index, journal)
    assert index.record("a" * 32) is None


def test_a_final_video_whose_segment_was_removed_keeps_its_stage(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    video = "c" * 32
    with Journal.open(journal) as writer:
        for envelope in pipeline(video):
            writer.append(record(envelope, 0))
        writer.append(record(event("video.new", "d" * 32, 0, {"path": "p"}), 1))
        index = VideoIndex(journal, tmp_path / "videos.sqlite")
        index.refresh()
        assert index.pinned_segments() == {2}
        writer.remove_segment(1)
        writer.append(record(alert("error", 90_000, context_video=video), 1))  # a late alert about it
    index.refresh()
    found = index.record(video)
    assert found is not None and found.missing == ["00000001.seg"]
    assert found.state.stage == "signed" and found.state.stages["signed"] == T0 + timedelta(seconds=13)
    assert len(found.state.failures) == 1
    assert index.counts() == {"signed": 1, "ingested": 1}


def test_a_limited_refresh_stops_after_whole_batches_and_the_next_one_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    with Journal.open(journal) as writer:
        for n in range(75):
            for envelope in pipeline(f"{n:032x}", n * 60):
                writer.append(record(envelope))
    monkeypatch.setattr(index_module, "BATCH", 50)
    index = VideoIndex(journal, tmp_path / "videos.sqlite")
    assert index.refresh(limit=100) == 100
    assert index.counts() == {"signed": 25}
    assert index.refresh() == 200
    assert_same_as_full_fold(index, journal)
