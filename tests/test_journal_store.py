"""The journal store on real files: round trips, crash recovery, corruption, fsync policies, readers."""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bus.envelope import parse_time
from nodes.journal import store
from nodes.journal.store import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalLocked,
    Position,
    RecordReader,
    _RecordScan,
    iter_records,
    journal_stats,
    read_from,
    read_index,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_record(n: int) -> dict[str, Any]:
    received = (T0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
    return {
        "topic": "vv/edge-1/video/new",
        "received_at": received,
        "event": {
            "id": f"ev-{n:05d}",
            "type": "video.new",
            "subject": f"{n:032x}",
            "time": received,
            "source": "vv://edge-1/ingest",
            "device": "edge-1",
            "data": {"n": n, "raw": bytes([n % 256]) * 3, "text": "x" * (n % 40)},
        },
    }


def write(directory: Path, count: int, **options: Any) -> list[dict[str, Any]]:
    records = [make_record(n) for n in range(count)]
    with Journal.open(directory, **options) as journal:
        numbers = [journal.append(record) for record in records]
    assert numbers == list(range(count))
    return records


def segment(directory: Path, index: int) -> Path:
    return directory / f"{index:08d}.seg"


def record_offsets(path: Path) -> list[int]:
    """Byte offsets of the records in a segment, walked independently of the store."""
    data = path.read_bytes()
    offsets, pos = [], SEGMENT_HEADER.size
    while pos < len(data):
        offsets.append(pos)
        length, _crc = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER.size + length
    return offsets


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_across_segments(tmp_path: Path) -> None:
    records = [make_record(n) for n in range(300)]
    with Journal.open(tmp_path, segment_bytes=4096) as journal:
        assert [journal.append(record) for record in records] == list(range(300))
        written_bytes = journal.stats()["bytes"]
    names = sorted(p.name for p in tmp_path.glob("*.seg"))
    assert len(names) >= 5
    assert names == [f"{i:08d}.seg" for i in range(1, len(names) + 1)]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.glob("*.seg"))
    assert list(iter_records(tmp_path)) == records
    stats = journal_stats(tmp_path)
    assert stats["bytes"] == written_bytes
    assert stats == {
        "segments": len(names),
        "records": 300,
        "bytes": sum(p.stat().st_size for p in tmp_path.glob("*.seg")),
    }
    with Journal.open(tmp_path, segment_bytes=4096) as journal:
        assert journal.recovery == []
        assert journal.append(make_record(300)) == 300
        assert journal.stats()["records"] == 301
        assert journal.stats()["segments"] == len(names)
    assert list(iter_records(tmp_path))[-1] == make_record(300)


def test_record_larger_than_a_segment_gets_one_of_its_own(tmp_path: Path) -> None:
    big = {"received_at": "2024-05-01T12:00:00Z", "blob": b"\x01" * 10_000}
    with Journal.open(tmp_path, segment_bytes=4096) as journal:
        journal.append(make_record(0))
        journal.append(big)
        journal.append(make_record(1))
    assert [len(record_offsets(segment(tmp_path, i))) for i in (1, 2, 3)] == [1, 1, 1]
    assert list(iter_records(tmp_path)) == [make_record(0), big, make_record(1)]


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 9, 20, -1])
def test_torn_last_record_is_truncated_and_reported(
    tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture
) -> None:
    records = write(tmp_path, 40, segment_bytes=4096)
    last = max(tmp_path.glob("*.seg"))
    start = record_offsets(last)[-1]
    size = last.stat().st_size
    keep = start + cut if cut > 0 else size + cut
    os.truncate(last, keep)
    with caplog.at_level(logging.WARNING, logger="vv.journal"), Journal.open(tmp_path) as journal:
        [report] = journal.recovery
        assert (report.segment, report.offset, report.bytes_truncated) == (last.name, start, keep - start)
        assert "cut short" in report.reason
        assert last.stat().st_size == start
        assert journal.append(make_record(99)) == 39
    assert f"segment {last.name} at byte {start}" in caplog.text
    assert list(iter_records(tmp_path)) == [*records[:-1], make_record(99)]


@pytest.mark.parametrize("where", ["payload", "length"])
def test_damaged_last_record_is_truncated(tmp_path: Path, where: str) -> None:
    records = write(tmp_path, 10)
    last = segment(tmp_path, 1)
    start = record_offsets(last)[-1]
    size = last.stat().st_size
    flip_byte(last, size - 3 if where == "payload" else start + 1)
    with Journal.open(tmp_path) as journal:
        [report] = journal.recovery
        assert (report.offset, report.bytes_truncated) == (start, size - start)
        assert report.reason == "crc mismatch" if where == "payload" else "cut short" in report.reason
        journal.append(make_record(10))
    assert list(iter_records(tmp_path)) == [*records[:-1], make_record(10)]


