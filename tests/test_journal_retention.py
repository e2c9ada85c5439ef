"""Journal retention removes only what it may: old, folded, archived segments of finished videos."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_journal_fold import event, pipeline

from bus.config import VVPaths
from nodes.journal.index import open_index
from nodes.journal.retention import apply_retention
from nodes.journal.settings import JournalSettings
from nodes.journal.store import Journal, iter_records
from nodes.ops.export import export_logs
from nodes.sign.keys import KeyStore

DAY = timedelta(days=1)
START = (datetime.now(UTC) - 200 * DAY).replace(hour=12, minute=0, second=0, microsecond=0)


def record(envelope: dict[str, Any], when: datetime) -> dict[str, Any]:
    stamp = when.isoformat().replace("+00:00", "Z")
    return {"topic": "vv/edge-1/x", "received_at": stamp, "event": {**envelope, "time": stamp}}


@pytest.fixture
def paths(tmp_path: Path) -> VVPaths:
    """Five days of journal 200 days ago: a finished video a day, and one video stuck on day 3."""
    paths = VVPaths(tmp_path / "vv")
    with Journal.open(paths.journal) as writer:
        for day in range(5):
            when = START + day * DAY
            for envelope in pipeline(f"{day:032x}"):
                writer.append(record(envelope, when))
            if day == 2:
                writer.append(record(event("video.new", "f" * 32, 0, {"path": "p"}), when))
        writer.append(record(event("video.new", "e" * 32, 0, {"path": "p"}), datetime.now(UTC)))  # today
    return paths


def segment_names(paths: VVPaths) -> list[str]:
    return sorted(p.name for p in paths.journal.glob("*.seg"))


def retain(paths: VVPaths, **settings: Any) -> list[str]:
    with Journal.open(paths.journal) as writer:
        report = apply_retention(writer, paths, dataclasses.replace(JournalSettings(), **settings))
    return report.removed


def test_by_age_only_folded_segments_without_open_videos_go(paths: VVPaths) -> None:
    assert segment_names(paths) == [f"{n:08d}.seg" for n in range(1, 7)]
    removed = retain(paths, retention_days=90, export_before_delete=False)
    assert removed == ["00000001.seg", "00000002.seg", "00000004.seg", "00000005.seg"]
    assert segment_names(paths) == ["00000003.seg", "00000006.seg"]  # the stuck video's day, and today
    index = open_index(paths)
    old = index.record(f"{0:032x}")  # `vv status VIDEO` still finds a video whose segment is gone
    assert old is not None and old.state.stage == "signed" and old.missing == ["00000001.seg"]
    assert {v for v in index.open_states()} == {"f" * 32, "e" * 32}
    assert [r["event"]["subject"] for r in iter_records(paths.journal)][-1] == "e" * 32


def test_nothing_is_due_within_the_age_and_size_limits(paths: VVPaths) -> None:
    assert retain(paths, retention_days=365, export_before_delete=False) == []
    assert retain(paths, retention_days=0, max_bytes=0) == []
    assert len(segment_names(paths)) == 6


def test_a_size_cap_removes_the_oldest_removable_segments_first(paths: VVPaths) -> None:
    sizes = {p.name: p.stat().st_size for p in paths.journal.glob("*.seg")}
    cap = sum(sizes.values()) - sizes["00000001.seg"] - 1  # one segment is not quite enough
    removed = retain(paths, retention_days=0, max_bytes=cap, export_before_delete=False)
    assert removed == ["00000001.seg", "00000002.seg"]


def test_segments_not_yet_folded_by_the_index_stay(paths: VVPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    index = open_index(paths)
    monkeypatch.setattr(index, "refresh", lambda limit=None: 0)  # the index has seen nothing yet
    assert retain(paths, retention_days=90, export_before_delete=False) == []


def test_with_export_before_delete_only_archived_segments_go(paths: VVPaths) -> None:
    keys = KeyStore(paths.keys)
    keys.generate()
    assert retain(paths, retention_days=90) == []  # nothing exported yet
    first = START.date()
    result = export_logs(
        paths.logs, paths.exports, "edge-1", first, first + DAY, keys.signer(), journal_dir=paths.journal
    )
    assert result.status == "written" and result.files == 2  # days 1 and 2: one segment each
    assert retain(paths, retention_days=90) == ["00000001.seg", "00000002.seg"]
    assert retain(paths, retention_days=90) == []  # days 4 and 5 are not archived