def test_corruption_in_the_middle_raises_and_keeps_the_file(tmp_path: Path) -> None:
    records = write(tmp_path, 10)
    path = segment(tmp_path, 1)
    offsets = record_offsets(path)
    flip_byte(path, offsets[3] + RECORD_HEADER.size + 2)
    damaged = path.read_bytes()
    with pytest.raises(JournalCorrupt) as raised:
        Journal.open(tmp_path)
    assert (raised.value.segment, raised.value.offset) == (path.name, offsets[3])
    assert f"{path.name} is corrupt at byte {offsets[3]}" in str(raised.value)
    assert path.read_bytes() == damaged
    with pytest.raises(JournalCorrupt) as raised:
        list(iter_records(tmp_path))
    assert raised.value.offset == offsets[3]
    assert list(iter_records(tmp_path, skip_corrupt=True)) == records[:3] + records[4:]
    assert path.read_bytes() == damaged


def test_huge_length_in_the_middle_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    write(tmp_path, 10)
    path = segment(tmp_path, 1)
    offset = record_offsets(path)[5]
    data = bytearray(path.read_bytes())
    data[offset + 3] = 0x7F  # length now claims far more than the file holds
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as raised:
        Journal.open(tmp_path)
    assert raised.value.offset == offset
    with pytest.raises(JournalCorrupt, match="intact records follow"):
        list(iter_records(tmp_path))
    assert path.read_bytes() == bytes(data)


def test_damage_in_the_newest_sealed_segment_stops_the_writer(tmp_path: Path) -> None:
    write(tmp_path, 100, segment_bytes=4096)
    newest_sealed = sorted(tmp_path.glob("*.seg"))[-2]
    start = record_offsets(newest_sealed)[-1]
    os.truncate(newest_sealed, newest_sealed.stat().st_size - 5)  # as a crash right after a roll-over
    with pytest.raises(JournalCorrupt) as raised:
        Journal.open(tmp_path, segment_bytes=4096)
    assert (raised.value.segment, raised.value.offset) == (newest_sealed.name, start)
    assert newest_sealed.stat().st_size > start


def test_damage_in_an_older_segment_is_raised_by_readers(tmp_path: Path) -> None:
    records = write(tmp_path, 100, segment_bytes=4096)
    first = segment(tmp_path, 1)
    offsets = record_offsets(first)
    os.truncate(first, first.stat().st_size - 5)
    with Journal.open(tmp_path, segment_bytes=4096) as journal:  # appending does not need old segments
        assert journal.append(make_record(100)) == 100
    with pytest.raises(JournalCorrupt) as raised:
        list(iter_records(tmp_path))
    assert (raised.value.segment, raised.value.offset) == (first.name, offsets[-1])
    assert first.stat().st_size > offsets[-1]
    lost = len(offsets) - 1
    assert list(iter_records(tmp_path, skip_corrupt=True)) == [
        *records[:lost],
        *records[lost + 1 :],
        make_record(100),
    ]


def test_segment_whose_creation_was_cut_short_is_removed(tmp_path: Path) -> None:
    records = write(tmp_path, 5)
    segment(tmp_path, 2).write_bytes(b"VVJ")
    assert list(iter_records(tmp_path)) == records  # a reader just sees an empty last segment
    with Journal.open(tmp_path) as journal:
        [report] = journal.recovery
        assert (report.segment, report.bytes_truncated) == ("00000002.seg", 3)
        assert journal.append(make_record(5)) == 5
    assert not segment(tmp_path, 2).exists()
    assert list(iter_records(tmp_path)) == [*records, make_record(5)]


def test_not_a_journal_segment(tmp_path: Path) -> None:
    segment(tmp_path, 1).write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(JournalCorrupt, match="not a journal segment"):
        Journal.open(tmp_path)


class FsyncCounter:
    """Counts real fsync calls (it still fsyncs) to see what each policy asks of the disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.fsync

        def counting(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr(os, "fsync", counting)


def test_fsync_always(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.open(tmp_path, fsync="always")
    counter = FsyncCounter(monkeypatch)
    for n in range(5):
        journal.append(make_record(n))
        assert counter.calls == n + 1
        assert journal.unsynced == 0
    journal.close()
    assert counter.calls == 5


def test_fsync_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    journal = Journal.open(tmp_path, fsync="interval", fsync_interval_s=0.25, clock=lambda: now[0])
    counter = FsyncCounter(monkeypatch)
    journal.append(make_record(0))
    now[0] += 0.125
    journal.append(make_record(1))
    assert (counter.calls, journal.unsynced) == (0, 2)
    now[0] += 0.125
    journal.append(make_record(2))  # 0.25 s since the last fsync
    assert (counter.calls, journal.unsynced) == (1, 0)
    now[0] += 0.125
    journal.append(make_record(3))
    assert counter.calls == 1
    journal.close()  # the pending record is made durable on close
    assert counter.calls == 2
    assert journal.stats()["fsyncs"] == 2


def test_fsync_never(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FsyncCounter(monkeypatch)
    journal = Journal.open(tmp_path, fsync="never", segment_bytes=4096)
    for n in range(100):  # crosses several segment boundaries too
        journal.append(make_record(n))
    journal.close()
    assert counter.calls == 0
    assert len(list(tmp_path.glob("*.seg"))) > 1
    assert len(list(iter_records(tmp_path))) == 100


def test_flush_fsyncs_whatever_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FsyncCounter(monkeypatch)
    with Journal.open(tmp_path, fsync="never") as journal:
        journal.flush()
        assert counter.calls == 0  # nothing pending
        journal.append(make_record(0))
        journal.flush()
        assert (counter.calls, journal.unsynced) == (1, 0)


def test_reader_does_not_modify_files_and_stops_at_a_torn_tail(tmp_path: Path) -> None:
    records = write(tmp_path, 20, segment_bytes=4096)
    last = max(tmp_path.glob("*.seg"))
    with last.open("ab") as handle:  # an append in progress: a header promising more than is there
        handle.write(RECORD_HEADER.pack(500, 0) + b"\x81")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert list(iter_records(tmp_path)) == records
    assert journal_stats(tmp_path)["records"] == 20
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


def test_reader_sees_appends_while_the_writer_is_open(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        for n in range(3):
            journal.append(make_record(n))
        reader = iter_records(tmp_path)
        assert [next(reader), next(reader)] == [make_record(0), make_record(1)]
        for n in range(3, 6):
            journal.append(make_record(n))
        assert list(reader) == [make_record(n) for n in range(2, 6)]


def test_concurrent_readers_see_a_prefix_and_never_corruption(tmp_path: Path) -> None:
    records = [make_record(n) for n in range(3000)]
    journal = Journal.open(tmp_path, segment_bytes=8192, fsync="never")

    def writer() -> None:
        with journal:
            for record in records:
                journal.append(record)

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    while thread.is_alive():
        got = list(iter_records(tmp_path))  # raises on any in-progress record mistaken for damage
        assert got == records[: len(got)]
        seen.append(len(got))
    thread.join()
    assert list(iter_records(tmp_path)) == records
    assert seen == sorted(seen)


def test_record_completed_after_a_reader_saw_it_cut_short_is_not_damage(tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = segment(tmp_path, 1)
    whole = path.read_bytes()
    start = record_offsets(path)[-1]
    os.truncate(path, start + 20)  # the reader arrives while the last record is half written
    with path.open("rb") as handle:
        scan = _RecordScan(handle, SEGMENT_HEADER.size)
        assert len(list(scan)) == 2
        assert scan.bad is not None and scan.bad[0] == start
        with path.open("ab") as writer:  # ... the writer finishes it and appends another
            writer.write(whole[start + 20 :] + whole[start:])
        assert scan.next_valid() is None  # still a tail: what came later is not "records after damage"


def test_since_filters_by_received_at(tmp_path: Path) -> None:
    records = write(tmp_path, 30, segment_bytes=4096)
    since = (T0 + timedelta(seconds=25)).isoformat()
    assert list(iter_records(tmp_path, since=since)) == records[25:]
    assert list(iter_records(tmp_path, since="2024-05-01T14:00:00+02:00")) == records
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        list(iter_records(tmp_path, since="yesterday"))


def test_second_writer_is_refused(tmp_path: Path) -> None:
    with Journal.open(tmp_path), pytest.raises(JournalLocked, match="already open for writing"):
        Journal.open(tmp_path)
    with Journal.open(tmp_path) as journal:
        assert journal.append(make_record(0)) == 0


def test_failed_write_leaves_no_partial_record(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.append(make_record(0))
    size = segment(tmp_path, 1).stat().st_size
    big = {"received_at": "2024-05-01T12:00:00Z", "blob": b"\x00" * 100_000}
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, previous_limit[1]))  # a disk that fills up
    try:
        with pytest.raises(OSError):
            journal.append(big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert segment(tmp_path, 1).stat().st_size == size
    assert journal.append(make_record(1)) == 1
    journal.close()
    assert list(iter_records(tmp_path)) == [make_record(0), make_record(1)]


def test_bad_records_and_options_are_refused_without_damage(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.append(make_record(0))
        with pytest.raises(ValueError, match="cannot be stored"):
            journal.append({"received_at": datetime.now(UTC)})
        with pytest.raises(ValueError, match="must be a dict"):
            journal.append(["not", "a", "dict"])  # type: ignore[arg-type]
        assert journal.append(make_record(1)) == 1
    with pytest.raises(JournalError, match="closed"):
        journal.append(make_record(2))
    assert list(iter_records(tmp_path)) == [make_record(0), make_record(1)]
    with pytest.raises(ValueError, match="fsync policy"):
        Journal.open(tmp_path, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segment_bytes"):
        Journal.open(tmp_path, segment_bytes=10)
    with pytest.raises(FileNotFoundError, match="no journal"):
        list(iter_records(tmp_path / "missing"))
    assert journal_stats(tmp_path / "missing") == {"segments": 0, "records": 0, "bytes": 0}


# ----------------------------------------------------------------------------- time index
def dated_record(n: int, day: int) -> dict[str, Any]:
    record = make_record(n)
    record["received_at"] = (T0 + timedelta(days=day, seconds=n)).isoformat().replace("+00:00", "Z")
    return record


def test_a_new_utc_day_starts_a_new_segment_with_a_sidecar_for_the_old_one(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        for day in range(3):
            for n in range(4):
                journal.append(dated_record(n, day))
    assert sorted(p.name for p in tmp_path.glob("*.seg")) == [f"{i:08d}.seg" for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.glob("*.idx")) == ["00000001.idx", "00000002.idx"]  # sealed ones
    index = read_index(segment(tmp_path, 2))
    assert index is not None and (index.first_record, index.records, index.untimed) == (4, 4, 0)
    assert index.received_min == parse_time(dated_record(0, 1)["received_at"]).timestamp()
    assert index.received_max == parse_time(dated_record(3, 1)["received_at"]).timestamp()


def test_since_never_opens_a_segment_that_is_wholly_older(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(tmp_path) as journal:
        records = [dated_record(n, day) for day in range(5) for n in range(10)]
        for record in records:
            journal.append(record)
    opened: list[str] = []
    real = store._segment_records

    def spy(path: Path, **options: Any) -> Any:
        opened.append(path.name)
        return real(path, **options)

    monkeypatch.setattr(store, "_segment_records", spy)
    since = dated_record(5, 3)["received_at"]
    assert list(iter_records(tmp_path, since=since)) == records[35:]
    assert opened == ["00000004.seg", "00000005.seg"]  # days 0-2 skipped unread
    opened.clear()
    assert len(list(iter_records(tmp_path))) == 50
    assert len(opened) == 5


def test_a_missing_or_stale_sidecar_is_ignored_by_readers_and_rebuilt_by_the_writer_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal.open(tmp_path) as journal:
        records = [dated_record(n, day) for day in range(3) for n in range(5)]
        for record in records:
            journal.append(record)
    store.index_path(segment(tmp_path, 1)).unlink()
    store.index_path(segment(tmp_path, 2)).write_text('{"version": 1, "size": 1, "first_record": 0}')
    since = dated_record(0, 2)["received_at"]
    assert list(iter_records(tmp_path, since=since)) == records[10:]  # decoded, still right
    with Journal.open(tmp_path) as journal:
        assert journal.stats()["records"] == 15  # from the segment headers: nothing rebuilt at open
        assert read_index(segment(tmp_path, 1)) is None
        assert journal.sealed_index(1).records == journal.sealed_index(2).records == 5
    assert read_index(segment(tmp_path, 1)) is not None
    assert read_index(segment(tmp_path, 2)) is not None


def test_read_from_a_position_and_records_by_position(tmp_path: Path) -> None:
    records = write(tmp_path, 60, segment_bytes=4096)
    entries = list(read_from(tmp_path))
    assert [e.record for e in entries] == records
    middle = entries[40]
    assert [e.record for e in read_from(tmp_path, middle.position)] == records[40:]
    assert list(read_from(tmp_path, entries[-1].end)) == []
    with RecordReader(tmp_path) as reader:
        assert reader.read(entries[7].position) == records[7]
        assert reader.read(middle.position) == records[40]
        with pytest.raises(JournalCorrupt):
            reader.read(Position(middle.position.segment, middle.position.offset + 1))


def test_removing_a_sealed_segment_keeps_stats_and_readers_right(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        records = [dated_record(n, day) for day in range(4) for n in range(3)]
        for record in records:
            journal.append(record)
        freed = journal.remove_segment(2)
        assert freed > 0
        assert journal.stats()["records"] == 9 and journal.stats()["segments"] == 3
        with pytest.raises(JournalError, match="current one"):
            journal.remove_segment(4)
    assert not store.index_path(segment(tmp_path, 2)).exists()
    assert list(iter_records(tmp_path)) == records[:3] + records[6:]
    assert [e.record for e in read_from(tmp_path)] == records[:3] + records[6:]  # across the gap
    assert journal_stats(tmp_path)["records"] == 9
    with Journal.open(tmp_path) as journal:
        assert journal.stats()["records"] == 9
        assert journal.append(dated_record(9, 3)) == 12
